"""Tiled int8 matrix multiply / dense layer: ``C = epilogue(A @ B + bias [, residual])``.

Layouts (SPEC §2, see :mod:`tessera.runtime.layout`): ``A`` (M x K) is packed as
``(M/BATCH, K/BLOCK_IN, BATCH, BLOCK_IN)``, ``B`` (K x N) transposed as
``(N/BLOCK_OUT, K/BLOCK_IN, BLOCK_OUT, BLOCK_IN)`` (a dense layer's ``O x I`` weights are that
already), ``C`` and the residual as ``(M/BATCH, N/BLOCK_OUT, BATCH, BLOCK_OUT)`` int8, bias and
per-channel multipliers as ``(N/BLOCK_OUT, BATCH, BLOCK_OUT)`` int32 rows.

A tile is ``tm`` row blocks x ``to`` column blocks of C, reduced over K in stages of ``kc``
blocks. A stage loads A[tm x kc] and B[to x kc] (one 2-D LOAD each) and runs one GEMM:

    for i in range(tm):             # iter_out: dst += to, src += kc
      for j in range(to):           # iter_in:  dst += 1,  wgt += kc
        for k in range(kc):         # micro-ops (acc, inp + k, wgt + k)

The pipeline, epilogue and cost model are those of every accelerator operator
(:mod:`~tessera.runtime.accel.emitter`, :mod:`~tessera.runtime.accel.tiling`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.errors import ProgramError
from tessera.isa import MemType, Uop, layout
from tessera.runtime.accel.emitter import Load, Stage, Store, Tile, emit_tiles, thread_caps
from tessera.runtime.accel.epilogue import Epilogue, apply_epilogue
from tessera.runtime.accel.layer import (
    AccRows,
    LayerAddrs,
    LayerStats,
    element_base,
    epilogue_passes,
    layer_params,
    rows_kernel,
)
from tessera.runtime.accel.tiling import StageShape, spans, tile_cycles
from tessera.runtime.builder import CommandBuilder, count_kinds
from tessera.runtime.layout import (
    ceil_div,
    pack_matrix_a,
    pack_matrix_b,
    pack_weights,
    unpack_matrix,
)
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["DenseTiles", "plan_dense", "dense_params", "emit_dense", "matmul",
           "matmul_reference"]

_TMS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOS = (1, 2, 4, 8, 16, 32)
_KCS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class DenseTiles:
    """``tm`` row blocks x ``to`` column blocks per tile, stages of ``kc`` K blocks."""

    tm: int
    to: int
    kc: int
    double_buffer: bool = True
    est_cycles: int = 0


@dataclass(frozen=True)
class _Geom:
    mb: int
    kb: int
    nb: int


def _geom(cfg: Config, m: int, k: int, n: int) -> _Geom:
    for name, v in (("M", m), ("K", k), ("N", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ProgramError(f"matmul {name} must be a positive integer, not {v!r}")
    return _Geom(ceil_div(m, cfg.batch), ceil_div(k, cfg.block_in), ceil_div(n, cfg.block_out))


def _fits(cfg: Config, g: _Geom, t: DenseTiles, residual: bool, vec: bool) -> bool:
    if t.double_buffer and cfg.dep_queue_depth < 2:
        return False
    inp, wgt, acc = thread_caps(cfg, 2 if t.double_buffer else 1)
    lim = layout(cfg).limits
    rows = t.tm * t.to
    return (t.tm * t.kc <= inp and t.to * t.kc <= wgt
            and AccRows.layout(rows, t.to, residual, True, vec).total <= acc
            and rows <= lim.max_iter and t.tm <= lim.max_iter and t.to <= lim.max_iter
            and (2 if t.double_buffer else 1) * t.kc + 64 <= cfg.uop_depth)


def _estimate(cfg: Config, g: _Geom, t: DenseTiles, residual: bool, n_alu: int) -> int:
    total = 0
    kcs = spans(g.kb, t.kc)
    for tm, n_m in spans(g.mb, t.tm):
        for to, n_o in spans(g.nb, t.to):
            rows = tm * to
            stages = [StageShape(n_k, rows * kc, tm * kc, to * kc, 1) for kc, n_k in kcs]
            total += n_m * n_o * tile_cycles(cfg, rows, stages, n_alu, residual,
                                             t.double_buffer)
    return total


def plan_dense(cfg: Config, m: int, k: int, n: int, *, residual: bool = False,
               vec: bool = False, n_alu: int = 2, double_buffer: bool = True) -> DenseTiles:
    """The feasible tile shape with the lowest estimated cycle count (fewer GEMM instructions
    break ties)."""
    g = _geom(cfg, m, k, n)
    dbs = (True, False) if double_buffer else (False,)
    tms = sorted({g.mb} | {v for v in _TMS if v < g.mb})
    tos = sorted({g.nb} | {v for v in _TOS if v < g.nb})
    kcs = sorted({g.kb} | {v for v in _KCS if v < g.kb})
    best, best_key = None, None
    for db, kc, to, tm in itertools.product(dbs, kcs, tos, tms):
        t = DenseTiles(tm, to, kc, db)
        if not _fits(cfg, g, t, residual, vec):
            continue
        gemms = ceil_div(g.mb, tm) * ceil_div(g.nb, to) * ceil_div(g.kb, kc)
        key = (_estimate(cfg, g, t, residual, n_alu), gemms)
        if best_key is None or key < best_key:
            best, best_key = replace(t, est_cycles=key[0]), key
    if best is None:
        raise ProgramError(f"no matmul tiling of {m}x{k} @ {k}x{n} fits the SRAM of "
                           f"{cfg.summary()}")
    return best


def _gemm_kernel(tm: int, to: int, kc: int, ib: int, wb: int, ab: int) -> MicroKernel:
    return MicroKernel(tuple(Uop(ab, ib + q, wb + q) for q in range(kc)), iter_out=tm,
                       iter_in=to, dst_factor_out=to, dst_factor_in=1, src_factor_out=kc,
                       src_factor_in=0, wgt_factor_out=0, wgt_factor_in=kc)


def _channel(tm: int, to: int, ab: int, src: int) -> MicroKernel:
    """Every result row (m, o) combined with row ``src + o`` of its column block."""
    return MicroKernel((Uop(ab, src, 0),), iter_out=tm, iter_in=to, dst_factor_out=to,
                       dst_factor_in=1, src_factor_out=0, src_factor_in=1)


def _tiles(g: _Geom, t: DenseTiles, bases: dict[str, int], epi: Epilogue, residual: bool,
           bias: bool) -> list[Tile]:
    tiles = []
    for mi in range(0, g.mb, t.tm):
        tm = min(t.tm, g.mb - mi)
        for ni in range(0, g.nb, t.to):
            to = min(t.to, g.nb - ni)
            rows = tm * to
            acc = AccRows.layout(rows, to, residual, bias, epi.per_channel)
            stages = []
            for ki in range(0, g.kb, t.kc):
                kc = min(t.kc, g.kb - ki)
                loads = (Load(MemType.INP, 0, bases["x"] + mi * g.kb + ki, tm, kc, g.kb),
                         Load(MemType.WGT, 0, bases["w"] + ni * g.kb + ki, to, kc, g.kb))
                stages.append(Stage(loads, partial(_gemm_kernel, tm, to, kc)))
            out = mi * g.nb + ni
            eloads = []
            if bias:
                eloads.append(Load(MemType.ACC, acc.bias, bases["bias"] + ni, 1, to, to))
            if acc.mult is not None:
                eloads.append(Load(MemType.ACC, acc.mult, bases["mult"] + ni, 1, to, to))
            if residual:
                eloads.append(Load(MemType.ACC_8BIT, acc.residual, bases["res"] + out, tm, to,
                                   g.nb))
            tiles.append(Tile(acc.total, partial(lambda r, ab: rows_kernel(ab, r), rows),
                              tuple(stages), tuple(eloads),
                              epilogue_passes(epi, acc, partial(_channel, tm, to)),
                              (Store(0, bases["y"] + out, tm, to, g.nb),)))
    return tiles


def dense_params(cfg: Config, w: np.ndarray, bias: np.ndarray | None, epi: Epilogue
                 ) -> dict[str, np.ndarray]:
    """The device arrays a dense layer with ``O x I`` int8 weights reads (see
    :func:`~tessera.runtime.accel.conv2d.conv2d_params`)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ProgramError(f"dense weights must be O x I, not shape {w.shape}")
    packed = pack_weights(w[:, :, None, None], cfg)
    return layer_params(cfg, packed.reshape(packed.shape[0], packed.shape[1], cfg.block_out,
                                            cfg.block_in), bias, epi, w.shape[0])


