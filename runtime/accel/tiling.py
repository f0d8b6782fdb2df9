"""Lowering of quantised conv2d / dense layers to accelerator instruction streams.

A layer ``y = epilogue(conv(x, w) + bias [, residual])`` over blocked int8 tensors (SPEC §2) is
cut into output tiles of ``to`` output-channel blocks x ``th`` output rows x the full output
width, and the reduction into chunks of ``kc`` input-channel blocks. Each (tile, chunk) is a
pipeline *stage*: the load module brings the chunk's padded input rows (zero border from the
LOAD padding fields) and weights into one half of the input/weight SRAM, compute runs one GEMM
over them, and after the last chunk of a tile compute runs the epilogue's ALU program (bias add,
per-channel multiplier, rounding shifts, optional residual branch, clip) and the store module
writes the tile. With double buffering, stages alternate SRAM halves (VTA's two virtual threads)
so the load of stage s+1 overlaps the GEMM of stage s, and tiles alternate accumulator halves so
the store of tile j overlaps the compute of tile j+1. Tokens:

- L2C after each stage's loads, popped by its GEMM;
- C2L after each stage's GEMM (its SRAM half is free), popped by the loads two stages later;
- C2S after each tile's epilogue, popped by its store;
- S2C after each store, popped by the first GEMM of the tile two tiles later.

The tile shape is chosen per layer by :func:`choose_tiles`, a search over feasible shapes with
a cycle model (GEMM and ALU micro-ops at one per cycle; DMA at the bus width, hidden behind
compute when double buffered).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from tessera.config import Config
from tessera.errors import CompileError
from tessera.isa import AluOp, MemType
from tessera.runtime.builder import CommandBuilder, Module
from tessera.runtime.uop_cache import MicroKernel, Uop

__all__ = ["ConvGeom", "Tiles", "LayerAddrs", "choose_tiles", "emit_conv", "EpilogueStep"]

MAX_PAD = 15
MAX_ITER = (1 << 14) - 1

# (opcode name, operand, branch): operand is an int immediate, or "vec" for the per-channel
# multiplier rows; branch is "main", "residual" or "combine" (see compiler.reference.Epilogue).
EpilogueStep = tuple[str, "int | str", str]


@dataclass(frozen=True)
class ConvGeom:
    """Shapes in blocks: ``n`` batch groups, ``cb``/``ob`` channel blocks, spatial sizes."""

    n: int
    cb: int
    h: int
    w: int
    ob: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - self.kw) // self.sw + 1

    @property
    def in_width(self) -> int:
        """Padded input columns a full-width output row reads."""
        return (self.ow - 1) * self.sw + self.kw

    def in_rows(self, th: int) -> int:
        return (th - 1) * self.sh + self.kh

    def gemm_steps(self) -> int:
        return self.n * self.ob * self.cb * self.oh * self.ow * self.kh * self.kw


@dataclass(frozen=True)
class Tiles:
    to: int  # output-channel blocks per tile
    th: int  # output rows per tile
    kc: int  # input-channel blocks per reduction chunk
    double_buffer: bool
    loop_form: str  # "window": loops over (kh, kw); "channel": loops over (c, kh)
    est_cycles: int = 0


@dataclass(frozen=True)
class LayerAddrs:
    """Device byte addresses (virtual, relocated at load time) of a layer's tensors."""

    x: int
    w: int
    bias: int
    mult: int | None  # per-channel multiplier rows (int32), None when the multiplier is scalar
    y: int
    residual: int | None = None


def _acc_rows(g: ConvGeom, to: int, th: int, residual: bool, vec: bool) -> int:
    r = to * th * g.ow
    return r * (2 if residual else 1) + to * (2 if vec else 1)


def _uops(g: ConvGeom, to: int, th: int, kc: int, form: str) -> int:
    return to * th * g.ow * (kc if form == "window" else g.kw)


