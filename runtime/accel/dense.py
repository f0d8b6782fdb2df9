"""Int8 matrix multiply / dense layer on the accelerator: ``C = epilogue(A @ B + bias [, res])``.

A dense layer is the 1x1 convolution of ``A`` seen as ``M x K x 1 x 1`` (SPEC §2 layouts
coincide: ``A (M x K)`` packed ``(M/BATCH, K/BLOCK_IN, BATCH, BLOCK_IN)`` is that activation,
``B (K x N)`` stored transposed ``(N/BLOCK_OUT, K/BLOCK_IN, BLOCK_OUT, BLOCK_IN)`` its weights,
``C`` and the residual ``(M/BATCH, N/BLOCK_OUT, BATCH, BLOCK_OUT)`` its output), so it is
tiled, emitted and costed by :mod:`~tessera.runtime.accel.conv2d` (tiles of ``tn`` row blocks x
``to`` column blocks, stages of ``kc`` K blocks).
"""

from __future__ import annotations

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.errors import ProgramError
from tessera.runtime.accel.conv2d import ConvGeom, ConvShape, ConvTiles, _run_layer, emit_conv2d
from tessera.runtime.accel.epilogue import Epilogue, apply_epilogue
from tessera.runtime.accel.layer import LayerAddrs, LayerParams, LayerStats, layer_params
from tessera.runtime.accel.requant import DeviceEpilogue
from tessera.runtime.layout import pack_matrix_a, pack_weights, unpack_matrix

__all__ = ["dense_shape", "plan_dense", "dense_params", "emit_dense", "matmul",
           "matmul_reference"]


def dense_shape(m: int, k: int, n: int) -> ConvShape:
    """The 1x1 convolution computing an ``M x K @ K x N`` product."""
    for name, v in (("M", m), ("K", k), ("N", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ProgramError(f"matmul {name} must be a positive integer, not {v!r}")
    return ConvShape(int(m), int(k), 1, 1, int(n), 1, 1)


def plan_dense(cfg: Config, m: int, k: int, n: int, prog: DeviceEpilogue, *,
               double_buffer: bool = True) -> ConvTiles:
    """The tile shape of a dense layer (see :func:`~tessera.runtime.accel.tiling.plan_conv2d`)."""
    from tessera.runtime.accel.tiling import plan_conv2d

    return plan_conv2d(cfg, ConvGeom.of(cfg, dense_shape(m, k, n)), prog,
                       double_buffer=double_buffer)


def dense_params(cfg: Config, w: np.ndarray, bias: np.ndarray | None,
                 epi: Epilogue | None = None) -> LayerParams:
    """The device arrays and epilogue program of a dense layer with ``O x I`` int8 weights."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ProgramError(f"dense weights must be O x I, not shape {w.shape}")
    packed = pack_weights(w[:, :, None, None], cfg)
    return layer_params(cfg, packed.reshape(packed.shape[0], packed.shape[1], cfg.block_out,
                                            cfg.block_in), w, bias,
                        epi if epi is not None else Epilogue())


def emit_dense(b, m: int, k: int, n: int, addrs: LayerAddrs,
               epilogue: DeviceEpilogue | Epilogue | None = None, *,
               tiles: ConvTiles | None = None, double_buffer: bool = True,
               deferred: bool = True) -> LayerStats:
    """Append ``C = epilogue(A @ B + bias)`` to ``b``; operands are packed at device byte
    addresses ``addrs`` (``w`` is B). See :func:`~tessera.runtime.accel.conv2d.emit_conv2d`."""
    stats = emit_conv2d(b, dense_shape(m, k, n), addrs, epilogue, tiles=tiles,
                        double_buffer=double_buffer, deferred=deferred)
    stats.name = "matmul"
    return stats


def matmul_reference(a: np.ndarray, bm: np.ndarray, bias: np.ndarray | None = None,
                     epilogue: Epilogue | None = None, residual: np.ndarray | None = None
                     ) -> np.ndarray:
    """numpy integer reference of exactly the accelerator's arithmetic (int32 wrap included)."""
    acc = np.asarray(a, np.int64) @ np.asarray(bm, np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :]
    acc = ((acc + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    return apply_epilogue(acc, epilogue or Epilogue(), residual)


def matmul(device: Device, a: np.ndarray, bm: np.ndarray, bias: np.ndarray | None = None,
           epilogue: Epilogue | None = None, double_buffer: bool = True,
           tiles: ConvTiles | None = None, residual: np.ndarray | None = None
           ) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Run one matmul on ``device``: pack, allocate, build, run, unpack, free. ``residual``
    (int8, M x N) feeds an epilogue with a residual branch."""
    cfg = device.config
    a, bm = np.asarray(a), np.asarray(bm)
    if a.ndim != 2 or bm.ndim != 2 or a.shape[1] != bm.shape[0]:
        raise ProgramError(f"matmul shapes do not agree: {a.shape} @ {bm.shape}")
    m, k = a.shape
    n = bm.shape[1]
    params = dense_params(cfg, np.ascontiguousarray(bm.T), bias,
                          epilogue if epilogue is not None else Epilogue())
    arrays = {"x": pack_matrix_a(a, cfg), **params.arrays}
    if residual is not None:
        if np.shape(residual) != (m, n):
            raise ProgramError(f"matmul residual must have shape {[m, n]}, not "
                               f"{list(np.shape(residual))}")
        arrays["residual"] = pack_matrix_a(residual, cfg)
    out_shape = (arrays["x"].shape[0], arrays["w"].shape[0], cfg.batch, cfg.block_out)
    return _run_layer(device, arrays, out_shape, lambda bld, addrs: emit_dense(
        bld, m, k, n, addrs, params.program, tiles=tiles, double_buffer=double_buffer),
        lambda packed: unpack_matrix(packed, m, n))
