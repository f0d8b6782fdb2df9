"""Tiled int8 2-D convolution on the accelerator: ``y = epilogue(conv2d(x, w) + bias [, res])``.

Layouts (SPEC §2): input ``N C H W`` packed ``(N/BATCH, C/BLOCK_IN, H, W, BATCH, BLOCK_IN)``,
weights ``O I KH KW`` packed ``(O/BLOCK_OUT, I/BLOCK_IN, KH, KW, BLOCK_OUT, BLOCK_IN)``, output
(and residual) ``(N/BATCH, O/BLOCK_OUT, OH, OW, BATCH, BLOCK_OUT)`` int8, bias and per-channel
multipliers ``(O/BLOCK_OUT, BATCH, BLOCK_OUT)`` int32 accumulator rows.

An output tile is one batch block, ``to`` output-channel blocks, ``th`` output rows and ``tw``
output columns (normally the full width). The reduction is cut into stages of ``kc``
input-channel blocks and ``tkh`` kernel rows (normally the whole kernel): a stage loads, per
input-channel block, the padded input window the tile needs (the zero border comes from the LOAD
padding fields), loads the weight chunk, and runs one GEMM in one of two loop forms:

- ``window``: micro-ops over (o, c, y, x) output positions, the loops over the kernel taps
  (kh, kw) — few loop iterations, many micro-ops;
- ``channel``: micro-ops over (o, y, x, kw), the loops over (c, kh).

Stages whose window is padding only are dropped. The tile shape is chosen by
:func:`plan_conv2d` with the cost model of :mod:`~tessera.runtime.accel.tiling`; the pipeline
(tokens, double buffering, skipping resident loads) is :mod:`~tessera.runtime.accel.emitter`'s.
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
from tessera.runtime.layout import ceil_div, pack_activation, pack_weights, unpack_activation
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["ConvShape", "ConvGeom", "ConvTiles", "plan_conv2d", "conv2d_params", "emit_conv2d",
           "conv2d", "conv2d_reference"]

# Candidate tile extents of the search (the full extent is always a candidate too).
_KCS = (1, 2, 4, 8, 16, 32)
_TOS = (1, 2, 4, 8, 16)
_THS = (1, 2, 3, 4, 6, 7, 8, 14, 16, 28)
_TWS = (1, 2, 4, 7, 8, 14, 16, 28, 32, 56)
_FORMS = ("window", "channel")
# Micro-op entries kept free for the epilogue's small ALU kernels.
_UOP_RESERVE = 64


def _pos_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ProgramError(f"conv2d {what} must be a positive integer, not {v!r}")
    return int(v)


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ProgramError(f"conv2d {what} must be an integer or a pair, not {v!r}") from None
    return a, b


@dataclass(frozen=True)
class ConvShape:
    """A convolution's logical geometry: unpadded channel counts, strides and the zero padding
    of each side (top, left, bottom, right)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    pt: int = 0
    pl: int = 0
    pb: int = 0
    pr: int = 0

    def __post_init__(self) -> None:
        for name in ("n", "c", "h", "w", "o", "kh", "kw", "sh", "sw"):
            object.__setattr__(self, name, _pos_int(getattr(self, name), name))
        for name in ("pt", "pl", "pb", "pr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ProgramError(f"conv2d padding {name} must be a non-negative integer, "
                                   f"not {v!r}")
            object.__setattr__(self, name, int(v))
        if self.oh < 1 or self.ow < 1:
            raise ProgramError(f"conv2d kernel {self.kh}x{self.kw} does not fit the padded "
                               f"input {self.h + self.pt + self.pb}x{self.w + self.pl + self.pr}")

    @classmethod
    def make(cls, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
             stride: int | tuple[int, int] = 1,
             padding: int | tuple[int, int] | tuple[int, int, int, int] = 0) -> ConvShape:
        """From NCHW input and OIHW weight shapes; ``padding`` is one value, (ph, pw) or
        (top, left, bottom, right)."""
        if len(x_shape) != 4 or len(w_shape) != 4:
            raise ProgramError(f"conv2d needs NCHW input and OIHW weights, not {x_shape} and "
                               f"{w_shape}")
        if x_shape[1] != w_shape[1]:
            raise ProgramError(f"conv2d input has {x_shape[1]} channels but the weights expect "
                               f"{w_shape[1]}")
        sh, sw = _pair(stride, "stride")
        if isinstance(padding, (tuple, list)) and len(padding) == 4:
            pt, pl, pb, pr = padding
        else:
            ph, pw = _pair(padding, "padding")
            pt, pl, pb, pr = ph, pw, ph, pw
        return cls(*(int(v) for v in x_shape), int(w_shape[0]), int(w_shape[2]),
                   int(w_shape[3]), sh, sw, pt, pl, pb, pr)

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - self.kw) // self.sw + 1

    @property
    def macs(self) -> int:
        return self.n * self.o * self.oh * self.ow * self.c * self.kh * self.kw


