"""The accelerator kernel library: every instruction stream Tessera runs is built here.

- :mod:`~tessera.runtime.accel.epilogue`: the one requantisation type (ALU programs, numpy
  reference through fsim's ALU); :mod:`~tessera.runtime.accel.requant`: its device program
  (bias folded in, shortened where exact);
- :mod:`~tessera.runtime.accel.emitter`: the one tile pipeline (tokens, virtual threads,
  resident loads, deferred epilogues); :mod:`~tessera.runtime.accel.kernels`: micro-kernels;
- :mod:`~tessera.runtime.accel.tiling`: the tile search and its cost model;
- :mod:`~tessera.runtime.accel.conv2d`, :mod:`~tessera.runtime.accel.dense`: the operators,
  used by the compiler's lowering and directly (``conv2d(device, ...)``, ``matmul(device,
  ...)``) by tests and benchmarks.
"""

from tessera.runtime.accel.conv2d import (
    ConvGeom,
    ConvShape,
    ConvTiles,
    conv2d,
    conv2d_params,
    conv2d_reference,
    emit_conv2d,
)
from tessera.runtime.accel.dense import (
    dense_params,
    dense_shape,
    emit_dense,
    matmul,
    matmul_reference,
    plan_dense,
)
from tessera.runtime.accel.epilogue import AluStep, Epilogue, apply_epilogue, rounding_shift_steps
from tessera.runtime.accel.layer import LayerAddrs, LayerParams, LayerStats
from tessera.runtime.accel.requant import DeviceEpilogue, lower_epilogue
from tessera.runtime.accel.tiling import plan_conv2d

__all__ = [
    "ConvGeom", "ConvShape", "ConvTiles", "conv2d", "conv2d_params", "conv2d_reference",
    "emit_conv2d", "plan_conv2d", "dense_params", "dense_shape", "emit_dense", "matmul",
    "matmul_reference", "plan_dense", "AluStep", "Epilogue", "apply_epilogue",
    "rounding_shift_steps", "LayerAddrs", "LayerParams", "LayerStats", "DeviceEpilogue",
    "lower_epilogue",
]