def _fits(cfg: Config, g: ConvGeom, to: int, th: int, kc: int, db: bool, residual: bool,
          vec: bool, form: str) -> bool:
    parts = 2 if db else 1
    if kc * g.in_rows(th) * g.in_width > cfg.inp_depth // parts:
        return False
    if to * kc * g.kh * g.kw > cfg.wgt_depth // parts:
        return False
    if _acc_rows(g, to, th, residual, vec) > cfg.acc_depth // parts:
        return False
    # both threads' GEMM kernels plus a few small ALU kernels live in the uop cache at once
    if parts * _uops(g, to, th, kc, form) + 64 > cfg.uop_depth:
        return False
    if form == "channel" and (kc > MAX_ITER or g.kh > MAX_ITER):
        return False
    if to * th * g.ow > MAX_ITER:
        return False
    return True


def _spans(total: int, step: int) -> list[tuple[int, int]]:
    """(extent, count) of the full tiles and the ragged last tile covering ``total``."""
    full, rest = divmod(total, step)
    return [(step, full)] * (full > 0) + [(rest, 1)] * (rest > 0)


def _estimate(cfg: Config, g: ConvGeom, t: Tiles, residual: bool, n_alu: int) -> int:
    """Cycle model of the whole layer for tile shape ``t``."""
    bus = cfg.mem_bus_bytes
    inp_b, wgt_b, out_b, acc8_b = (cfg.inp_elem_bytes, cfg.wgt_elem_bytes, cfg.out_elem_bytes,
                                   cfg.acc8_elem_bytes)
    kk = g.kh * g.kw
    iw = g.in_width
    chunks = _spans(g.cb, t.kc)
    total = 0
    for to, n_o in _spans(g.ob, t.to):
        for th, n_h in _spans(g.oh, t.th):
            rows = to * th * g.ow
            compute = rows + rows * (n_alu + (2 if residual else 0)) + 40
            load = rows * acc8_b // bus if residual else 0
            for kc, n_c in chunks:
                compute += n_c * (rows * kc * kk + 8)
                load += n_c * ((kc * g.in_rows(th) * iw * inp_b + to * kc * kk * wgt_b) // bus
                               + 40 * kc)
            store = rows * out_b // bus + 20
            per = max(compute, load, store) if t.double_buffer else compute + load + store
            total += per * n_o * n_h
    return total * g.n


def choose_tiles(cfg: Config, g: ConvGeom, residual: bool, vec: bool, n_alu: int,
                 double_buffer: bool = True) -> Tiles:
    """The feasible tile shape with the lowest estimated cycle count."""
    best: Tiles | None = None
    dbs = (True, False) if double_buffer else (False,)
    kcs = sorted({g.cb} | {k for k in (1, 2, 4, 8, 16, 32) if k < g.cb})
    tos = sorted({g.ob} | {k for k in (1, 2, 4, 8, 16) if k < g.ob})
    ths = sorted({g.oh} | {k for k in (1, 2, 3, 4, 6, 7, 8, 14, 16, 28) if k < g.oh})
    for db, kc, to, th, form in itertools.product(dbs, kcs, tos, ths, ("window", "channel")):
        if not _fits(cfg, g, to, th, kc, db, residual, vec, form):
            continue
        t = Tiles(to, th, kc, db, form)
        est = _estimate(cfg, g, t, residual, n_alu)
        # fewer micro-ops breaks ties (less uop SRAM traffic)
        key = (est, _uops(g, to, th, kc, form))
        if best is None or key < (best.est_cycles, _uops(g, best.to, best.th, best.kc,
                                                          best.loop_form)):
            best = Tiles(to, th, kc, db, form, est)
    if best is None:
        raise CompileError(
            f"no tile of this layer fits the accelerator's SRAM (width {g.ow} output columns, "
            f"{g.kh}x{g.kw} kernel, input width {g.in_width}): config too small")
    return best


