"""Quantisation: calibration, int8 parameters and epilogues, the quantised model."""

from tessera.compiler.quant.calibrate import CALIBRATION_METHODS, calibrate
from tessera.compiler.quant.quantize import (
    Quantize,
    QuantizedModel,
    make_epilogue,
    quantize,
    quantize_weight,
)

__all__ = ["CALIBRATION_METHODS", "calibrate", "Quantize", "QuantizedModel", "make_epilogue",
           "quantize", "quantize_weight"]