@dataclass(frozen=True)
class ConvGeom:
    """A convolution in blocks for one config: ``n`` batch groups, ``cb``/``ob`` channel
    blocks, spatial sizes, strides and padding."""

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

    @classmethod
    def of(cls, cfg: Config, s: ConvShape) -> ConvGeom:
        lim = layout(cfg).limits
        for name in ("pt", "pl", "pb", "pr"):
            if getattr(s, name) > lim.max_pad:
                raise ProgramError(f"conv2d padding {name} must be in [0, {lim.max_pad}] (the "
                                   f"LOAD padding fields), not {getattr(s, name)}")
        if s.w > lim.max_x_stride:
            raise ProgramError(f"conv2d input width must be at most {lim.max_x_stride} (the "
                               f"LOAD stride field), not {s.w}")
        return cls(ceil_div(s.n, cfg.batch), ceil_div(s.c, cfg.block_in), s.h, s.w,
                   ceil_div(s.o, cfg.block_out), s.kh, s.kw, s.sh, s.sw, s.pt, s.pl, s.pb, s.pr)

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - self.kw) // self.sw + 1

    def in_width(self, tw: int) -> int:
        """Padded input columns ``tw`` output columns read."""
        return (tw - 1) * self.sw + self.kw

    def in_rows(self, th: int, tkh: int) -> int:
        """Padded input rows ``th`` output rows read for ``tkh`` kernel rows."""
        return (th - 1) * self.sh + tkh

    def gemm_steps(self) -> int:
        return self.n * self.ob * self.cb * self.oh * self.ow * self.kh * self.kw