def _gemm_kernel(g: ConvGeom, to: int, th: int, kc: int, form: str, acc0: int, inp0: int,
                 wgt0: int, plane: int) -> MicroKernel:
    iw = g.in_width
    uops = []
    if form == "window":  # loops (kh, kw); uops over (o, c, y, x)
        for o in range(to):
            for c in range(kc):
                for y in range(th):
                    for x in range(g.ow):
                        uops.append(Uop(acc0 + (o * th + y) * g.ow + x,
                                        inp0 + c * plane + y * g.sh * iw + x * g.sw,
                                        wgt0 + (o * kc + c) * g.kh * g.kw))
        return MicroKernel(tuple(uops), g.kh, g.kw, 0, 0, iw, 1, g.kw, 1)
    # loops (c, kh); uops over (o, y, x, kw)
    for o in range(to):
        for y in range(th):
            for x in range(g.ow):
                for k in range(g.kw):
                    uops.append(Uop(acc0 + (o * th + y) * g.ow + x,
                                    inp0 + y * g.sh * iw + x * g.sw + k,
                                    wgt0 + o * kc * g.kh * g.kw + k))
    return MicroKernel(tuple(uops), kc, g.kh, 0, 0, plane, iw, g.kh * g.kw, g.kw)


def _rows_kernel(base: int, rows: int, src: int = 0, src_step: int = 0) -> MicroKernel:
    """One micro-op repeated over ``rows`` consecutive accumulator rows."""
    return MicroKernel((Uop(base, src, 0),), rows, 1, 1, 0, src_step, 0, 0, 0)


def _per_block_kernel(base: int, to: int, per: int, src: int) -> MicroKernel:
    """dst = each row of ``to`` blocks of ``per`` rows; src = the block's constant row."""
    uops = tuple(Uop(base + p, src, 0) for p in range(per))
    return MicroKernel(uops, to, 1, per, 0, 1, 0, 0, 0)


