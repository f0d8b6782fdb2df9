"""Tiled int8 2-D convolution on the accelerator: ``y = epilogue(conv2d(x, w) + bias [, res])``.

Layouts (SPEC §2): input ``N C H W`` packed ``(N/BATCH, C/BLOCK_IN, H, W, BATCH, BLOCK_IN)``,
weights ``O I KH KW`` packed ``(O/BLOCK_OUT, I/BLOCK_IN, KH, KW, BLOCK_OUT, BLOCK_IN)``, output
(and residual) ``(N/BATCH, O/BLOCK_OUT, OH, OW, BATCH, BLOCK_OUT)`` int8. A dense layer is the
1x1 convolution of ``M x K x 1 x 1`` (:mod:`~tessera.runtime.accel.dense`).

An output tile is ``tn`` batch groups x ``to`` output-channel blocks x ``th`` output rows x
``tw`` output columns; its accumulator rows are ordered (batch group, block, row, column). The
reduction is cut into stages of ``kc`` input-channel blocks, ``tkh`` kernel rows and ``tkw``
kernel columns (a kernel too wide for one input window is split along its columns): a stage
loads, per batch group and input-channel block, the padded input window the tile needs (the
zero border comes from the LOAD padding fields; a strided 1x1 convolution loads only the pixels
it reads), loads the weight chunk unless it is still resident, and runs its GEMM as a loop nest
over all seven dimensions (:func:`~tessera.runtime.accel.kernels.gemm_parts`), in parts.
Stages whose window is padding only are dropped. Dilation and asymmetric padding are supported.

Grouped convolutions (depthwise included) reduce each output block over its own window of
``rb`` input blocks only (:func:`group_blocks`: every ``period`` output blocks share the window
of their groups' input channels; depthwise and groups narrower than a block are block-diagonal,
``rb`` 1), with zeros in the packed weights off the groups; a stage holds the chunk's blocks of
every window its tile touches. The GEMMs execute ``rb`` blocks per output block
(``LayerStats.hw_macs``), of which the group's channels are useful (``LayerStats.macs``).

The epilogue is the layer's :class:`~tessera.runtime.accel.requant.DeviceEpilogue`; its
per-channel constants are loaded into the accumulator's constant region once per group of
output blocks. The tile shape is chosen by :func:`~tessera.runtime.accel.tiling.plan_conv2d`;
the pipeline (tokens, double buffering, deferred epilogues) is
:mod:`~tessera.runtime.accel.emitter`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache, partial

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.errors import ProgramError
from tessera.isa import AluOp, MemType, layout
from tessera.runtime.accel.emitter import (
    AluPass,
    Load,
    Stage,
    Store,
    Tile,
    acc_cap,
    emit_tiles,
    thread_caps,
)
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.accel.kernels import Dim, block_kernel, gemm_parts, rows_kernel
from tessera.runtime.accel.layer import (
    LayerAddrs,
    LayerParams,
    LayerStats,
    const_slots,
    conv_bases,
    device_epilogue,
    layer_params,
)
from tessera.runtime.accel.requant import DeviceEpilogue
from tessera.runtime.builder import CommandBuilder, count_kinds
from tessera.runtime.layout import (
    ceil_div,
    pack_activation,
    pack_grouped,
    pack_weights,
    unpack_activation,
)
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["ConvShape", "ConvGeom", "ConvTiles", "EpilogueShape", "conv2d_params", "emit_conv2d",
           "conv2d", "conv2d_reference", "tile_list", "fits", "gemm_part_count", "GEMM_PARTS"]

GEMM_PARTS = 8  # GEMM instructions a tile is cut into (the schedule's slots), when long enough
MIN_PART = 128  # GEMM steps a part has at least


def gemm_part_count(steps: int, stages: int) -> int:
    """GEMM instructions one stage of ``steps`` steps is cut into (``stages`` per tile)."""
    return max(1, min(ceil_div(GEMM_PARTS, stages), steps // MIN_PART))


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
    """A convolution's logical geometry: unpadded channel counts, strides, dilations and the
    zero padding of each side (top, left, bottom, right)."""

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
    dh: int = 1
    dw: int = 1
    groups: int = 1

    def __post_init__(self) -> None:
        for name in ("n", "c", "h", "w", "o", "kh", "kw", "sh", "sw", "dh", "dw", "groups"):
            object.__setattr__(self, name, _pos_int(getattr(self, name), name))
        if self.c % self.groups or self.o % self.groups:
            raise ProgramError(f"conv2d groups ({self.groups}) must divide the input ({self.c}) "
                               f"and output ({self.o}) channels")
        for name in ("pt", "pl", "pb", "pr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ProgramError(f"conv2d padding {name} must be a non-negative integer, "
                                   f"not {v!r}")
            object.__setattr__(self, name, int(v))
        if self.oh < 1 or self.ow < 1:
            raise ProgramError(
                f"conv2d kernel {self.kh}x{self.kw} (dilation {self.dh}x{self.dw}) does not "
                f"fit the padded input {self.h + self.pt + self.pb}x{self.w + self.pl + self.pr}")

    @classmethod
    def make(cls, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
             stride: int | tuple[int, int] = 1,
             padding: int | tuple[int, int] | tuple[int, int, int, int] = 0,
             dilation: int | tuple[int, int] = 1, groups: int = 1) -> ConvShape:
        """From NCHW input and OIHW weight shapes (``I`` = channels per group); ``padding`` is
        one value, (ph, pw) or (top, left, bottom, right)."""
        if len(x_shape) != 4 or len(w_shape) != 4:
            raise ProgramError(f"conv2d needs NCHW input and OIHW weights, not {x_shape} and "
                               f"{w_shape}")
        if x_shape[1] != w_shape[1] * groups:
            raise ProgramError(f"conv2d input has {x_shape[1]} channels but the weights expect "
                               f"{w_shape[1]} x {groups} groups")
        sh, sw = _pair(stride, "stride")
        dh, dw = _pair(dilation, "dilation")
        if isinstance(padding, (tuple, list)) and len(padding) == 4:
            pt, pl, pb, pr = padding
        else:
            ph, pw = _pair(padding, "padding")
            pt, pl, pb, pr = ph, pw, ph, pw
        return cls(*(int(v) for v in x_shape), int(w_shape[0]), int(w_shape[2]),
                   int(w_shape[3]), sh, sw, pt, pl, pb, pr, dh, dw, groups)

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - (self.kh - 1) * self.dh - 1) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - (self.kw - 1) * self.dw - 1) // self.sw + 1

    @property
    def macs(self) -> int:
        return (self.n * self.o * self.oh * self.ow * (self.c // self.groups) * self.kh
                * self.kw)

    @property
    def depthwise(self) -> bool:
        """One input channel per group and one output channel per input channel."""
        return self.groups == self.c == self.o and self.groups > 1


def group_blocks(cfg: Config, c: int, o: int, groups: int) -> tuple[int, int]:
    """How a convolution of ``groups`` groups sits on the channel blocks: (period, span) such
    that every run of ``period`` output blocks reads only its own ``span`` input blocks (the
    weights are zero off the groups). (0, 0) when every output block needs every input block
    (``groups == 1``, or groups that straddle so many blocks that no smaller window exists).
    Depthwise on equal blocks is (1, 1): output block o reads input block o."""
    if groups == 1:
        return 0, 0
    cg, og = c // groups, o // groups
    bi, bo = cfg.block_in, cfg.block_out
    cb, ob = ceil_div(c, bi), ceil_div(o, bo)
    for period in range(1, ob):
        if (period * bo) % og == 0 and (period * bo // og * cg) % bi == 0:
            span = period * bo // og * cg // bi
            return (period, span) if span < cb else (0, 0)
    return 0, 0


def _window_lo(o: int, period: int, span: int, cb: int) -> int:
    """The first input block of output block ``o``'s window: its period's first, kept inside
    the ``cb`` blocks (a partial last period)."""
    return min((o // period) * span, cb - span)


@lru_cache(maxsize=4096)
def _max_windows(ob: int, period: int, to: int) -> int:
    return max((min(o0 + to, ob) - 1) // period - o0 // period + 1 for o0 in range(0, ob, to))


@dataclass(frozen=True)
class ConvGeom:
    """A convolution in blocks for one config: ``n`` batch groups, ``cb``/``ob`` channel
    blocks, spatial sizes, strides, padding and dilation."""

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
    dh: int = 1
    dw: int = 1
    row_stride_ok: bool = True  # rows sh apart fit the LOAD stride field
    period: int = 0  # output blocks sharing one window of input blocks (0: all of them)
    span: int = 0  # input blocks each output block reduces over (0: all of them)

    def __post_init__(self) -> None:
        if not self.period:
            object.__setattr__(self, "period", self.ob)
        if not self.span:
            object.__setattr__(self, "span", self.cb)

    @classmethod
    def of(cls, cfg: Config, s: ConvShape) -> ConvGeom:
        lim = layout(cfg).limits
        period, span = group_blocks(cfg, s.c, s.o, s.groups)
        return cls(ceil_div(s.n, cfg.batch), ceil_div(s.c, cfg.block_in), s.h, s.w,
                   ceil_div(s.o, cfg.block_out), s.kh, s.kw, s.sh, s.sw, s.pt, s.pl, s.pb, s.pr,
                   s.dh, s.dw, s.sh * s.w <= lim.max_x_stride, period, span)

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - (self.kh - 1) * self.dh - 1) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - (self.kw - 1) * self.dw - 1) // self.sw + 1

    @property
    def subsampled(self) -> bool:
        """A 1x1 convolution with a row stride and no padding: stages load only the input rows
        it reads (one LOAD per channel block, rows ``sh`` apart)."""
        return (self.kh == self.kw == 1 and self.sh > 1 and self.row_stride_ok
                and self.pt == self.pl == self.pb == self.pr == 0)

    def in_width(self, tw: int, tkw: int | None = None) -> int:
        """Input columns a stage holds for ``tw`` output columns and ``tkw`` kernel columns
        (default: all of them)."""
        return (tw - 1) * self.sw + ((tkw or self.kw) - 1) * self.dw + 1

    def in_rows(self, th: int, tkh: int) -> int:
        """Input rows a stage holds for ``th`` output rows and ``tkh`` kernel rows."""
        if self.subsampled:
            return th
        return (th - 1) * self.sh + (tkh - 1) * self.dh + 1

    @property
    def rb(self) -> int:
        """Input blocks each output block reduces over (``cb`` unless grouped; 1 when
        depthwise)."""
        return self.span

    def lo(self, o: int) -> int:
        """The first of the ``rb`` input blocks output block ``o`` reduces over."""
        return _window_lo(o, self.period, self.span, self.cb)

    def windows(self, o0: int, to: int) -> list[tuple[int, int, int]]:
        """The periods output blocks ``[o0, o0 + to)`` touch, in order: (first output block
        relative to ``o0``, output blocks in it, first input block)."""
        out = []
        o = o0
        while o < o0 + to:
            end = min(o0 + to, (o // self.period + 1) * self.period)
            out.append((o - o0, end - o, self.lo(o)))
            o = end
        return out

    def max_windows(self, to: int) -> int:
        """The most periods one tile of ``to`` output blocks touches."""
        return _max_windows(self.ob, self.period, to)

    def gemm_steps(self) -> int:
        return self.n * self.ob * self.rb * self.oh * self.ow * self.kh * self.kw


@dataclass(frozen=True)
class ConvTiles:
    """A tile shape: ``tn`` batch groups x ``to`` output-channel blocks x ``th`` output rows x
    ``tw`` output columns (``None``: the full width) per tile; stages of ``kc`` input-channel
    blocks x ``tkh`` kernel rows x ``tkw`` kernel columns (``None``: the whole kernel);
    ``regions``: accumulator tile regions with double buffering (2 or 4). ``est_cycles``: the
    cost model's estimate."""

    to: int
    th: int
    kc: int
    double_buffer: bool = True
    tw: int | None = None
    tkh: int | None = None
    tn: int = 1
    regions: int = 2
    est_cycles: int = 0
    tkw: int | None = None

    def resolved(self, g: ConvGeom) -> ConvTiles:
        t = replace(self, tw=self.tw or g.ow, tkh=self.tkh or g.kh, tkw=self.tkw or g.kw)
        for name, v, top in (("to", t.to, g.ob), ("th", t.th, g.oh), ("kc", t.kc, g.rb),
                             ("tw", t.tw, g.ow), ("tkh", t.tkh, g.kh), ("tkw", t.tkw, g.kw),
                             ("tn", t.tn, g.n)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise ProgramError(f"conv2d tile {name} must be an integer in [1, {top}], not "
                                   f"{v!r}")
        if not isinstance(t.double_buffer, bool):
            raise ProgramError(f"conv2d double_buffer must be True or False, not "
                               f"{t.double_buffer!r}")
        if t.regions not in (2, 4):
            raise ProgramError(f"conv2d accumulator regions must be 2 or 4, not {t.regions!r}")
        return t


# -- feasibility ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EpilogueShape:
    """What the tile search reads of a layer's epilogue program: its ALU steps, whether it has
    a residual branch, and its per-channel and uniform constant vectors (the search runs
    :func:`fits` and the cost model thousands of times per layer; this is computed once)."""

    steps: int
    residual: bool
    per: int
    uni: int

    @classmethod
    def of(cls, prog: DeviceEpilogue | EpilogueShape) -> EpilogueShape:
        if isinstance(prog, EpilogueShape):
            return prog
        per, uni = const_slots(prog)
        return cls(len(prog.steps), prog.residual, len(per), len(uni))


def const_blocks(cfg: Config, g: ConvGeom, prog: DeviceEpilogue | EpilogueShape, to: int
                 ) -> int:
    """Output blocks whose constants are resident at once: all of the layer's when they take at
    most an eighth of the accumulator (loaded once), else the tile's ``to`` (loaded per group
    of output blocks)."""
    s = EpilogueShape.of(prog)
    return g.ob if s.per * g.ob + s.uni <= cfg.acc_depth // 8 else to


def const_rows(prog: DeviceEpilogue | EpilogueShape, blocks: int) -> int:
    """Accumulator rows the constants of ``blocks`` output blocks occupy."""
    s = EpilogueShape.of(prog)
    return s.per * blocks + s.uni


def fits(cfg: Config, g: ConvGeom, t: ConvTiles, prog: DeviceEpilogue | EpilogueShape
         ) -> str | None:
    """None if tile shape ``t`` (resolved) fits the buffers and fields, else why not."""
    prog = EpilogueShape.of(prog)
    if t.double_buffer and cfg.dep_queue_depth < 2:
        return "double buffering needs dep_queue_depth >= 2"
    threads = 2 if t.double_buffer else 1
    inp, wgt = thread_caps(cfg, threads)
    lim = layout(cfg).limits
    blocks = g.max_windows(t.to) * t.kc  # input blocks a stage holds per batch group
    ih, iw = g.in_rows(t.th, t.tkh), g.in_width(t.tw, t.tkw)
    if t.tn * blocks * ih * iw > inp:
        return "input window exceeds the input buffer"
    if t.to * t.kc * t.tkh * t.tkw > wgt:
        return "weight chunk exceeds the weight buffer"
    # a stage's LOAD pads at most the padding, and less than its window (else it is dropped)
    if max(min(g.pt, ih - 1), min(g.pb, ih - 1), min(g.pl, iw - 1),
           min(g.pr, iw - 1)) > lim.max_pad:
        return "input window padding exceeds the LOAD padding fields"
    crow = const_rows(prog, const_blocks(cfg, g, prog, t.to))
    regions = t.regions if t.double_buffer else 1
    if crow >= cfg.acc_depth // max(regions, 2):
        return "epilogue constants exceed the accumulator"
    rows = t.tn * t.to * t.th * t.tw
    if rows * (2 if prog.residual else 1) > acc_cap(cfg, regions, crow):
        return "tile exceeds the accumulator"
    if t.th * t.tw > lim.max_iter or t.tn * t.to > lim.max_iter:
        return "tile exceeds the loop fields"
    if iw > lim.max_x_size or t.kc * t.tkh * t.tkw > lim.max_x_size:
        return "tile rows exceed the LOAD x_size field"
    if (ih > 1 and g.w > lim.max_x_stride) or (t.th > 1 and g.ow > lim.max_x_stride):
        return "rows wider than the LOAD/STORE stride field (one row per tile then)"
    if t.tkh < g.kh and g.rb * g.kh * g.kw > lim.max_x_stride:
        return "weight rows exceed the LOAD stride field"
    return None


# -- tiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bases:
    x: int
    w: int
    y: int
    consts: int
    res: int


def _nests(g: ConvGeom, tn: int, o0: int, to: int, th: int, tw: int, kc: int, tkh: int,
           tkw: int) -> tuple[tuple[tuple[Dim, ...], tuple[int, int, int], int], ...]:
    """The stage's loop nests, one per run of the tile's periods whose windows lie ``rb``
    input blocks apart (usually one): (dimensions as (extent, dst, src, wgt factors), offsets
    of its first step from the tile's accumulator, input and weight bases, output blocks it
    covers). The stage holds,
    per batch group, the ``kc`` input blocks of the chunk for every period the tile touches
    (:meth:`ConvGeom.windows`), in order."""
    ih, iw = g.in_rows(th, tkh), g.in_width(tw, tkw)
    plane = ih * iw
    sh, sw = (1 if g.subsampled else g.sh), g.sw
    wins = g.windows(o0, to)
    runs: list[list[int]] = []  # [first window, windows]
    for q, (_, nb, lo) in enumerate(wins):
        if runs:
            r = runs[-1]
            _, pnb, plo = wins[r[0] + r[1] - 1]
            if pnb == nb and lo == plo + g.rb and wins[r[0]][1] == nb:
                r[1] += 1
                continue
        runs.append([q, 1])
    out = []
    for q, count in runs:
        rel, per, _ = wins[q]
        dims = ((tn, to * th * tw, len(wins) * kc * plane, 0),
                (count, per * th * tw, kc * plane, per * kc * tkh * tkw),
                (per, th * tw, 0, kc * tkh * tkw),
                (kc, 0, plane, tkh * tkw),
                (th, tw, sh * iw, 0),
                (tw, 1, sw, 0),
                (tkh, 0, g.dh * iw, tkw),
                (tkw, 0, g.dw, 1))
        out.append((tuple(d for d in dims if d[0] > 1),
                    (rel * th * tw, q * kc * plane, rel * kc * tkh * tkw), count * per))
    return tuple(out)


def _stage_kernels(nests, parts: tuple[int, ...], ib: int, wb: int, ab: int):
    out = ()
    for (dims, (da, di, dw), _), p in zip(nests, parts):
        out += gemm_parts(dims, (ab + da, ib + di, wb + dw), p)
    return out


def _stage_fn(nests, parts: tuple[int, ...], wb: int, ib: int, wbh: int, ab: int):
    """A stage's ``kernels(inp_base, wgt_base, acc_base)`` (bound to its nests and weights)."""
    return _stage_kernels(nests, parts, ib, wbh + wb, ab)


def _reset_fn(blocks: int, per: int, ab: int) -> MicroKernel:
    """A tile's ``reset(acc_base)``: its ``blocks`` x ``per`` result rows."""
    return rows_kernel(ab, blocks, per)


def _input_loads(cfg: Config, g: ConvGeom, e: _Bases, n0: int, tn: int, y0: int, th: int,
                 x0: int, tw: int, blocks: tuple[int, ...], k0: int, tkh: int, k1: int,
                 tkw: int) -> list[Load] | None:
    """The stage's input loads of input blocks ``blocks`` (in their order in the stage, per
    batch group) for kernel rows from ``k0`` and columns from ``k1`` (None when its window is
    padding only)."""
    lim = layout(cfg).limits
    ih, iw = g.in_rows(th, tkh), g.in_width(tw, tkw)
    plane = ih * iw
    kc, c0 = len(blocks), blocks[0]
    if g.subsampled:
        return [Load(MemType.INP, (n * kc + s) * plane,
                     e.x + (((n0 + n) * g.cb + c) * g.h + y0 * g.sh) * g.w + x0 * g.sw,
                     th, iw, g.sh * g.w)
                for n in range(tn) for s, c in enumerate(blocks)]
    r0, q0 = y0 * g.sh - g.pt + k0 * g.dh, x0 * g.sw - g.pl + k1 * g.dw
    yp0, yp1 = max(0, -r0), max(0, r0 + ih - g.h)
    xp0, xp1 = max(0, -q0), max(0, q0 + iw - g.w)
    ys, xs = ih - yp0 - yp1, iw - xp0 - xp1
    if ys <= 0 or xs <= 0:
        return None
    pads = (yp0, yp1, xp0, xp1)
    first = e.x + (n0 * g.cb * g.h + max(r0, 0)) * g.w + max(q0, 0)
    if pads == (0, 0, 0, 0) and ih == g.h and iw == g.w and blocks == tuple(
            range(c0, c0 + kc)):
        # whole planes: every batch group's kc blocks are one contiguous run
        if kc * plane <= lim.max_x_size and g.cb * plane <= lim.max_x_stride:
            return [Load(MemType.INP, 0, first + c0 * plane, tn, kc * plane, g.cb * plane)]
    stride = g.w if ys > 1 else min(g.w, lim.max_x_stride)  # one row: the stride is unused
    return [Load(MemType.INP, (n * kc + s) * plane,
                 first + (n * g.cb + c) * g.h * g.w, ys, xs, stride, pads)
            for n in range(tn) for s, c in enumerate(blocks)]


def _weight_loads(cfg: Config, g: ConvGeom, e: _Bases, o0: int, to: int, c0: int, kc: int,
                  k0: int, tkh: int, k1: int, tkw: int, wbase: int) -> list[Load]:
    lim = layout(cfg).limits
    kk = g.kh * g.kw
    rb = g.rb
    if tkw < g.kw:  # a column range of each kernel row: one LOAD per output and input block
        return [Load(MemType.WGT, wbase + (o * kc + c) * tkh * tkw,
                     e.w + ((o0 + o) * rb + c0 + c) * kk + k0 * g.kw + k1, tkh, tkw, g.kw)
                for o in range(to) for c in range(kc)]
    if tkh == g.kh and (to == 1 or rb * kk <= lim.max_x_stride):
        return [Load(MemType.WGT, wbase, e.w + (o0 * rb + c0) * kk, to, kc * kk, rb * kk)]
    return [Load(MemType.WGT, wbase + o * kc * tkh * g.kw,
                 e.w + ((o0 + o) * rb + c0) * kk + k0 * g.kw, kc, tkh * g.kw, kk)
            for o in range(to)]


def _store_rows(cfg: Config, g: ConvGeom, base: int, n0: int, tn: int, o0: int, to: int,
                y0: int, th: int, x0: int, tw: int) -> list[tuple[int, int, int, int, int]]:
    """(sram, dram, y, x, stride) covering one tile's rows in an output-shaped tensor."""
    lim = layout(cfg).limits
    plane = g.oh * g.ow
    per = th * tw

    def at(n: int, o: int) -> int:
        return base + (((n0 + n) * g.ob + o0 + o) * g.oh + y0) * g.ow + x0

    def ok(y: int, x: int, stride: int) -> bool:
        return y <= lim.max_y_size and x <= lim.max_x_size and stride <= lim.max_x_stride

    if tw == g.ow:
        if th == g.oh and ok(tn, to * plane, g.ob * plane):
            return [(0, at(0, 0), tn, to * plane, g.ob * plane)]
        if ok(to, per, plane):
            return [(n * to * per, at(n, 0), to, per, plane) for n in range(tn)]
        return [((n * to + o) * per, at(n, o), 1, per, per) for n in range(tn)
                for o in range(to)]
    stride = g.ow if th > 1 else min(g.ow, lim.max_x_stride)  # one row: the stride is unused
    return [((n * to + o) * per, at(n, o), th, tw, stride) for n in range(tn)
            for o in range(to)]


def _alu_passes(prog: DeviceEpilogue, tn: int, to: int, per: int, T: int, first: int,
                rows: int, off: int = 0) -> tuple[AluPass, ...]:
    """The epilogue's ALU instructions over a tile's rows (constants from row ``off`` of the
    constant rows: ``T`` blocks a vector, the tile's first block at ``first``)."""
    per_names, uni = const_slots(prog)
    blocks = tn * to
    out = []
    for st in prog.steps:
        dst = rows if st.branch == "residual" else 0
        if st.branch == "combine":
            out.append(AluPass(lambda ab, cb: rows_kernel(ab, blocks, per, ab + rows, per, 1),
                               AluOp.ADD))
        elif isinstance(st.operand, int):
            out.append(AluPass(partial(lambda d, ab, cb: rows_kernel(ab + d, blocks, per), dst),
                               st.opcode, st.operand))
        elif st.operand in prog.uniform:
            k = off + len(per_names) * T + uni.index(st.operand)
            out.append(AluPass(partial(lambda d, k, ab, cb: rows_kernel(ab + d, blocks, per,
                                                                        cb + k), dst, k),
                               st.opcode))
        else:
            k = off + per_names.index(st.operand) * T + first
            out.append(AluPass(partial(lambda d, k, ab, cb: block_kernel(ab + d, tn, to, per,
                                                                         cb + k), dst, k),
                               st.opcode))
    return tuple(out)


def tile_list(cfg: Config, g: ConvGeom, t: ConvTiles, e: _Bases, prog: DeviceEpilogue,
              residual: bool, const_off: int = 0, wgt_off: int = 0) -> list[Tile]:
    """The tiles of the layer for tile shape ``t`` (resolved); its constant rows start at row
    ``const_off`` of the constant area and its resident weights at ``wgt_off`` of each weight
    half (both 0 unless it shares the stream with other layers, :func:`emit_conv2d_group`)."""
    threads = 2 if t.double_buffer else 1
    _, wgt_cap = thread_caps(cfg, threads)
    per_names, uni = const_slots(prog)
    chunks = [(c0, min(t.kc, g.rb - c0), k0, min(t.tkh, g.kh - k0), k1, min(t.tkw, g.kw - k1))
              for c0 in range(0, g.rb, t.kc) for k0 in range(0, g.kh, t.tkh)
              for k1 in range(0, g.kw, t.tkw)]
    wsize = t.to * t.kc * t.tkh * t.tkw
    T = const_blocks(cfg, g, prog, t.to)
    # every weight chunk has its own place
    stationary = wgt_off + len(chunks) * wsize <= wgt_cap
    bus = cfg.mem_bus_bytes
    tiles = []
    # what repeats from tile to tile is built once (weights per output-block group and chunk,
    # loop nests and epilogue passes per tile extent)
    wloads: dict[tuple, list[Load]] = {}
    nests: dict[tuple, tuple] = {}
    passes: dict[tuple, tuple[AluPass, ...]] = {}
    resets: dict[tuple[int, int], partial] = {}
    # output-block groups outermost: their weights stay resident over every batch group and
    # spatial tile
    for o0 in range(0, g.ob, t.to):
        to = min(t.to, g.ob - o0)
        los = [lo for _, _, lo in g.windows(o0, to)]  # the input windows the tiles read
        c0, cn = (0, g.ob) if T == g.ob else (o0, to)
        consts = tuple(
            [Load(MemType.ACC, const_off + k * T, e.consts + k * g.ob + c0, 1, cn, cn)
             for k in range(len(per_names))]
            + [Load(MemType.ACC, const_off + len(per_names) * T + u, e.consts + len(per_names)
                    * g.ob + u, 1, 1, 1) for u in range(len(uni))])
        for n0 in range(0, g.n, t.tn):
            tn = min(t.tn, g.n - n0)
            for y0 in range(0, g.oh, t.th):
                th = min(t.th, g.oh - y0)
                for x0 in range(0, g.ow, t.tw):
                    tw = min(t.tw, g.ow - x0)
                    per = th * tw
                    rows = tn * to * per
                    stages = []
                    for j, (c0, kc, k0, tkh, k1, tkw) in enumerate(chunks):
                        blocks = tuple(lo + c0 + c for lo in los for c in range(kc))
                        inp = _input_loads(cfg, g, e, n0, tn, y0, th, x0, tw, blocks, k0, tkh,
                                           k1, tkw)
                        if inp is None:
                            continue  # this chunk of the kernel sees only padding
                        wb = wgt_off + (j * wsize if stationary else 0)
                        wl = wloads.get((o0, j, wb))
                        if wl is None:
                            wl = wloads[o0, j, wb] = _weight_loads(cfg, g, e, o0, to, c0, kc,
                                                                   k0, tkh, k1, tkw, wb)
                        key = (tn, o0 if g.period < g.ob else 0, to, th, tw, kc, tkh, tkw)
                        nest = nests.get(key)
                        if nest is None:
                            ns = _nests(g, tn, o0, to, th, tw, kc, tkh, tkw)
                            # GEMM instructions per loop nest, by its steps
                            nest = nests[key] = (ns, tuple(
                                gemm_part_count(rows // to * nb * kc * tkh * tkw, len(chunks))
                                for _, _, nb in ns))
                        stages.append(Stage(tuple(inp + wl), partial(_stage_fn, *nest, wb)))
                    stores = _store_rows(cfg, g, e.y, n0, tn, o0, to, y0, th, x0, tw)
                    res = ()
                    if residual:
                        res = tuple(Load(MemType.ACC_8BIT, rows + s, e.res + (d - e.y), y, x,
                                         st)
                                    for s, d, y, x, st in stores)
                    scyc = rows * cfg.out_elem_bytes // bus + 20 * len(stores)
                    first = o0 if T == g.ob else 0
                    alu = passes.get((tn, to, per, first, rows))
                    if alu is None:
                        alu = passes[tn, to, per, first, rows] = _alu_passes(
                            prog, tn, to, per, T, first, rows, const_off)
                    reset = resets.get((tn * to, per))
                    if reset is None:
                        reset = resets[tn * to, per] = partial(_reset_fn, tn * to, per)
                    tiles.append(Tile(
                        rows, rows * (2 if residual else 1), reset, tuple(stages), res, alu,
                        tuple(Store(*s) for s in stores), consts, scyc))
    return tiles


# -- the layer ------------------------------------------------------------------------------


def conv2d_params(cfg: Config, w: np.ndarray, bias: np.ndarray | None,
                  epi: Epilogue | None = None, groups: int = 1) -> LayerParams:
    """The device arrays a convolution reads (packed weights ``w``: when grouped, each output
    block's window of input blocks with zeros off the groups, :func:`group_blocks`; epilogue
    ``consts``) and its epilogue program (bias included)."""
    w = np.asarray(w)
    if groups == 1:
        packed = pack_weights(w, cfg)
    else:
        if w.ndim != 4:
            raise ProgramError(f"conv2d weights must be O x I x KH x KW, not shape {w.shape}")
        c, o = int(w.shape[1]) * groups, int(w.shape[0])
        period, span = group_blocks(cfg, c, o, groups)
        cb, ob = ceil_div(c, cfg.block_in), ceil_div(o, cfg.block_out)
        period, span = period or ob, span or cb
        packed = pack_grouped(w, cfg, groups, [_window_lo(k, period, span, cb)
                                               for k in range(ob)], span)
    return layer_params(cfg, packed, w, bias, epi if epi is not None else Epilogue())


def emit_conv2d(b: CommandBuilder, shape: ConvShape, addrs: LayerAddrs,
                epilogue: DeviceEpilogue | Epilogue | None = None, *,
                tiles: ConvTiles | None = None, double_buffer: bool = True,
                deferred: bool = True) -> LayerStats:
    """Append a convolution to ``b``; tensors are packed at device byte addresses ``addrs``.

    ``epilogue`` is the layer's device program (from :func:`conv2d_params`, bias included) or
    an :class:`Epilogue` (no bias). Starts with a barrier (so it may read what earlier layers
    stored). ``addrs.consts`` must be given exactly when the program has vector operands,
    ``addrs.residual`` exactly when it has a residual branch.
    """
    from tessera.runtime.accel.tiling import plan_conv2d

    cfg = b.cfg
    prog = device_epilogue(epilogue, shape.o)
    g = ConvGeom.of(cfg, shape)
    residual = addrs.residual is not None
    if residual != prog.residual:
        raise ProgramError("conv2d: a residual input must be given exactly when the epilogue "
                           "has a residual branch")
    if (addrs.consts is not None) != bool(prog.vectors):
        raise ProgramError("conv2d: constant rows must be given exactly when the epilogue has "
                           "vector operands")
    if tiles is None:
        tiles = plan_conv2d(cfg, g, prog, double_buffer=double_buffer)
    t = tiles.resolved(g)
    why = fits(cfg, g, t, prog)
    if why is not None:
        raise ProgramError(f"conv2d tiles {t} do not fit {cfg.summary()}: {why}")
    e = _Bases(*conv_bases(cfg, addrs))
    b.barrier()
    start = len(b.insns)
    imms: list[tuple[int, int]] = []  # pass j of a tile's epilogue is step j of prog
    pipe = emit_tiles(b, tile_list(cfg, g, t, e, prog, residual), t.double_buffer,
                      const_rows(prog, const_blocks(cfg, g, prog, t.to)), deferred, t.regions,
                      imms)
    emitted = b.insns[start:]
    return LayerStats("conv2d", insns=len(emitted), macs=shape.macs,
                      hw_macs=g.gemm_steps() * cfg.macs_per_gemm_step,
                      counts=count_kinds(emitted), tiles=tiles, pipeline=pipe, imm_pcs=imms)


def conv2d_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     stride: int | tuple[int, int] = 1, padding=0,
                     epilogue: Epilogue | None = None, residual: np.ndarray | None = None,
                     dilation: int | tuple[int, int] = 1, groups: int = 1) -> np.ndarray:
    """numpy integer reference of exactly the accelerator's arithmetic, NCHW int8 out."""
    from tessera.runtime.accel.epilogue import apply_epilogue

    s = ConvShape.make(np.shape(x), np.shape(w), stride, padding, dilation, groups)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (s.pt, s.pb), (s.pl, s.pr)))
    ekh, ekw = (s.kh - 1) * s.dh + 1, (s.kw - 1) * s.dw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (ekh, ekw), axis=(2, 3))
    win = win[:, :, ::s.sh, ::s.sw][:, :, :s.oh, :s.ow, ::s.dh, ::s.dw]  # N C OH OW KH KW
    g, cg, og = s.groups, s.c // s.groups, s.o // s.groups
    win = win.reshape(s.n, g, cg, s.oh, s.ow, s.kh, s.kw)
    wf = np.asarray(w, np.float64).reshape(g, og, cg, s.kh, s.kw)
    # Exact in float64: every partial sum is below 2**53.
    acc = np.einsum("ngcyxij,gocij->ngoyx", win, wf, optimize=True).reshape(
        s.n, s.o, s.oh, s.ow)
    acc = acc.astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)[None, :, None, None]
    acc = ((acc + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # the accumulator wraps mod 2**32
    return apply_epilogue(acc, epilogue or Epilogue(), residual)


def conv2d(device: Device, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
           stride: int | tuple[int, int] = 1, padding=0, epilogue: Epilogue | None = None,
           double_buffer: bool = True, tiles: ConvTiles | None = None,
           residual: np.ndarray | None = None, dilation: int | tuple[int, int] = 1,
           groups: int = 1) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Run one convolution on ``device``; returns NCHW int8, the layer stats and run stats."""
    cfg = device.config
    epi = epilogue if epilogue is not None else Epilogue()
    s = ConvShape.make(np.shape(x), np.shape(w), stride, padding, dilation, groups)
    ConvGeom.of(cfg, s)  # a grouping the accelerator cannot run fails here
    params = conv2d_params(cfg, w, bias, epi, groups)
    arrays = {"x": pack_activation(x, cfg), **params.arrays}
    if residual is not None:
        arrays["residual"] = pack_activation(residual, cfg)
    out_shape = (arrays["x"].shape[0], arrays["w"].shape[0], s.oh, s.ow, cfg.batch,
                 cfg.block_out)
    if residual is not None and arrays["residual"].shape != out_shape:
        raise ProgramError(f"conv2d residual must have the output's shape "
                           f"{[s.n, s.o, s.oh, s.ow]}, not {list(np.shape(residual))}")
    return _run_layer(device, arrays, out_shape, lambda b, addrs: emit_conv2d(
        b, s, addrs, params.program, tiles=tiles, double_buffer=double_buffer),
        lambda packed: unpack_activation(packed, (s.n, s.o, s.oh, s.ow)))


def _run_layer(device: Device, arrays: dict[str, np.ndarray], out_shape: tuple[int, ...],
               emit, unpack) -> tuple[np.ndarray, LayerStats, RunStats]:
    """Allocate and write ``arrays``, emit with ``emit(builder, addrs)``, run, read, free."""
    bufs = {k: device.alloc(a.nbytes) for k, a in arrays.items()}
    out_buf = device.alloc(int(np.prod(out_shape)))
    try:
        for k, a in arrays.items():
            device.write(bufs[k].addr, a)
        builder = CommandBuilder(device.config, device)
        addrs = LayerAddrs(bufs["x"].addr, bufs["w"].addr, out_buf.addr,
                           *(bufs[k].addr if k in bufs else None for k in ("consts", "residual")))
        stats = emit(builder, addrs)
        run = builder.synchronize()
        packed = device.read_array(out_buf.addr, out_shape, np.int8)
    finally:
        for buf in list(bufs.values()) + [out_buf]:
            device.free(buf)
    return unpack(packed), stats, run