def emit_dense(b: CommandBuilder, m: int, k: int, n: int, addrs: LayerAddrs,
               epilogue: Epilogue | None = None, *, tiles: DenseTiles | None = None,
               double_buffer: bool = True) -> LayerStats:
    """Append ``C = epilogue(A @ B + bias)`` to ``b``; operands are packed at device byte
    addresses ``addrs`` (``w`` is B). Starts with a barrier; see
    :func:`~tessera.runtime.accel.conv2d.emit_conv2d` for the optional addresses."""
    cfg = b.cfg
    epi = epilogue if epilogue is not None else Epilogue()
    g = _geom(cfg, m, k, n)
    residual = addrs.residual is not None
    if residual != epi.residual:
        raise ProgramError("matmul: a residual input must be given exactly when the epilogue "
                           "has a residual branch")
    if (addrs.mult is not None) != epi.per_channel:
        raise ProgramError("matmul: multiplier rows must be given exactly when the epilogue's "
                           "multiplier is per channel")
    if tiles is None:
        tiles = plan_dense(cfg, m, k, n, residual=residual, vec=epi.per_channel,
                           n_alu=len(epi.alu_steps()), double_buffer=double_buffer)
    for name, v, top in (("tm", tiles.tm, g.mb), ("to", tiles.to, g.nb), ("kc", tiles.kc, g.kb)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise ProgramError(f"matmul tile {name} must be an integer in [1, {top}], not {v!r}")
    if not _fits(cfg, g, tiles, residual, epi.per_channel):
        raise ProgramError(f"matmul tiles {tiles} do not fit the SRAM of {cfg.summary()}")
    bases = {"x": element_base(cfg, addrs.x, MemType.INP, "matmul A"),
             "w": element_base(cfg, addrs.w, MemType.WGT, "matmul B"),
             "y": element_base(cfg, addrs.y, MemType.OUT, "matmul output"),
             "bias": element_base(cfg, addrs.bias, MemType.ACC, "matmul bias"),
             "mult": element_base(cfg, addrs.mult, MemType.ACC, "matmul multiplier"),
             "res": element_base(cfg, addrs.residual, MemType.ACC_8BIT, "matmul residual")}
    b.barrier()
    start = len(b.insns)
    pipe = emit_tiles(b, _tiles(g, tiles, bases, epi, residual, addrs.bias is not None),
                      tiles.double_buffer)
    emitted = b.insns[start:]
    return LayerStats("matmul", insns=len(emitted), macs=m * k * n,
                      hw_macs=g.mb * g.kb * g.nb * cfg.macs_per_gemm_step,
                      counts=count_kinds(emitted), tiles=tiles, pipeline=pipe)


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
           tiles: DenseTiles | None = None, residual: np.ndarray | None = None
           ) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Run one matmul on ``device``: pack, allocate, build, run, unpack, free. ``residual``
    (int8, M x N) feeds an epilogue with a residual branch."""
    cfg = device.config
    epi = epilogue if epilogue is not None else Epilogue()
    pa, pb = pack_matrix_a(a, cfg), pack_matrix_b(bm, cfg)
    out_shape = (pa.shape[0], pb.shape[0], cfg.batch, cfg.block_out)
    if a.shape[1] != bm.shape[0]:
        raise ProgramError(f"matmul shapes do not agree: {a.shape} @ {bm.shape}")
    m, k = a.shape
    n = bm.shape[1]
    params = dense_params(cfg, np.ascontiguousarray(bm.T), bias, epi)
    arrays = {"x": pa, "w": pb}
    if bias is not None:
        arrays["bias"] = params["bias"]
    if "mult" in params:
        arrays["mult"] = params["mult"]
    if residual is not None:
        if np.shape(residual) != (m, n):
            raise ProgramError(f"matmul residual must have shape {[m, n]}, not "
                               f"{list(np.shape(residual))}")
        arrays["residual"] = pack_matrix_a(residual, cfg)
    bufs = {key: device.alloc(x.nbytes) for key, x in arrays.items()}
    out_buf = device.alloc(int(np.prod(out_shape)))
    try:
        for key, x in arrays.items():
            device.write(bufs[key].addr, x)
        builder = CommandBuilder(cfg, device)
        addrs = LayerAddrs(bufs["x"].addr, bufs["w"].addr, out_buf.addr,
                           *(bufs[key].addr if key in bufs else None
                             for key in ("bias", "mult", "residual")))
        stats = emit_dense(builder, m, k, n, addrs, epi, tiles=tiles,
                           double_buffer=double_buffer)
        run = builder.synchronize()
        packed = device.read_array(out_buf.addr, out_shape, np.int8)
    finally:
        for buf in list(bufs.values()) + [out_buf]:
            device.free(buf)
    return unpack_matrix(packed, m, n), stats, run