def emit_conv(b: CommandBuilder, g: ConvGeom, t: Tiles, addrs: LayerAddrs,
              steps: list[EpilogueStep]) -> dict[str, int]:
    """Append the layer to ``b`` (a stream of its own); returns instruction/step counts."""
    cfg = b.cfg
    parts = 2 if t.double_buffer else 1
    inp_half, wgt_half, acc_half = (cfg.inp_depth // parts, cfg.wgt_depth // parts,
                                    cfg.acc_depth // parts)
    residual = addrs.residual is not None
    vec = addrs.mult is not None
    eb = {m: {MemType.INP: cfg.inp_elem_bytes, MemType.WGT: cfg.wgt_elem_bytes,
              MemType.ACC: cfg.acc_elem_bytes, MemType.ACC_8BIT: cfg.acc8_elem_bytes,
              MemType.OUT: cfg.out_elem_bytes}[m] for m in MemType if m != MemType.UOP}
    for name, addr, mt in (("x", addrs.x, MemType.INP), ("w", addrs.w, MemType.WGT),
                           ("bias", addrs.bias, MemType.ACC), ("y", addrs.y, MemType.OUT)):
        if addr % eb[mt]:
            raise CompileError(f"layer tensor {name} at {addr:#x} is not aligned to its "
                               f"{eb[mt]}-byte elements")
    x0, w0, bias0 = addrs.x // eb[MemType.INP], addrs.w // eb[MemType.WGT], addrs.bias // eb[
        MemType.ACC]
    y0 = addrs.y // eb[MemType.OUT]
    m0 = addrs.mult // eb[MemType.ACC] if vec else 0
    r0 = addrs.residual // eb[MemType.ACC_8BIT] if residual else 0
    iw = g.in_width
    stage = tile = 0
    counts = {"stages": 0, "tiles": 0}
    for n in range(g.n):
        for o0 in range(0, g.ob, t.to):
            to = min(t.to, g.ob - o0)
            for oh0 in range(0, g.oh, t.th):
                th = min(t.th, g.oh - oh0)
                rows = to * th * g.ow
                ih0 = oh0 * g.sh - g.pt
                ih_rows = g.in_rows(th)
                acc0 = (tile % parts) * acc_half
                res_base = acc0 + rows
                bias_row = res_base + (rows if residual else 0)
                mult_row = bias_row + to
                for c0 in range(0, g.cb, t.kc):
                    kc = min(t.kc, g.cb - c0)
                    inp0 = (stage % parts) * inp_half
                    wgt0 = (stage % parts) * wgt_half
                    plane = ih_rows * iw
                    # ---- load module: padded input rows of kc channel blocks, then weights
                    if stage >= parts:
                        b.dep_pop(Module.COMPUTE, Module.LOAD)
                    top = max(ih0, 0)
                    bot = min(ih0 + ih_rows, g.h)
                    yp0, yp1 = top - ih0, (ih0 + ih_rows) - bot
                    xv = min(g.w, iw - g.pl)
                    xp1 = iw - g.pl - xv
                    if max(yp0, yp1, g.pl, xp1) > MAX_PAD:
                        raise CompileError(f"padding {max(yp0, yp1, g.pl, xp1)} exceeds the "
                                           f"LOAD padding field ({MAX_PAD})")
                    if bot <= top or xv <= 0:
                        raise CompileError("an output tile reads only padding (padding as "
                                           "large as the kernel is not supported)")
                    for c in range(kc):
                        src = x0 + ((n * g.cb + c0 + c) * g.h + top) * g.w
                        b.load_2d(MemType.INP, inp0 + c * plane, src, bot - top, xv, g.w,
                                  (yp0, yp1, g.pl, xp1))
                    kk = g.kh * g.kw
                    b.load_2d(MemType.WGT, wgt0, w0 + ((o0 * g.cb) + c0) * kk, to, kc * kk,
                              g.cb * kk)
                    b.dep_push(Module.LOAD, Module.COMPUTE)
                    # ---- compute: GEMM over this chunk
                    b.dep_pop(Module.LOAD, Module.COMPUTE)
                    if c0 == 0:
                        if tile >= parts:
                            b.dep_pop(Module.STORE, Module.COMPUTE)
                        b.gemm(_rows_kernel(acc0, rows), reset=True)
                    b.gemm(_gemm_kernel(g, to, th, kc, t.loop_form, acc0, inp0, wgt0, plane))
                    b.dep_push(Module.COMPUTE, Module.LOAD)
                    stage += 1
                    counts["stages"] += 1
                # ---- compute: epilogue
                b.load_2d(MemType.ACC, bias_row, bias0 + o0, 1, to, to)
                if vec:
                    b.load_2d(MemType.ACC, mult_row, m0 + o0, 1, to, to)
                if residual:
                    b.load_2d(MemType.ACC_8BIT, res_base,
                              r0 + ((n * g.ob + o0) * g.oh + oh0) * g.ow, to, th * g.ow,
                              g.oh * g.ow)
                b.alu(_per_block_kernel(acc0, to, th * g.ow, bias_row), AluOp.ADD)
                for op, operand, branch in steps:
                    alu_op = AluOp[op]
                    if branch == "combine":
                        b.alu(_rows_kernel(acc0, rows, res_base, 1), alu_op)
                    elif branch == "residual":
                        b.alu(_rows_kernel(res_base, rows), alu_op, int(operand))
                    elif operand == "vec":
                        b.alu(_per_block_kernel(acc0, to, th * g.ow, mult_row), alu_op)
                    else:
                        b.alu(_rows_kernel(acc0, rows), alu_op, int(operand))
                b.dep_push(Module.COMPUTE, Module.STORE)
                # ---- store module
                b.dep_pop(Module.COMPUTE, Module.STORE)
                b.store_2d(acc0, y0 + ((n * g.ob + o0) * g.oh + oh0) * g.ow, to, th * g.ow,
                           g.oh * g.ow)
                b.dep_push(Module.STORE, Module.COMPUTE)
                tile += 1
                counts["tiles"] += 1
    return counts