@dataclass(frozen=True)
class ConvTiles:
    """A tile shape: ``to`` output-channel blocks x ``th`` output rows x ``tw`` output columns
    (``None``: the full width) per tile; stages of ``kc`` input-channel blocks x ``tkh`` kernel
    rows (``None``: the whole kernel). ``est_cycles`` is the cost model's estimate."""

    to: int
    th: int
    kc: int
    double_buffer: bool = True
    loop_form: str = "window"
    tw: int | None = None
    tkh: int | None = None
    est_cycles: int = 0

    def resolved(self, g: ConvGeom) -> ConvTiles:
        t = replace(self, tw=self.tw or g.ow, tkh=self.tkh or g.kh)
        for name, v, top in (("to", t.to, g.ob), ("th", t.th, g.oh), ("kc", t.kc, g.cb),
                             ("tw", t.tw, g.ow), ("tkh", t.tkh, g.kh)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise ProgramError(f"conv2d tile {name} must be an integer in [1, {top}], not "
                                   f"{v!r}")
        if t.loop_form not in _FORMS:
            raise ProgramError(f"conv2d loop_form must be one of {_FORMS}, not "
                               f"{t.loop_form!r}")
        return t


# -- tile search ----------------------------------------------------------------------------


def _uops(g: ConvGeom, t: ConvTiles) -> int:
    return t.to * t.th * t.tw * (t.kc if t.loop_form == "window" else g.kw)


def _acc(t: ConvTiles, residual: bool, vec: bool) -> AccRows:
    return AccRows.layout(t.to * t.th * t.tw, t.to, residual, True, vec)


def _fits(cfg: Config, g: ConvGeom, t: ConvTiles, residual: bool, vec: bool) -> bool:
    if t.double_buffer and cfg.dep_queue_depth < 2:
        return False
    parts = 2 if t.double_buffer else 1
    inp, wgt, acc = thread_caps(cfg, parts)
    max_iter = layout(cfg).limits.max_iter
    if t.kc * g.in_rows(t.th, t.tkh) * g.in_width(t.tw) > inp:
        return False
    if t.to * t.kc * t.tkh * g.kw > wgt:
        return False
    if _acc(t, residual, vec).total > acc:
        return False
    # both threads' GEMM kernels plus a few small ALU kernels live in the uop cache at once
    if parts * _uops(g, t) + _UOP_RESERVE > cfg.uop_depth:
        return False
    if t.loop_form == "channel" and (t.kc > max_iter or t.tkh > max_iter):
        return False
    return t.to * t.th * t.tw <= max_iter


def _estimate(cfg: Config, g: ConvGeom, t: ConvTiles, residual: bool, n_alu: int) -> int:
    """The cost model over the distinct tile and stage shapes of the layer."""
    kc_spans = spans(g.cb, t.kc)
    kh_spans = spans(g.kh, t.tkh)
    total = 0
    for to, n_o in spans(g.ob, t.to):
        for th, n_h in spans(g.oh, t.th):
            for tw, n_w in spans(g.ow, t.tw):
                rows = to * th * tw
                iw = g.in_width(tw)
                stages = [StageShape(n_c * n_k, rows * kc * tkh * g.kw,
                                     kc * g.in_rows(th, tkh) * iw, to * kc * tkh * g.kw, kc)
                          for kc, n_c in kc_spans for tkh, n_k in kh_spans]
                stores = 1 if tw == g.ow else to
                total += n_o * n_h * n_w * tile_cycles(cfg, rows, stages, n_alu, residual,
                                                       t.double_buffer, stores)
    return total * g.n


def _search(cfg: Config, g: ConvGeom, residual: bool, vec: bool, n_alu: int,
            dbs: tuple[bool, ...], tws: list[int], tkhs: list[int]) -> ConvTiles | None:
    best: ConvTiles | None = None
    best_key: tuple[int, int] | None = None
    kcs = sorted({g.cb} | {k for k in _KCS if k < g.cb})
    tos = sorted({g.ob} | {k for k in _TOS if k < g.ob})
    ths = sorted({g.oh} | {k for k in _THS if k < g.oh})
    for db, kc, to, th, tw, tkh, form in itertools.product(dbs, kcs, tos, ths, tws, tkhs,
                                                           _FORMS):
        t = ConvTiles(to, th, kc, db, form, tw, tkh)
        if not _fits(cfg, g, t, residual, vec):
            continue
        key = (_estimate(cfg, g, t, residual, n_alu), _uops(g, t))  # fewer uops break ties
        if best_key is None or key < best_key:
            best, best_key = replace(t, est_cycles=key[0]), key
    return best


def plan_conv2d(cfg: Config, g: ConvGeom, *, residual: bool = False, vec: bool = False,
                n_alu: int = 2, double_buffer: bool = True) -> ConvTiles:
    """The feasible tile shape with the lowest estimated cycle count.

    Full-width tiles over the whole kernel are searched first; only when none fits the SRAM
    (very wide rows or tall kernels on a small config) are the width and the kernel rows split
    as well. ``n_alu`` is the number of epilogue ALU steps besides the bias add.
    """
    dbs = (True, False) if double_buffer else (False,)
    best = _search(cfg, g, residual, vec, n_alu, dbs, [g.ow], [g.kh])
    if best is None:
        tws = sorted({g.ow} | {k for k in _TWS if k < g.ow})
        tkhs = list(range(1, g.kh + 1))
        best = _search(cfg, g, residual, vec, n_alu, dbs, tws, tkhs)
    if best is None:
        raise ProgramError(
            f"no conv2d tiling fits the accelerator's SRAM ({g.ow} output columns, "
            f"{g.kh}x{g.kw} kernel, {g.cb} input and {g.ob} output channel blocks) on "
            f"{cfg.summary()}")
    return best


# -- tiles ----------------------------------------------------------------------------------


def _window_kernel(g: ConvGeom, to: int, th: int, tw: int, kc: int, tkh: int, iw: int,
                   plane: int, inp0: int, wgt0: int, acc0: int) -> MicroKernel:
    """Loops over the (tkh, kw) kernel taps; micro-ops over (o, c, y, x)."""
    uops = tuple(Uop(acc0 + (o * th + y) * tw + x, inp0 + c * plane + y * g.sh * iw + x * g.sw,
                     wgt0 + (o * kc + c) * tkh * g.kw)
                 for o in range(to) for c in range(kc) for y in range(th) for x in range(tw))
    return MicroKernel(uops, tkh, g.kw, 0, 0, iw, 1, g.kw, 1)


def _channel_kernel(g: ConvGeom, to: int, th: int, tw: int, kc: int, tkh: int, iw: int,
                    plane: int, inp0: int, wgt0: int, acc0: int) -> MicroKernel:
    """Loops over (c, kh); micro-ops over (o, y, x, kw)."""
    uops = tuple(Uop(acc0 + (o * th + y) * tw + x, inp0 + y * g.sh * iw + x * g.sw + q,
                     wgt0 + o * kc * tkh * g.kw + q)
                 for o in range(to) for y in range(th) for x in range(tw) for q in range(g.kw))
    return MicroKernel(uops, kc, tkh, 0, 0, plane, iw, tkh * g.kw, g.kw)


def _per_block(to: int, per: int, acc0: int, src: int) -> MicroKernel:
    """dst = every row of ``to`` blocks of ``per`` rows; src = the block's constant row."""
    return MicroKernel(tuple(Uop(acc0 + p, src, 0) for p in range(per)), to, 1, per, 0, 1, 0,
                       0, 0)


@dataclass(frozen=True)
class _Bases:
    x: int
    w: int
    y: int
    bias: int
    mult: int
    res: int


def _stage(cfg: Config, g: ConvGeom, t: ConvTiles, e: _Bases, n: int, o0: int, to: int,
           y0: int, th: int, x0: int, tw: int, c0: int, kc: int, k0: int, tkh: int
           ) -> Stage | None:
    lim = layout(cfg).limits
    ih, iw = g.in_rows(th, tkh), g.in_width(tw)
    r0, q0 = y0 * g.sh - g.pt + k0, x0 * g.sw - g.pl
    yp0, yp1 = max(0, -r0), max(0, r0 + ih - g.h)
    xp0, xp1 = max(0, -q0), max(0, q0 + iw - g.w)
    ys, xs = ih - yp0 - yp1, iw - xp0 - xp1
    if ys <= 0 or xs <= 0:
        return None  # this chunk of kernel rows sees only padding
    plane = ih * iw
    pads = (yp0, yp1, xp0, xp1)
    loads = [Load(MemType.INP, c * plane,
                  e.x + ((n * g.cb + c0 + c) * g.h + max(r0, 0)) * g.w + max(q0, 0),
                  ys, xs, g.w, pads) for c in range(kc)]
    kk = g.kh * g.kw
    if tkh == g.kh and (to == 1 or g.cb * kk <= lim.max_x_stride):
        loads.append(Load(MemType.WGT, 0, e.w + (o0 * g.cb + c0) * kk, to, kc * kk,
                          g.cb * kk))
    else:
        loads += [Load(MemType.WGT, o * kc * tkh * g.kw,
                       e.w + ((o0 + o) * g.cb + c0) * kk + k0 * g.kw, kc, tkh * g.kw, kk)
                  for o in range(to)]
    form = _window_kernel if t.loop_form == "window" else _channel_kernel
    return Stage(tuple(loads), partial(form, g, to, th, tw, kc, tkh, iw, plane))


def _stores(cfg: Config, g: ConvGeom, base: int, n: int, o0: int, to: int, y0: int, th: int,
            x0: int, tw: int) -> list[tuple[int, int, int, int, int]]:
    """(sram, dram, y, x, stride) of the rows of one tile in an output-shaped tensor."""
    plane = g.oh * g.ow
    first = base + ((n * g.ob + o0) * g.oh + y0) * g.ow + x0
    if tw == g.ow:
        if to == 1 or plane <= layout(cfg).limits.max_x_stride:
            return [(0, first, to, th * tw, plane)]
        return [(o * th * tw, first + o * plane, 1, th * tw, th * tw) for o in range(to)]
    return [(o * th * tw, first + o * plane, th, tw, g.ow) for o in range(to)]


def _tiles(cfg: Config, g: ConvGeom, t: ConvTiles, e: _Bases, epi: Epilogue,
           residual: bool, bias: bool) -> list[Tile]:
    tiles = []
    for n in range(g.n):
        for o0 in range(0, g.ob, t.to):
            to = min(t.to, g.ob - o0)
            for y0 in range(0, g.oh, t.th):
                th = min(t.th, g.oh - y0)
                for x0 in range(0, g.ow, t.tw):
                    tw = min(t.tw, g.ow - x0)
                    rows = to * th * tw
                    acc = AccRows.layout(rows, to, residual, bias, epi.per_channel)
                    stages = []
                    for c0 in range(0, g.cb, t.kc):
                        for k0 in range(0, g.kh, t.tkh):
                            st = _stage(cfg, g, t, e, n, o0, to, y0, th, x0, tw, c0,
                                        min(t.kc, g.cb - c0), k0, min(t.tkh, g.kh - k0))
                            if st is not None:
                                stages.append(st)
                    stores = _stores(cfg, g, e.y, n, o0, to, y0, th, x0, tw)
                    eloads = []
                    if bias:
                        eloads.append(Load(MemType.ACC, acc.bias, e.bias + o0, 1, to, to))
                    if acc.mult is not None:
                        eloads.append(Load(MemType.ACC, acc.mult, e.mult + o0, 1, to, to))
                    if residual:
                        res = _stores(cfg, g, e.res, n, o0, to, y0, th, x0, tw)
                        eloads += [Load(MemType.ACC_8BIT, acc.residual + s, d, y, x, st)
                                   for s, d, y, x, st in res]
                    channel = partial(_per_block, to, th * tw)
                    tiles.append(Tile(
                        acc.total, partial(lambda r, ab: rows_kernel(ab, r), rows),
                        tuple(stages), tuple(eloads), epilogue_passes(epi, acc, channel),
                        tuple(Store(*s) for s in stores)))
    return tiles


# -- the layer ------------------------------------------------------------------------------


def conv2d_params(cfg: Config, w: np.ndarray, bias: np.ndarray | None, epi: Epilogue
                  ) -> dict[str, np.ndarray]:
    """The device arrays a convolution reads: packed weights ``w``, ``bias`` rows and (for a
    per-channel multiplier) ``mult`` rows."""
    return layer_params(cfg, pack_weights(w, cfg), bias, epi, int(np.shape(w)[0]))


def emit_conv2d(b: CommandBuilder, shape: ConvShape, addrs: LayerAddrs,
                epilogue: Epilogue | None = None, *, tiles: ConvTiles | None = None,
                double_buffer: bool = True) -> LayerStats:
    """Append a convolution to ``b``; tensors are packed at device byte addresses ``addrs``.

    Starts with a barrier (so it may read what earlier layers stored). Without ``addrs.bias``
    the bias add is left out; ``addrs.mult`` must be given exactly when the epilogue's
    multiplier is per channel, ``addrs.residual`` exactly when it has a residual branch.
    """
    cfg = b.cfg
    epi = epilogue if epilogue is not None else Epilogue()
    g = ConvGeom.of(cfg, shape)
    residual = addrs.residual is not None
    if residual != epi.residual:
        raise ProgramError("conv2d: a residual input must be given exactly when the epilogue "
                           "has a residual branch")
    if (addrs.mult is not None) != epi.per_channel:
        raise ProgramError("conv2d: multiplier rows must be given exactly when the epilogue's "
                           "multiplier is per channel")
    if tiles is None:
        tiles = plan_conv2d(cfg, g, residual=residual, vec=epi.per_channel,
                            n_alu=len(epi.alu_steps()), double_buffer=double_buffer)
    t = tiles.resolved(g)
    if not _fits(cfg, g, t, residual, epi.per_channel):
        raise ProgramError(f"conv2d tiles {t} do not fit the SRAM of {cfg.summary()}")
    e = _Bases(element_base(cfg, addrs.x, MemType.INP, "conv2d input"),
               element_base(cfg, addrs.w, MemType.WGT, "conv2d weights"),
               element_base(cfg, addrs.y, MemType.OUT, "conv2d output"),
               element_base(cfg, addrs.bias, MemType.ACC, "conv2d bias"),
               element_base(cfg, addrs.mult, MemType.ACC, "conv2d multiplier"),
               element_base(cfg, addrs.residual, MemType.ACC_8BIT, "conv2d residual"))
    b.barrier()
    start = len(b.insns)
    pipe = emit_tiles(b, _tiles(cfg, g, t, e, epi, residual, addrs.bias is not None),
                      t.double_buffer)
    emitted = b.insns[start:]
    return LayerStats("conv2d", insns=len(emitted), macs=shape.macs,
                      hw_macs=g.gemm_steps() * cfg.macs_per_gemm_step,
                      counts=count_kinds(emitted), tiles=tiles, pipeline=pipe)


def conv2d_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     stride: int | tuple[int, int] = 1, padding=0,
                     epilogue: Epilogue | None = None, residual: np.ndarray | None = None
                     ) -> np.ndarray:
    """numpy integer reference of exactly the accelerator's arithmetic, NCHW int8 out."""
    s = ConvShape.make(np.shape(x), np.shape(w), stride, padding)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (s.pt, s.pb), (s.pl, s.pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (s.kh, s.kw), axis=(2, 3))
    win = win[:, :, ::s.sh, ::s.sw][:, :, :s.oh, :s.ow]  # N C OH OW KH KW
    # Exact in float64: every partial sum is below 2**53.
    acc = np.einsum("ncyxij,ocij->noyx", win, np.asarray(w, np.float64), optimize=True)
    acc = acc.astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :, None, None]
    acc = ((acc + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # the accumulator wraps mod 2**32
    return apply_epilogue(acc, epilogue or Epilogue(), residual)


def conv2d(device: Device, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
           stride: int | tuple[int, int] = 1, padding=0, epilogue: Epilogue | None = None,
           double_buffer: bool = True, tiles: ConvTiles | None = None,
           residual: np.ndarray | None = None) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Run one convolution on ``device``; returns NCHW int8, the layer stats and run stats."""
    cfg = device.config
    epi = epilogue if epilogue is not None else Epilogue()
    s = ConvShape.make(np.shape(x), np.shape(w), stride, padding)
    params = conv2d_params(cfg, w, bias, epi)
    arrays = {"x": pack_activation(x, cfg), "w": params["w"]}
    if bias is not None:
        arrays["bias"] = params["bias"]
    if "mult" in params:
        arrays["mult"] = params["mult"]
    if residual is not None:
        arrays["residual"] = pack_activation(residual, cfg)
    out_shape = (arrays["x"].shape[0], arrays["w"].shape[0], s.oh, s.ow, cfg.batch,
                 cfg.block_out)
    if residual is not None and arrays["residual"].shape != out_shape:
        raise ProgramError(f"conv2d residual must have the output's shape "
                           f"{[s.n, s.o, s.oh, s.ow]}, not {list(np.shape(residual))}")
    bufs = {k: device.alloc(a.nbytes) for k, a in arrays.items()}
    out_buf = device.alloc(int(np.prod(out_shape)))
    try:
        for k, a in arrays.items():
            device.write(bufs[k].addr, a)
        builder = CommandBuilder(cfg, device)
        addrs = LayerAddrs(bufs["x"].addr, bufs["w"].addr, out_buf.addr,
                           *(bufs[k].addr if k in bufs else None
                             for k in ("bias", "mult", "residual")))
        stats = emit_conv2d(builder, s, addrs, epi, tiles=tiles, double_buffer=double_buffer)
        run = builder.synchronize()
        packed = device.read_array(out_buf.addr, out_shape, np.int8)
    finally:
        for buf in list(bufs.values()) + [out_buf]:
            device.free(buf)
    return unpack_activation(packed, (s.n, s.o, s.oh, s.ow)), stats, run
