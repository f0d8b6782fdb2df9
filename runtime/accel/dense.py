"""Tiled int8 matrix multiply: ``C = requant(A @ B [+ bias])`` on the accelerator.

Layouts (SPEC §2, see :mod:`tessera.runtime.layout`): ``A`` (M x K) is packed as
``(M/BATCH, K/BLOCK_IN, BATCH, BLOCK_IN)``, ``B`` (K x N) transposed as
``(N/BLOCK_OUT, K/BLOCK_IN, BLOCK_OUT, BLOCK_IN)``, the result as
``(M/BATCH, N/BLOCK_OUT, BATCH, BLOCK_OUT)`` int8 and the optional int32 bias as
``(N/BLOCK_OUT, BATCH, BLOCK_OUT)``.

Tiling, in blocks: ``tm`` row blocks x ``tn`` column blocks of C per tile, reduced over K in
steps of ``tk`` blocks accumulated in the accumulator. A step loads A[tm x tk] and B[tn x tk]
and runs one GEMM of ``tm*tn*tk`` micro-op steps:

    for i in range(tm):             # iter_out: dst += tn, src += tk
      for j in range(tn):           # iter_in:  dst += 1,  wgt += tk
        for k in range(tk):         # micro-ops (acc, inp + k, wgt + k)

The bias initialises the tile with one ACC load whose rows all read the same bias row
(``x_stride`` 0); without bias the tile is reset by a GEMM with ``reset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.errors import ProgramError
from tessera.isa import MemType, Uop
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.kernels import (
    SATURATE,
    LayerStats,
    LoadReq,
    Requant,
    Step,
    StoreReq,
    Tile,
    count_kinds,
    distinct_ceils,
    element_base,
    emit_tiles,
    requant_reference,
    thread_caps,
    wrap_int32,
)
from tessera.runtime.layout import (
    ceil_div,
    pack_bias,
    pack_matrix_a,
    pack_matrix_b,
    unpack_matrix,
)
from tessera.runtime.uop_cache import MAX_ITER, MicroKernel

__all__ = ["MatmulPlan", "plan_matmul", "emit_matmul", "matmul", "matmul_reference"]

INSN_COST = 24  # rough cycles of fixed cost per instruction, for the tile chooser


@dataclass(frozen=True)
class MatmulPlan:
    """Tile sizes in blocks (``tm`` in BATCH rows, ``tn``/``tk`` in BLOCK columns)."""

    tm: int
    tn: int
    tk: int
    threads: int


def _check_dims(m: int, k: int, n: int) -> None:
    for name, v in (("M", m), ("K", k), ("N", n)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ProgramError(f"matmul {name} must be a positive integer, not {v!r}")


def plan_matmul(cfg: Config, m: int, k: int, n: int, double_buffer: bool = True) -> MatmulPlan:
    """Pick tiles that fit one virtual thread's SRAM share and minimise a cost model.

    Cost = ``INSN_COST`` cycles per instruction + DRAM bytes / bus width (A is re-read per
    column tile, B per row tile unless it stays resident), so long GEMMs and reuse win.
    """
    _check_dims(m, k, n)
    threads = 2 if double_buffer else 1
    inp_cap, wgt_cap, acc_cap = thread_caps(cfg, threads)
    mb, kb, nb = ceil_div(m, cfg.batch), ceil_div(k, cfg.block_in), ceil_div(n, cfg.block_out)
    uop_cap = max(1, cfg.uop_depth // 4)  # leave room for the kernels of both threads
    best: tuple[float, MatmulPlan] | None = None
    for tk in distinct_ceils(kb):
        if tk > uop_cap or tk > inp_cap:
            continue
        for tn in distinct_ceils(nb):
            if tn * tk > wgt_cap or tn > acc_cap or tn > MAX_ITER:
                continue
            tm_max = min(mb, inp_cap // tk, acc_cap // tn, MAX_ITER)
            if tm_max < 1:
                continue
            tm = ceil_div(mb, ceil_div(mb, tm_max))
            nm, nn, nk = ceil_div(mb, tm), ceil_div(nb, tn), ceil_div(kb, tk)
            steps = nm * nn * nk
            insns = steps * 3 + nm * nn * 8
            a_reads = min(nn, threads) if nk == 1 else nn
            b_reads = 1 if nn * nk == threads else (threads if nn * nk == 1 else nm)
            nbytes = (mb * kb * cfg.inp_elem_bytes * a_reads
                      + nb * kb * cfg.wgt_elem_bytes * b_reads + mb * nb * cfg.out_elem_bytes)
            cost = INSN_COST * insns + nbytes / cfg.mem_bus_bytes
            if best is None or cost < best[0]:
                best = (cost, MatmulPlan(tm, tn, tk, threads))
    if best is None:
        raise ProgramError(f"no matmul tiling of {m}x{k} @ {k}x{n} fits the SRAM of this config "
                           f"({cfg.summary()})")
    return best[1]


def _gemm_kernel(tm: int, tn: int, tk: int):
    def kernel(ib: int, wb: int, ab: int) -> MicroKernel:
        return MicroKernel(tuple(Uop(ab, ib + kk, wb + kk) for kk in range(tk)),
                           iter_out=tm, iter_in=tn, dst_factor_out=tn, dst_factor_in=1,
                           src_factor_out=tk, src_factor_in=0, wgt_factor_out=0,
                           wgt_factor_in=tk)
    return kernel


def emit_matmul(b: CommandBuilder, a_addr: int, b_addr: int, out_addr: int, m: int, k: int,
                n: int, *, bias_addr: int | None = None, requant: Requant = SATURATE,
                double_buffer: bool = True, plan: MatmulPlan | None = None) -> LayerStats:
    """Append ``C = requant(A @ B + bias)`` to ``b``; operands are at device byte addresses.

    Starts with a barrier (so it may read what earlier layers stored). Returns the layer's
    instruction and MAC counts.
    """
    cfg = b.cfg
    _check_dims(m, k, n)
    if plan is None:
        plan = plan_matmul(cfg, m, k, n, double_buffer)
    mb, kb, nb = ceil_div(m, cfg.batch), ceil_div(k, cfg.block_in), ceil_div(n, cfg.block_out)
    a0 = element_base(cfg, a_addr, MemType.INP, "matmul A")
    b0 = element_base(cfg, b_addr, MemType.WGT, "matmul B")
    c0 = element_base(cfg, out_addr, MemType.OUT, "matmul output")
    bias0 = None if bias_addr is None else element_base(cfg, bias_addr, MemType.ACC,
                                                        "matmul bias")
    tiles = []
    for mi in range(0, mb, plan.tm):
        tm = min(plan.tm, mb - mi)
        for ni in range(0, nb, plan.tn):
            tn = min(plan.tn, nb - ni)
            steps = []
            for ki in range(0, kb, plan.tk):
                tk = min(plan.tk, kb - ki)
                loads = (LoadReq(MemType.INP, 0, a0 + mi * kb + ki, tm, tk, kb),
                         LoadReq(MemType.WGT, 0, b0 + ni * kb + ki, tn, tk, kb))
                steps.append(Step(loads, _gemm_kernel(tm, tn, tk)))
            init = () if bias0 is None else (LoadReq(MemType.ACC, 0, bias0 + ni, tm, tn, 0),)
            stores = (StoreReq(0, c0 + mi * nb + ni, tm, tn, nb),)
            tiles.append(Tile(tm * tn, steps, stores, init))
    b.barrier()
    start = len(b.insns)
    emit_tiles(b, tiles, requant, plan.threads)
    emitted = b.insns[start:]
    return LayerStats("matmul", insns=len(emitted), macs=m * k * n,
                      hw_macs=mb * kb * nb * cfg.macs_per_gemm_step,
                      counts=count_kinds(emitted), plan=plan)


def matmul_reference(a: np.ndarray, bm: np.ndarray, bias: np.ndarray | None = None,
                     requant: Requant = SATURATE) -> np.ndarray:
    """numpy integer reference of exactly the accelerator pipeline (int32 wrap included)."""
    acc = a.astype(np.int64) @ bm.astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :]
    return requant_reference(wrap_int32(acc), requant)


def matmul(device: Device, a: np.ndarray, bm: np.ndarray, bias: np.ndarray | None = None,
           requant: Requant = SATURATE, double_buffer: bool = True,
           plan: MatmulPlan | None = None) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Run one matmul on ``device``: pack, allocate, build, run, unpack, free."""
    cfg = device.config
    pa, pb = pack_matrix_a(a, cfg), pack_matrix_b(bm, cfg)
    if pa.shape[1] != pb.shape[1] or a.shape[1] != bm.shape[0]:
        raise ProgramError(f"matmul shapes do not agree: {a.shape} @ {bm.shape}")
    m, k = a.shape
    n = bm.shape[1]
    out_shape = (pa.shape[0], pb.shape[0], cfg.batch, cfg.block_out)
    arrays = [pa, pb] + ([pack_bias(bias, cfg)] if bias is not None else [])
    if bias is not None and np.asarray(bias).shape != (n,):
        raise ProgramError(f"matmul bias must have shape ({n},), not {np.asarray(bias).shape}")
    bufs = [device.alloc(x.nbytes) for x in arrays]
    out_buf = device.alloc(int(np.prod(out_shape)))
    try:
        for buf, x in zip(bufs, arrays):
            device.write(buf.addr, x)
        builder = CommandBuilder(cfg, device)
        stats = emit_matmul(builder, bufs[0].addr, bufs[1].addr, out_buf.addr, m, k, n,
                            bias_addr=bufs[2].addr if bias is not None else None,
                            requant=requant, double_buffer=double_buffer, plan=plan)
        run = builder.synchronize()
        packed = device.read_array(out_buf.addr, out_shape, np.int8)
    finally:
        for buf in bufs + [out_buf]:
            device.free(buf)
    return unpack_matrix(packed, m, n), stats, run
