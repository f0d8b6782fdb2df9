"""Tiled int8 2-D convolution: ``y = requant(conv2d(x, w, stride, padding) [+ bias])``.

Layouts (SPEC §2): input ``N C H W`` packed ``(N/BATCH, C/BLOCK_IN, H, W, BATCH, BLOCK_IN)``,
weights ``O I KH KW`` packed ``(O/BLOCK_OUT, I/BLOCK_IN, KH, KW, BLOCK_OUT, BLOCK_IN)``, output
``(N/BATCH, O/BLOCK_OUT, OH, OW, BATCH, BLOCK_OUT)`` int8, bias ``(O/BLOCK_OUT, BATCH,
BLOCK_OUT)`` int32. Any kernel size, stride and zero padding up to 15 (the LOAD pad fields).

A tile is one batch block, ``to`` output-channel blocks, ``th`` output rows and ``tw`` output
columns, reduced over chunks of ``tc`` input-channel blocks and ``tkh`` kernel rows. A step
loads, per input-channel block, the ``ih x iw`` input window the tile needs (``ih = (th-1)*sh +
tkh``, ``iw = (tw-1)*sw + KW``) with the zero border produced by the LOAD padding fields, loads
the weight chunk, and runs one GEMM:

    for y in range(th):        # iter_out: dst += tw, src += sh*iw
      for x in range(tw):      # iter_in:  dst += 1,  src += sw
        for (o, c, kh, kw):    # micro-ops: acc o*th*tw, inp c*ih*iw + kh*iw + kw, wgt (o,c,kh,kw)
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
    pack_activation,
    pack_bias,
    pack_weights,
    unpack_activation,
)
from tessera.runtime.uop_cache import MAX_ITER, MicroKernel

__all__ = ["ConvShape", "ConvPlan", "plan_conv2d", "emit_conv2d", "conv2d", "conv2d_reference"]

INSN_COST = 24
MAX_PAD = 15
MAX_STRIDE_FIELD = (1 << 16) - 1


@dataclass(frozen=True)
class ConvShape:
    """A convolution's geometry (unpadded channel counts)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0

    def __post_init__(self) -> None:
        for name in ("n", "c", "h", "w", "o", "kh", "kw", "sh", "sw"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ProgramError(f"conv2d {name} must be a positive integer, not {v!r}")
        for name in ("ph", "pw"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or not 0 <= v <= MAX_PAD:
                raise ProgramError(f"conv2d padding {name} must be in [0, {MAX_PAD}] (the LOAD "
                                   f"pad fields are 4 bits), not {v!r}")
        if self.oh < 1 or self.ow < 1:
            raise ProgramError(f"conv2d kernel {self.kh}x{self.kw} does not fit the padded "
                               f"input {self.h + 2 * self.ph}x{self.w + 2 * self.pw}")

    @classmethod
    def make(cls, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
             stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0
             ) -> ConvShape:
        if len(x_shape) != 4 or len(w_shape) != 4:
            raise ProgramError(f"conv2d needs NCHW input and OIHW weights, not {x_shape} and "
                               f"{w_shape}")
        if x_shape[1] != w_shape[1]:
            raise ProgramError(f"conv2d input has {x_shape[1]} channels but the weights expect "
                               f"{w_shape[1]}")
        sh, sw = (stride, stride) if isinstance(stride, (int, np.integer)) else stride
        ph, pw = (padding, padding) if isinstance(padding, (int, np.integer)) else padding
        return cls(*(int(v) for v in x_shape), int(w_shape[0]), int(w_shape[2]),
                   int(w_shape[3]), sh, sw, ph, pw)

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def macs(self) -> int:
        return self.n * self.o * self.oh * self.ow * self.c * self.kh * self.kw


@dataclass(frozen=True)
class ConvPlan:
    """Tile sizes: ``to``/``tc`` channel blocks, ``tkh`` kernel rows, ``th x tw`` outputs."""

    to: int
    tc: int
    tkh: int
    th: int
    tw: int
    threads: int


def plan_conv2d(cfg: Config, s: ConvShape, double_buffer: bool = True) -> ConvPlan:
    """Pick tiles fitting one virtual thread's SRAM share that minimise a cost model
    (``INSN_COST`` cycles per instruction + DRAM bytes / bus width)."""
    threads = 2 if double_buffer else 1
    inp_cap, wgt_cap, acc_cap = thread_caps(cfg, threads)
    uop_cap = max(1, cfg.uop_depth // 4)
    nb, cb, ob = ceil_div(s.n, cfg.batch), ceil_div(s.c, cfg.block_in), ceil_div(s.o,
                                                                                 cfg.block_out)
    oh, ow = s.oh, s.ow
    best: tuple[float, ConvPlan] | None = None
    for tkh in distinct_ceils(s.kh):
        for tc in distinct_ceils(cb):
            for to in distinct_ceils(ob):
                chunk = to * tc * tkh * s.kw
                if chunk > wgt_cap or chunk > uop_cap:
                    continue
                for tw in distinct_ceils(ow):
                    iw = (tw - 1) * s.sw + s.kw
                    if tw > MAX_ITER or tc * tkh * iw > inp_cap or to * tw > acc_cap:
                        continue
                    th_max = min(oh, MAX_ITER, acc_cap // (to * tw),
                                 (inp_cap // (tc * iw) - tkh) // s.sh + 1)
                    if th_max < 1:
                        continue
                    th = ceil_div(oh, ceil_div(oh, th_max))
                    if th > 1 and s.sh * iw >= cfg.inp_depth:
                        continue  # src_factor_out field
                    ih = (th - 1) * s.sh + tkh
                    n_o, n_c, n_kh = ceil_div(ob, to), ceil_div(cb, tc), ceil_div(s.kh, tkh)
                    tiles = nb * n_o * ceil_div(oh, th) * ceil_div(ow, tw)
                    steps = tiles * n_c * n_kh
                    insns = (steps * (tc + (1 if tkh == s.kh else to) + 1)
                             + tiles * (to + 5 + (1 if tw == ow else to)))
                    wgt_step = to * tc * tkh * s.kw * cfg.wgt_elem_bytes
                    wgt_loads = n_o * threads if n_c * n_kh in (1, threads) else steps
                    nbytes = (steps * tc * ih * iw * cfg.inp_elem_bytes + wgt_loads * wgt_step
                              + nb * ob * oh * ow * cfg.out_elem_bytes)
                    cost = INSN_COST * insns + nbytes / cfg.mem_bus_bytes
                    if best is None or cost < best[0]:
                        best = (cost, ConvPlan(to, tc, tkh, th, tw, threads))
    if best is None:
        raise ProgramError(f"no conv2d tiling of {s} fits the SRAM of this config "
                           f"({cfg.summary()})")
    return best[1]


def _conv_kernel(to: int, tc: int, tkh: int, kw: int, th: int, tw: int, ih: int, iw: int,
                 sh: int, sw: int):
    def kernel(ib: int, wb: int, ab: int) -> MicroKernel:
        p = th * tw
        uops = tuple(Uop(ab + o * p, ib + c * ih * iw + r * iw + q,
                         wb + ((o * tc + c) * tkh + r) * kw + q)
                     for o in range(to) for c in range(tc) for r in range(tkh)
                     for q in range(kw))
        return MicroKernel(uops, iter_out=th, iter_in=tw, dst_factor_out=tw, dst_factor_in=1,
                           src_factor_out=sh * iw if th > 1 else 0,
                           src_factor_in=sw if tw > 1 else 0)
    return kernel


def emit_conv2d(b: CommandBuilder, x_addr: int, w_addr: int, out_addr: int, shape: ConvShape,
                *, bias_addr: int | None = None, requant: Requant = SATURATE,
                double_buffer: bool = True, plan: ConvPlan | None = None) -> LayerStats:
    """Append a convolution to ``b``; tensors are packed at device byte addresses.

    Starts with a barrier (so it may read what earlier layers stored). Returns the layer's
    instruction and MAC counts.
    """
    cfg, s = b.cfg, shape
    if plan is None:
        plan = plan_conv2d(cfg, s, double_buffer)
    nb, cb, ob = ceil_div(s.n, cfg.batch), ceil_div(s.c, cfg.block_in), ceil_div(s.o,
                                                                                 cfg.block_out)
    oh, ow, kk = s.oh, s.ow, s.kh * s.kw
    x0 = element_base(cfg, x_addr, MemType.INP, "conv2d input")
    w0 = element_base(cfg, w_addr, MemType.WGT, "conv2d weights")
    y0_ = element_base(cfg, out_addr, MemType.OUT, "conv2d output")
    bias0 = None if bias_addr is None else element_base(cfg, bias_addr, MemType.ACC,
                                                        "conv2d bias")
    tiles = []
    for n in range(nb):
        for o0 in range(0, ob, plan.to):
            to = min(plan.to, ob - o0)
            for y0 in range(0, oh, plan.th):
                th = min(plan.th, oh - y0)
                for xo in range(0, ow, plan.tw):
                    tw = min(plan.tw, ow - xo)
                    p = th * tw
                    steps = []
                    for c0 in range(0, cb, plan.tc):
                        tc = min(plan.tc, cb - c0)
                        for kh0 in range(0, s.kh, plan.tkh):
                            tkh = min(plan.tkh, s.kh - kh0)
                            step = _step(s, cfg, x0, w0, n, cb, o0, to, c0, tc, kh0, tkh, y0,
                                         th, xo, tw)
                            if step is not None:
                                steps.append(step)
                    init = () if bias0 is None else tuple(
                        LoadReq(MemType.ACC, o * p, bias0 + o0 + o, p, 1, 0) for o in range(to))
                    if tw == ow and (to == 1 or oh * ow <= MAX_STRIDE_FIELD):
                        stores = (StoreReq(0, y0_ + ((n * ob + o0) * oh + y0) * ow, to, p,
                                           oh * ow),)
                    else:
                        stores = tuple(StoreReq(o * p, y0_ + ((n * ob + o0 + o) * oh + y0) * ow
                                                + xo, th, tw, ow) for o in range(to))
                    tiles.append(Tile(to * p, steps, stores, init))
    b.barrier()
    start = len(b.insns)
    emit_tiles(b, tiles, requant, plan.threads)
    emitted = b.insns[start:]
    hw_macs = nb * ob * cb * oh * ow * kk * cfg.macs_per_gemm_step
    return LayerStats("conv2d", insns=len(emitted), macs=s.macs, hw_macs=hw_macs,
                      counts=count_kinds(emitted), plan=plan)


def _step(s: ConvShape, cfg: Config, x0: int, w0: int, n: int, cb: int, o0: int, to: int,
          c0: int, tc: int, kh0: int, tkh: int, y0: int, th: int, xo: int, tw: int
          ) -> Step | None:
    """The loads and GEMM of one reduction chunk, or None when its window is all padding."""
    ih, iw = (th - 1) * s.sh + tkh, (tw - 1) * s.sw + s.kw
    r0, q0 = y0 * s.sh - s.ph + kh0, xo * s.sw - s.pw
    yp0, yp1 = max(0, -r0), max(0, r0 + ih - s.h)
    xp0, xp1 = max(0, -q0), max(0, q0 + iw - s.w)
    ys, xs = ih - yp0 - yp1, iw - xp0 - xp1
    if ys <= 0 or xs <= 0:
        return None
    pads = (yp0, yp1, xp0, xp1)
    loads = [LoadReq(MemType.INP, c * ih * iw,
                     x0 + ((n * cb + c0 + c) * s.h + max(r0, 0)) * s.w + max(q0, 0),
                     ys, xs, s.w, pads) for c in range(tc)]
    kk = s.kh * s.kw
    if tkh == s.kh and (to == 1 or cb * kk <= MAX_STRIDE_FIELD):
        loads.append(LoadReq(MemType.WGT, 0, w0 + (o0 * cb + c0) * kk, to, tc * kk, cb * kk))
    else:
        loads += [LoadReq(MemType.WGT, o * tc * tkh * s.kw,
                          w0 + ((o0 + o) * cb + c0) * kk + kh0 * s.kw, tc, tkh * s.kw, kk)
                  for o in range(to)]
    return Step(tuple(loads), _conv_kernel(to, tc, tkh, s.kw, th, tw, ih, iw, s.sh, s.sw))


def conv2d_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                     requant: Requant = SATURATE) -> np.ndarray:
    """numpy integer reference of exactly the accelerator pipeline, NCHW int8 out."""
    s = ConvShape.make(x.shape, w.shape, stride, padding)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (s.ph, s.ph), (s.pw, s.pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (s.kh, s.kw), axis=(2, 3))
    win = win[:, :, ::s.sh, ::s.sw][:, :, :s.oh, :s.ow]  # N C OH OW KH KW
    # Exact in float64: every partial sum is below 2**53.
    acc = np.einsum("ncyxij,ocij->noyx", win, w.astype(np.float64), optimize=True)
    acc = acc.astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :, None, None]
    return requant_reference(wrap_int32(acc), requant)


def conv2d(device: Device, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
           requant: Requant = SATURATE, double_buffer: bool = True,
           plan: ConvPlan | None = None) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Run one convolution on ``device``; returns NCHW int8, the layer stats and run stats."""
    cfg = device.config
    s = ConvShape.make(np.shape(x), np.shape(w), stride, padding)
    px, pw_ = pack_activation(x, cfg), pack_weights(w, cfg)
    if bias is not None and np.asarray(bias).shape != (s.o,):
        raise ProgramError(f"conv2d bias must have shape ({s.o},), not {np.asarray(bias).shape}")
    arrays = [px, pw_] + ([pack_bias(bias, cfg)] if bias is not None else [])
    out_shape = (px.shape[0], pw_.shape[0], s.oh, s.ow, cfg.batch, cfg.block_out)
    bufs = [device.alloc(a.nbytes) for a in arrays]
    out_buf = device.alloc(int(np.prod(out_shape)))
    try:
        for buf, a in zip(bufs, arrays):
            device.write(buf.addr, a)
        builder = CommandBuilder(cfg, device)
        stats = emit_conv2d(builder, bufs[0].addr, bufs[1].addr, out_buf.addr, s,
                            bias_addr=bufs[2].addr if bias is not None else None,
                            requant=requant, double_buffer=double_buffer, plan=plan)
        run = builder.synchronize()
        packed = device.read_array(out_buf.addr, out_shape, np.int8)
    finally:
        for buf in bufs + [out_buf]:
            device.free(buf)
    return unpack_activation(packed, (s.n, s.o, s.oh, s.ow)), stats, run
