"""Quantisation: calibration, int8 parameters and epilogues, the quantised model and its
per-layer SQNR report."""

from tessera.compiler.quant.calibrate import CALIBRATION_METHODS, QParams, calibrate
from tessera.compiler.quant.params import make_epilogue, quantize_weight
from tessera.compiler.quant.quantize import (
    ACTIVATION_MODES,
    Quantize,
    QuantizedModel,
    quantize,
)

__all__ = ["CALIBRATION_METHODS", "ACTIVATION_MODES", "QParams", "calibrate", "Quantize",
           "QuantizedModel", "make_epilogue", "quantize", "quantize_weight"]
