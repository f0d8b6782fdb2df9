"""Exact int8 matrix products on the host's integer SIMD units, compiled through the JIT.

A kernel here computes ``C[O, M] = W[O, K] @ X[K, M]`` for int8 weights ``W`` and int8 or
uint8 activations ``X`` as int32 lanes that wrap exactly like
:func:`tessera.compiler.reference.wrap32` of the exact sums (integer arithmetic, any order:
exact by construction). Two instruction sets, the first the host has
(:mod:`tessera.runtime.cpu.igemm_ir` for the kernels):

- ``avx512vnni``: ``vpdpbusd`` multiplies unsigned by signed bytes, four per int32 lane. A
  word of the operands is a *quad* of four reduction bytes in one uint32; int8 activations
  are offset by +128 to uint8 and ``128 * sum_k W[o, k]`` is subtracted again (modulo 2**32).
- ``avx2``: ``vpmaddwd`` multiplies int16 pairs, two per int32 lane (each pair sum exact:
  ``|x * w| <= 255 * 128``). A word is a *pair* of two reduction elements widened to int16
  (sign- or zero-extended: no offset, no correction).

Layouts (the reduction order of an exact sum is free), ``G`` elements per word:

- activations ``X4[Q, ldx]`` words (``Q = ceil(K / G)``; a conv's words are ``G`` consecutive
  input channels at one tap, built straight from the padded input: an im2col whose element
  is a word), or *panels* ``X4[B, Q, L * VB]``: each block of ``L * VB`` positions the kernel
  accumulates at once has its whole reduction strip contiguous. AVX2 convs take panels,
  gathered from the padded words by a second kernel (``vpgatherdd``, plain loads where a
  block is one run of an output row): the rows layout puts every reduction word of a strip
  on its own 4 KB page. Measured (Zen 3, one process alternating the layouts, median of 7):
  the whole conv 1.14-1.38x faster on seven VGG-19 / ResNet-18 3x3 shapes, 0.92x on a 1x1
  stride-2 one (0.6 ms);
- weights ``W4[O, ldw]`` words in the same reduction order (a dense layer's int8 rows as they
  are on VNNI when K is a multiple of 4; else packed a block of rows at a time).

Used by :func:`tessera.compiler.reference.int_conv2d_cnhw` / ``int_matmul`` when int32 lanes
are asked for (bias correction). Hosts with neither instruction set (or ``TESSERA_IGEMM=0`` in
the environment, or inside :func:`disabled`) keep the float32 BLAS path; ``TESSERA_IGEMM=avx2``
takes the AVX2 kernel even where VNNI is there. :data:`stats` counts which path ran.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tessera.errors import KernelError
from tessera.runtime.cpu import igemm_ir
from tessera.runtime.cpu.igemm_ir import ISAS, LANES
from tessera.runtime.cpu.jit import IrKernels
from tessera.runtime.scratch import scratch as _scratch

__all__ = ["available", "host_isas", "disabled", "conv2d_cnhw", "matmul", "gemm", "stats",
           "IgemmStats", "supports_conv", "supports_matmul", "ConvWeights",
           "pack_conv_weights", "ISAS"]

log = logging.getLogger(__name__)

# generator versions: part of each kernel's cache key, one per instruction set
_VERSIONS = {"avx512vnni": "igemm-vnni-2", "avx2": "igemm-avx2-2"}
_FEATURES = {"avx512vnni": ("avx512f", "avx512bw", "avx512vnni"), "avx2": ("avx2",)}
_PER_WORD = {"avx512vnni": 4, "avx2": 2}  # reduction elements in one 32-bit word
_ELEMENT = {"avx512vnni": np.uint8, "avx2": np.int16}  # how an activation sits in its word
_WEIGHT_BLOCK = 1 << 21  # bytes of weight words a dense layer packs at a time
_Q_BLOCK = {"avx512vnni": None, "avx2": 512}  # reduction words per kernel call (None: all)
_Q_SPLIT = 1 << 20  # bytes of x4 (rows) from which the reduction is split into those blocks
_PANEL_PREFETCH = 8  # reduction steps ahead the AVX2 kernel prefetches a panel
_local = threading.local()
_host: tuple[str, ...] | None = None
_host_lock = threading.Lock()


@dataclass
class IgemmStats:
    """Which path the exact int8 products took (process-wide)."""

    vnni: int = 0  # products computed by the AVX-512 VNNI kernel
    avx2: int = 0  # products computed by the AVX2 kernel
    fallback: int = 0  # int32-lane products that took the float32 BLAS path instead
    last_fallback: str = ""  # why the last fallback happened


stats = IgemmStats()


def host_isas() -> tuple[str, ...]:
    """The kernels' instruction sets the host CPU has (llvmlite's host features), preferred
    first: ``avx512vnni`` needs ``avx512f``, ``avx512bw`` and ``avx512vnni``, ``avx2``
    ``avx2``."""
    global _host
    with _host_lock:
        if _host is None:
            import llvmlite.binding as llvm
            feats = llvm.get_host_cpu_features()
            _host = tuple(isa for isa in ISAS
                          if all(feats.get(f, False) for f in _FEATURES[isa]))
        return _host


def available() -> str | None:
    """The instruction set the kernel runs on here (``"avx512vnni"`` or ``"avx2"``: the first
    of :func:`host_isas`, or the one ``TESSERA_IGEMM`` names if the host has it), or None:
    no such instruction set, ``TESSERA_IGEMM=0``, or inside a :func:`disabled` block of this
    thread. Any other ``TESSERA_IGEMM`` value (``1`` or empty: the host's first) is a
    :class:`~tessera.errors.KernelError`."""
    if getattr(_local, "off", 0):
        return None
    want = os.environ.get("TESSERA_IGEMM", "1")
    if want == "0":
        return None
    if want not in ("1", "", *ISAS):
        raise KernelError(f"TESSERA_IGEMM={want!r}: expected 0 (the float32 BLAS path), 1 "
                          f"(the host's first int8 kernel) or one of {', '.join(ISAS)}")
    host = host_isas()
    if want in ISAS:
        return want if want in host else None
    return host[0] if host else None


@contextmanager
def disabled() -> Iterator[None]:
    """Within the block (this thread), :func:`available` is None: the fallback paths run."""
    _local.off = getattr(_local, "off", 0) + 1
    try:
        yield
    finally:
        _local.off -= 1


def note_fallback(reason: str) -> None:
    """Count (and debug-log) an int32-lane product that did not use the kernel."""
    stats.fallback += 1
    stats.last_fallback = reason
    log.debug("int8 product on the float32 BLAS path: %s", reason)


def _count(isa: str) -> None:
    if isa == "avx512vnni":
        stats.vnni += 1
    else:
        stats.avx2 += 1


def _isa_or_raise(isa: str | None, what: str) -> str:
    isa = available() if isa is None else isa
    if isa is None:
        raise KernelError(f"{what}: {_NO_KERNEL}")
    if isa not in ISAS:
        raise KernelError(f"{what}: isa must be one of {ISAS}, not {isa!r}")
    return isa


_NO_KERNEL = "no int8 kernel on this host (needs AVX-512 VNNI or AVX2) or disabled"

# -- the kernel -----------------------------------------------------------------------------------

_kernels = IrKernels()


def _kernel(isa: str, rb: int, vb: int):
    # a cold compile builds each blocking once: ~25 ms (~60 with the optimisation pipeline)
    desc = f"{_VERSIONS[isa]} rb={rb} vb={vb}"  # the versions differ per instruction set
    return _kernels.get((isa, rb, vb), lambda: (igemm_ir.ir(isa, rb, vb),
                                                igemm_ir.symbol(isa, rb, vb), 5, desc))


def _panel_kernel():
    return _kernels.get("panels", lambda: (igemm_ir.panels_ir(), igemm_ir.PANEL_SYMBOL, 5,
                                           "igemm-avx2-panels-2"))


def _blocking(m: int, isa: str) -> tuple[int, int]:
    """(rows, vectors) of the register block for ``m`` output positions; each blocking is
    one more kernel to build in a cold compile."""
    if isa == "avx512vnni":
        if m <= LANES[isa]:  # dense layers over a few images: 16 weight rows, one vector
            return 16, 1
        return 6, 4  # 24 of the 32 zmm registers accumulate
    # 16 ymm registers: 10 accumulators, 2 activation vectors, a weight broadcast, a product.
    # Measured on seven VGG / ResNet conv shapes (Zen 3): 5 x 2 at 28-37 GMAC/s; 6 x 2 (all
    # 16 registers) 34-36 on three, 16-21 on the other four; 4 x 3 spills. Dense layers over
    # a few images: 8 rows of one vector.
    return (8, 1) if m <= LANES[isa] else (5, 2)


def _cols_for(m: int, isa: str) -> int:
    """The row length ``x4`` needs for ``m`` positions (the kernel reads whole blocks)."""
    cols = LANES[isa] * _blocking(m, isa)[1]
    return -(-m // cols) * cols


def _ldx(m: int, isa: str) -> int:
    """The row length ``x4`` is given: :func:`_cols_for`, plus a cache line where rows would
    be a multiple of 1 KB apart (a block's strip of rows would fall in at most 4 of the 64 L1
    sets; rows 4 KB apart all in one)."""
    cols = _cols_for(m, isa)
    return cols + 16 if cols % 256 == 0 else cols


def _geometry(x4: np.ndarray, m: int, isa: str) -> tuple[int, int, int, int]:
    """(Q, words between reduction steps, words between blocks of positions, prefetch
    distance in words) of ``x4`` in either layout (:func:`gemm`)."""
    cols = LANES[isa] * _blocking(m, isa)[1]
    if x4.ndim == 3:  # panels: a block's strip is contiguous, read in order
        return x4.shape[1], cols, x4.shape[1] * cols, _PANEL_PREFETCH * cols
    return x4.shape[0], x4.shape[1], cols, 2 * cols  # rows: two blocks ahead in the row


def _check(x4: np.ndarray, m: int, w4: np.ndarray, corr: np.ndarray, out: np.ndarray,
           isa: str) -> None:
    o = w4.shape[0]
    if x4.dtype != np.uint32 or w4.dtype != np.uint32 or corr.dtype != np.int32 \
            or out.dtype != np.int32:
        raise KernelError(f"igemm: operands must be uint32/uint32/int32/int32, not "
                          f"{x4.dtype}/{w4.dtype}/{corr.dtype}/{out.dtype}")
    if x4.ndim == 3:
        cols = LANES[isa] * _blocking(m, isa)[1]
        q = x4.shape[1]
        fits = x4.shape[2] == cols and x4.shape[0] * cols >= m
    else:
        q = x4.shape[0] if x4.ndim == 2 else 0
        fits = x4.ndim == 2 and x4.shape[1] >= _cols_for(m, isa)
    if not fits or w4.shape[1] < q or corr.shape != (o,) \
            or out.shape[0] != o or out.shape[1] < m or q < 1 or m < 1 or o < 1:
        raise KernelError(f"igemm: inconsistent shapes x4 {x4.shape} (m={m}), w4 {w4.shape}, "
                          f"corr {corr.shape}, out {out.shape}")
    for name, a in (("x4", x4), ("w4", w4), ("corr", corr), ("out", out)):
        if not a.flags.c_contiguous:
            raise KernelError(f"igemm: {name} must be C-contiguous, not strides {a.strides}")


def _launch(x4: np.ndarray, m: int, w4: np.ndarray, corr: np.ndarray, out: np.ndarray,
            isa: str) -> None:
    """The kernel on checked operands; on AVX2 a block of ``_Q_BLOCK`` reduction words at a
    time when ``x4`` is larger than ``_Q_SPLIT`` (the blocks' int32 lanes are added, wrapping
    as the accumulators do): with 4 KB pages (as in a compile:
    :func:`~tessera.runtime.scratch.small_pages`) a whole reduction's strip of a large ``x4``
    and its weights overflow the TLB (VGG-19's conv4 at 12 GMAC/s instead of 32)."""
    fn = _kernel(isa, *_blocking(m, isa))
    q, ldx, ldb, pfd = _geometry(x4, m, isa)
    o, ldw = w4.shape
    ldo = out.shape[1]
    qb = _Q_BLOCK[isa] if _Q_BLOCK[isa] and x4.ndim == 2 and x4.nbytes > _Q_SPLIT else q
    zero = np.zeros(o, np.int32) if qb < q else corr
    part = _scratch("igemm_part", (o, ldo), np.int32) if qb < q else out
    for q0 in range(0, q, qb):
        dims = np.array([m, ldx, o, min(qb, q - q0), ldw, ldo, ldb, pfd], np.int64)
        dst = out if q0 == 0 else part
        fn.call_pointers(x4.ctypes.data + 4 * q0 * ldx, w4.ctypes.data + 4 * q0,
                         (corr if q0 == 0 else zero).ctypes.data, dst.ctypes.data,
                         dims.ctypes.data)
        if q0:
            np.add(out[:, :m], part[:, :m], out=out[:, :m])


def gemm(x4: np.ndarray, m: int, w4: np.ndarray, corr: np.ndarray, out: np.ndarray,
         isa: str | None = None) -> None:
    """``out[o, p] = corr[o] + sum_q dot(x4[q, p], w4[o, q])`` (int32 lanes, wrapping) for
    ``p < m``, on ``isa``'s words (default :func:`available`): VNNI quads of uint8
    activations and int8 weights, AVX2 pairs of int16. ``x4`` is (Q, ldx) uint32 rows with
    ``ldx >= _cols_for(m, isa)``, or (B, Q, cols) panels (``x4[b, q, j]`` is position
    ``b * cols + j``; ``cols`` the blocking's ``L * VB``, ``B * cols >= m``), ``w4`` (O, ldw)
    uint32 (the first Q words of each row are used), ``corr`` (O,) int32, ``out`` (O, ldo)
    int32 with ``ldo >= m``; all C-contiguous."""
    isa = _isa_or_raise(isa, "igemm")
    _check(x4, m, w4, corr, out, isa)
    _launch(x4, m, w4, corr, out, isa)
    _count(isa)


# -- products of the compiler's layers ------------------------------------------------------------


def supports_conv(x: np.ndarray, w: np.ndarray, groups: int) -> str | None:
    """None if :func:`conv2d_cnhw` takes these operands, else why not."""
    if available() is None:
        return _NO_KERNEL
    if x.dtype not in (np.int8, np.uint8) or w.dtype != np.int8:
        return f"operands {x.dtype} x {w.dtype} (the kernel takes int8/uint8 x int8)"
    if groups != 1:
        return f"groups={groups}"
    return None


def supports_matmul(a: np.ndarray, w: np.ndarray) -> str | None:
    """None if :func:`matmul` takes these operands, else why not."""
    if available() is None:
        return _NO_KERNEL
    if a.dtype not in (np.int8, np.uint8) or w.dtype != np.int8:
        return f"operands {a.dtype} x {w.dtype} (the kernel takes int8/uint8 x int8)"
    return None


def _offset(isa: str, x_dtype) -> bool:
    """Whether activations of ``x_dtype`` are offset by +128 (int8 on VNNI's uint8 side)."""
    return isa == "avx512vnni" and np.dtype(x_dtype) == np.int8


def _words(x: np.ndarray, pads: Sequence[int], isa: str) -> np.ndarray:
    """NCHW int8/uint8 ``x`` padded and as uint32 words of ``G`` consecutive channels, (N,
    ceil(C/G), H', W'): VNNI quads of bytes (int8 values offset to uint8, the padding the
    offset zero), AVX2 pairs of int16; the channels past C are left unset (their weights are
    zero)."""
    n, c, h, wd = x.shape
    pt, pl, pb, pr = pads
    g = _PER_WORD[isa]
    cg = -(-c // g)
    hp, wp = h + pt + pb, wd + pl + pr
    buf = _scratch("igemm_quads", (n, cg, hp, wp, g), _ELEMENT[isa])
    offset = _offset(isa, x.dtype)
    fill = 128 if offset else 0
    if pt:
        buf[:, :, :pt] = fill
    if pb:
        buf[:, :, pt + h:] = fill
    if pl:
        buf[:, :, pt: pt + h, :pl] = fill
    if pr:
        buf[:, :, pt: pt + h, pl + wd:] = fill
    src = x.view(np.uint8) if g == 4 else x  # (int16 elements: numpy widens int8 / uint8)
    for c4 in range(min(g, c)):
        part = src[:, c4::g]
        dst = buf[:, : part.shape[1], pt: pt + h, pl: pl + wd, c4]
        if offset:
            np.bitwise_xor(part, np.uint8(0x80), out=dst)
        else:
            dst[...] = part
    return buf.view(np.uint32).reshape(n, cg, hp, wp)


@dataclass(frozen=True)
class ConvWeights:
    """OIHW int8 weights packed for :func:`conv2d_cnhw` (:func:`pack_conv_weights`)."""

    shape: tuple[int, int, int, int]  # the OIHW weights'
    signed: bool  # packed for int8 activations (on VNNI: with the -128 * sum(w) correction)
    w4: np.ndarray  # (O, Q) uint32 words
    corr: np.ndarray  # (O,) int32
    isa: str  # the kernel whose words these are (an instruction set of ISAS)


def pack_conv_weights(w: np.ndarray, x_dtype, isa: str | None = None) -> ConvWeights:
    """OIHW int8 ``w`` as (O, Q) uint32 words of ``isa`` (default :func:`available`) in the
    activations' reduction order (channel word, tap, channel in the word; zero past C) and
    the int32 correction (VNNI with int8 activations: ``-128 * sum(w[o])``; else zero), for
    activations of ``x_dtype``. A layer run over several batches packs its weights once."""
    isa = _isa_or_raise(isa, "igemm conv")
    if w.dtype != np.int8 or w.ndim != 4:
        raise KernelError(f"igemm conv: weights must be 4-D int8, not {w.ndim}-D {w.dtype}")
    signed = np.dtype(x_dtype) == np.int8
    g = _PER_WORD[isa]
    o, c, kh, kw = w.shape
    cg = -(-c // g)
    w4 = np.empty((o, cg, kh, kw, g), np.int8 if g == 4 else np.int16)
    if c % g:
        w4[:, -1] = 0
    for c4 in range(min(g, c)):
        part = w[:, c4::g]
        w4[:, : part.shape[1], :, :, c4] = part
    corr = _correction(w.reshape(o, -1).sum(axis=1, dtype=np.int64)
                       if _offset(isa, x_dtype) else None, o)
    return ConvWeights(tuple(w.shape), signed, w4.view(np.uint32).reshape(o, cg * kh * kw),
                       corr, isa)


def _correction(wsum: np.ndarray | None, o: int) -> np.ndarray:
    if wsum is None:
        return np.zeros(o, np.int32)
    v = (-128 * wsum + (1 << 31)) & 0xFFFFFFFF
    return (v - (1 << 31)).astype(np.int32)


def conv2d_cnhw(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
                dilations=(1, 1), packed: ConvWeights | None = None) -> np.ndarray:
    """The exact products of an ungrouped conv of NCHW int8/uint8 ``x`` with OIHW int8 ``w``
    as int32 lanes (wrapped mod 2**32), channel-major (O, N, OH, OW). ``packed`` may give
    :func:`pack_conv_weights` of ``w`` for ``x``'s dtype."""
    why = supports_conv(x, w, 1)
    if why is not None:
        raise KernelError(f"igemm conv: {why}")
    isa = available()
    n, c, h, wd = x.shape
    o, cw, kh, kw = w.shape
    if cw != c:
        raise KernelError(f"igemm conv: weights have {cw} input channels, input {c}")
    if packed is not None and (packed.shape != tuple(w.shape) or packed.isa != isa
                               or packed.signed != (x.dtype == np.int8)):
        raise KernelError(f"igemm conv: weights packed for {packed.shape} "
                          f"{'int8' if packed.signed else 'uint8'} activations on "
                          f"{packed.isa}, not {tuple(w.shape)} {x.dtype} on {isa}")
    (sh, sw), (dh, dw) = strides, dilations
    xq = _words(np.ascontiguousarray(x), pads, isa)
    hp, wp = xq.shape[2:]
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise KernelError(f"igemm conv: empty output {oh}x{ow}")
    cq = xq.shape[1]
    m = n * oh * ow
    q = cq * kh * kw
    if packed is None:
        packed = pack_conv_weights(w, x.dtype, isa)
    out = np.empty((o, m), np.int32)
    cols = LANES[isa] * _blocking(m, isa)[1]
    if isa == "avx2" and cols == 16 and xq.size < 1 << 31:
        # panels: each block of 16 positions' strip contiguous (1.3-1.7x the kernel's speed
        # on VGG / ResNet convs: no TLB miss per reduction word), gathered from the words
        nb = -(-m // cols)
        base = np.zeros(nb * cols, np.int32)
        hw = hp * wp
        base[:m] = (np.arange(n, dtype=np.int32)[:, None, None] * (cq * hw)
                    + (np.arange(oh, dtype=np.int32) * (sh * wp))[:, None]
                    + np.arange(ow, dtype=np.int32) * sw).reshape(-1)
        off = (np.arange(cq, dtype=np.int32)[:, None, None] * hw
               + (np.arange(kh, dtype=np.int32) * (dh * wp))[:, None]
               + np.arange(kw, dtype=np.int32) * dw).reshape(-1)
        panels = _scratch("igemm_panels", (nb, q, cols), np.uint32)
        _panel_kernel().call_pointers(xq.ctypes.data, base.ctypes.data, off.ctypes.data,
                                      panels.ctypes.data,
                                      np.array([nb, q], np.int64).ctypes.data)
        gemm(panels, m, packed.w4, packed.corr, out, isa)
        return out.reshape(o, n, oh, ow)
    ldx = _ldx(m, isa)
    x4 = _scratch("igemm_cols", (q, ldx), np.uint32)
    s = xq.strides
    win = as_strided(xq, (n, cq, oh, ow, kh, kw),
                     (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)
    e = x4.itemsize
    dst = as_strided(x4, (cq, kh, kw, n, oh, ow),
                     (kh * kw * ldx * e, kw * ldx * e, ldx * e, oh * ow * e, ow * e, e))
    dst[...] = win.transpose(1, 4, 5, 0, 2, 3)
    gemm(x4, m, packed.w4, packed.corr, out, isa)
    return out.reshape(o, n, oh, ow)


def matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``a @ w.T`` of (M, K) int8/uint8 ``a`` and (O, K) int8 ``w`` as (M, O) int32
    lanes (wrapped mod 2**32). On VNNI ``w`` is read in place when it is C-contiguous with K
    a multiple of 4 (the weight sums the int8 offset needs come out of the same pass: a
    column of ones among the activations); else its words are packed a block of rows at a
    time (``_WEIGHT_BLOCK`` bytes: a large dense layer's weights are never copied whole)."""
    why = supports_matmul(a, w)
    if why is not None:
        raise KernelError(f"igemm matmul: {why}")
    isa = available()
    mrows, k = a.shape
    o, kw = w.shape
    if kw != k:
        raise KernelError(f"igemm matmul: weights have {kw} inputs, activations {k}")
    offset = _offset(isa, a.dtype)
    g = _PER_WORD[isa]
    q = -(-k // g)
    elem = _ELEMENT[isa]
    ap = np.zeros((mrows, q * g), elem) if k % g else np.empty((mrows, k), elem)
    if offset:
        np.bitwise_xor(a.view(np.uint8), np.uint8(0x80), out=ap[:, :k])
    else:
        ap[:, :k] = a
    m = mrows + 1 if offset else mrows  # int8 on VNNI: a column of ones gives sum(w[o])
    x4 = _scratch("igemm_cols", (q, _ldx(m, isa)), np.uint32)
    x4[:, :mrows] = ap.view(np.uint32).T
    if offset:
        x4[:, mrows] = 0x01010101
    out = np.empty((o, m), np.int32)
    in_place = g == 4 and k % 4 == 0 and w.flags.c_contiguous
    rb = _blocking(m, isa)[0]
    rows = o if in_place else max(rb, _WEIGHT_BLOCK // (4 * q) // rb * rb)
    wdt = np.int8 if g == 4 else np.int16
    for r0 in range(0, o, rows):
        r1 = min(o, r0 + rows)
        if in_place:
            w4 = w[r0:r1].view(np.uint32)
        else:
            wp = _scratch("igemm_weights", (r1 - r0, q * g), wdt)
            wp[:, k:] = 0
            wp[:, :k] = w[r0:r1]
            w4 = wp.view(np.uint32)
        part = out[r0:r1]
        corr = np.zeros(r1 - r0, np.int32)
        _check(x4, m, w4, corr, part, isa)
        _launch(x4, m, w4, corr, part, isa)
    _count(isa)
    res = np.empty((mrows, o), np.int32)
    if offset:
        corr = out[:, mrows] * np.int32(-128)  # wraps mod 2**32, as the lanes do
        np.add(out[:, :mrows].T, corr[None, :], out=res)
    else:
        res[...] = out.T
    return res
