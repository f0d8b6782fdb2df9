"""Exact int8 matrix products on AVX-512 VNNI (``vpdpbusd``), compiled through the JIT.

``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of four
products to one of 16 int32 lanes, wrapping modulo 2**32. A kernel here computes
``C[O, M] = W[O, K] @ X[K, M]`` for int8 weights ``W`` and int8 or uint8 activations ``X`` as
int32 lanes that wrap exactly like :func:`tessera.compiler.reference.wrap32` of the exact sums:
int8 activations are offset by +128 to uint8 and ``128 * sum_k W[o, k]`` is subtracted again,
all modulo 2**32, so the result is exact by construction (integer arithmetic, any order).

Layouts (the reduction order of an exact sum is free):

- activations packed as quads of four reduction bytes in one uint32, ``X4[Q, ldx]``
  (``Q = ceil(K / 4)``; a conv's quads are four consecutive input channels at one tap, built
  straight from the padded input: an im2col whose element is a uint32 quad);
- weights ``W4[O, ldw]`` uint32 quads in the same reduction order (a dense layer's int8 rows
  as they are when K is a multiple of 4: no copy of a large weight matrix).

The kernel is register blocked: ``RB`` output rows (their weight quads broadcast from memory)
by ``VB`` vectors of 16 positions, ``RB * VB`` zmm accumulators per quad step. It has one
generic entry point per blocking, its sizes passed in an int64 array, so it is compiled once
(and then loaded from the engine's disk cache).

Used by :func:`tessera.compiler.reference.int_conv2d_cnhw` / ``int_matmul`` when int32 lanes
are asked for (bias correction); hosts without ``avx512vnni`` (or with ``TESSERA_IGEMM=0`` in
the environment, or inside :func:`disabled`) keep the float32 BLAS path. :data:`stats` counts
which path ran.
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
from tessera.runtime.cpu.jit import IrKernels
from tessera.runtime.scratch import scratch as _scratch

__all__ = ["available", "disabled", "conv2d_cnhw", "matmul", "gemm", "stats", "IgemmStats",
           "supports_conv", "supports_matmul", "ConvWeights",
           "pack_conv_weights"]

log = logging.getLogger(__name__)

_VERSION = "igemm-vnni-1"
_LANES = 16
_local = threading.local()
_avail: bool | None = None
_avail_lock = threading.Lock()


@dataclass
class IgemmStats:
    """Which path the exact int8 products took (process-wide)."""

    vnni: int = 0  # products computed by the VNNI kernel
    fallback: int = 0  # int32-lane products that took the float32 BLAS path instead
    last_fallback: str = ""  # why the last fallback happened


stats = IgemmStats()


def available() -> bool:
    """Whether the VNNI kernel may run here: the host CPU has ``avx512f``, ``avx512bw`` and
    ``avx512vnni`` (llvmlite's host features), ``TESSERA_IGEMM`` is not ``0`` and no
    :func:`disabled` block is active in this thread."""
    global _avail
    if getattr(_local, "off", 0) or os.environ.get("TESSERA_IGEMM", "1") == "0":
        return False
    with _avail_lock:
        if _avail is None:
            import llvmlite.binding as llvm
            feats = llvm.get_host_cpu_features()
            _avail = all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))
        return _avail


@contextmanager
def disabled() -> Iterator[None]:
    """Within the block (this thread), :func:`available` is False: the fallback paths run."""
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


# -- the kernel -----------------------------------------------------------------------------------


def _splat(tmp: str, dst: str, scalar: str) -> list[str]:
    """IR lines broadcasting i32 ``scalar`` to all 16 lanes of ``%dst`` (via ``%tmp``)."""
    v = "<16 x i32>"
    return [f"  %{tmp} = insertelement {v} poison, i32 {scalar}, i32 0",
            f"  %{dst} = shufflevector {v} %{tmp}, {v} poison, {v} zeroinitializer"]


def _ir(rb: int, vb: int) -> str:
    """LLVM IR of ``igemm_r{rb}v{vb}(x4, w4, corr, out, dims)``: dims = (M, ldx, O, Q, ldw,
    ldo) as int64. ``out[o, m] = corr[o] + sum_q dot4(u8 x4[q, m], s8 w4[o, q])`` for
    ``o < O, m < M`` (int32, wrapping); reads ``x4[q, :ceil(M / (16 vb)) * 16 vb]``."""
    cols = _LANES * vb
    name = f"igemm_r{rb}v{vb}"
    v = "<16 x i32>"
    lines = [
        f"declare {v} @llvm.x86.avx512.vpdpbusd.512({v}, {v}, {v})",
        f"declare void @llvm.masked.store.v16i32.p0({v}, ptr, i32 immarg, <16 x i1>)",
        f"define void @{name}(ptr noalias %x, ptr noalias %w, ptr noalias %corr, "
        "ptr noalias %out, ptr noalias %dims) {",
        "entry:",
    ]
    for k, d in enumerate(("m", "ldx", "o", "q", "ldw", "ldo")):
        lines += [f"  %pd{k} = getelementptr i64, ptr %dims, i64 {k}",
                  f"  %{d} = load i64, ptr %pd{k}"]
    lines += [
        f"  %m1 = add i64 %m, {cols - 1}",
        f"  %nmb = udiv i64 %m1, {cols}",
        f"  %o1 = add i64 %o, {rb - 1}",
        f"  %nob = udiv i64 %o1, {rb}",
        "  %olast = sub i64 %o, 1",
        "  %mt = trunc i64 %m to i32",
        *_splat("msplat0", "msplat", "%mt"),
        "  br label %mb_head",
        "mb_head:",
        "  %mb = phi i64 [0, %entry], [%mb_next, %mb_tail]",
        f"  %m0 = mul i64 %mb, {cols}",
        "  br label %ob_head",
        "ob_head:",
        "  %ob = phi i64 [0, %mb_head], [%ob_next, %ob_tail]",
        f"  %o0 = mul i64 %ob, {rb}",
    ]
    for i in range(rb):
        lines += [f"  %ri{i} = add i64 %o0, {i}",
                  f"  %rc{i} = icmp ult i64 %ri{i}, %o",
                  f"  %r{i} = select i1 %rc{i}, i64 %ri{i}, i64 %olast",
                  f"  %wo{i} = mul i64 %r{i}, %ldw",
                  f"  %wrow{i} = getelementptr i32, ptr %w, i64 %wo{i}"]
    lines += ["  br label %q_loop", "q_loop:",
              "  %qi = phi i64 [0, %ob_head], [%q_next, %q_loop]"]
    for i in range(rb):
        for j in range(vb):
            lines.append(f"  %a{i}_{j} = phi {v} [zeroinitializer, %ob_head], "
                         f"[%n{i}_{j}, %q_loop]")
    lines += ["  %xq = mul i64 %qi, %ldx", "  %xm = add i64 %xq, %m0"]
    for j in range(vb):
        lines += [f"  %xo{j} = add i64 %xm, {_LANES * j}",
                  f"  %xp{j} = getelementptr i32, ptr %x, i64 %xo{j}",
                  f"  %xv{j} = load {v}, ptr %xp{j}, align 4"]
    for i in range(rb):
        lines += [f"  %wp{i} = getelementptr i32, ptr %wrow{i}, i64 %qi",
                  f"  %ws{i} = load i32, ptr %wp{i}, align 4",
                  *_splat(f"wbi{i}", f"wb{i}", f"%ws{i}")]
        for j in range(vb):
            lines.append(f"  %n{i}_{j} = call {v} @llvm.x86.avx512.vpdpbusd.512("
                         f"{v} %a{i}_{j}, {v} %xv{j}, {v} %wb{i})")
    lines += ["  %q_next = add i64 %qi, 1",
              "  %q_more = icmp ult i64 %q_next, %q",
              "  br i1 %q_more, label %q_loop, label %store",
              "store:"]
    lanes = ", ".join(f"i32 {k}" for k in range(_LANES))
    for j in range(vb):
        lines += [f"  %mj{j} = add i64 %m0, {_LANES * j}",
                  f"  %mjt{j} = trunc i64 %mj{j} to i32",
                  *_splat(f"mji{j}", f"mjs{j}", f"%mjt{j}"),
                  f"  %idx{j} = add {v} %mjs{j}, <{lanes}>",
                  f"  %mk{j} = icmp slt {v} %idx{j}, %msplat"]
    for i in range(rb):
        lines += [f"  %cp{i} = getelementptr i32, ptr %corr, i64 %r{i}",
                  f"  %cs{i} = load i32, ptr %cp{i}",
                  *_splat(f"cbi{i}", f"cb{i}", f"%cs{i}"),
                  f"  %oo{i} = mul i64 %r{i}, %ldo",
                  f"  %orow{i} = getelementptr i32, ptr %out, i64 %oo{i}"]
        for j in range(vb):
            lines += [f"  %s{i}_{j} = add {v} %n{i}_{j}, %cb{i}",
                      f"  %sm{i}_{j} = select i1 %rc{i}, <16 x i1> %mk{j}, "
                      "<16 x i1> zeroinitializer",
                      f"  %op{i}_{j} = getelementptr i32, ptr %orow{i}, i64 %mj{j}",
                      f"  call void @llvm.masked.store.v16i32.p0({v} %s{i}_{j}, "
                      f"ptr %op{i}_{j}, i32 4, <16 x i1> %sm{i}_{j})"]
    lines += ["  br label %ob_tail",
              "ob_tail:",
              "  %ob_next = add i64 %ob, 1",
              "  %ob_more = icmp ult i64 %ob_next, %nob",
              "  br i1 %ob_more, label %ob_head, label %mb_tail",
              "mb_tail:",
              "  %mb_next = add i64 %mb, 1",
              "  %mb_more = icmp ult i64 %mb_next, %nmb",
              "  br i1 %mb_more, label %mb_head, label %done",
              "done:",
              "  ret void",
              "}"]
    return "\n".join(lines) + "\n"


_kernels = IrKernels()


def _kernel(rb: int, vb: int):
    # a cold compile builds each blocking once: ~25 ms (~60 with the optimisation pipeline)
    return _kernels.get((rb, vb), lambda: (_ir(rb, vb), f"igemm_r{rb}v{vb}", 5,
                                           f"{_VERSION} rb={rb} vb={vb}"))


def _blocking(m: int) -> tuple[int, int]:
    """(rows, vectors) of the register block for ``m`` output positions."""
    if m <= _LANES:  # dense layers over a few images: 16 weight rows, one vector
        return 16, 1
    return 6, 4  # 24 accumulators; each blocking is one more kernel to build in a cold compile


def _cols_for(m: int) -> int:
    """The row length ``x4`` needs for ``m`` positions (the kernel reads whole blocks)."""
    cols = _LANES * _blocking(m)[1]
    return -(-m // cols) * cols


def gemm(x4: np.ndarray, m: int, w4: np.ndarray, corr: np.ndarray, out: np.ndarray) -> None:
    """``out[o, p] = corr[o] + sum_q dot4(uint8 x4[q, p], int8 w4[o, q])`` (int32 lanes,
    wrapping) for ``p < m``. ``x4`` is (Q, ldx) uint32 with ``ldx >= _cols_for(m)``, ``w4``
    (O, ldw) uint32 (the first Q quads of each row are used), ``corr`` (O,) int32, ``out``
    (O, ldo) int32 with ``ldo >= m``; all C-contiguous rows."""
    q, ldx = x4.shape
    o = w4.shape[0]
    if x4.dtype != np.uint32 or w4.dtype != np.uint32 or corr.dtype != np.int32 \
            or out.dtype != np.int32:
        raise KernelError(f"igemm: operands must be uint32/uint32/int32/int32, not "
                          f"{x4.dtype}/{w4.dtype}/{corr.dtype}/{out.dtype}")
    if ldx < _cols_for(m) or w4.shape[1] < q or corr.shape != (o,) or out.shape[0] != o \
            or out.shape[1] < m or q < 1 or m < 1 or o < 1:
        raise KernelError(f"igemm: inconsistent shapes x4 {x4.shape} (m={m}), w4 {w4.shape}, "
                          f"corr {corr.shape}, out {out.shape}")
    for name, a in (("x4", x4), ("w4", w4), ("corr", corr), ("out", out)):
        if a.strides[-1] != 4 or (a.ndim == 2 and a.strides[0] != 4 * a.shape[1]):
            raise KernelError(f"igemm: {name} must be C-contiguous, not strides {a.strides}")
    rb, vb = _blocking(m)
    dims = np.array([m, ldx, o, q, w4.shape[1], out.shape[1]], np.int64)
    _kernel(rb, vb).call_pointers(x4.ctypes.data, w4.ctypes.data, corr.ctypes.data,
                                  out.ctypes.data, dims.ctypes.data)
    stats.vnni += 1


# -- products of the compiler's layers ------------------------------------------------------------


def supports_conv(x: np.ndarray, w: np.ndarray, groups: int) -> str | None:
    """None if :func:`conv2d_cnhw` takes these operands, else why not."""
    if not available():
        return "no AVX-512 VNNI on this host (or disabled)"
    if x.dtype not in (np.int8, np.uint8) or w.dtype != np.int8:
        return f"operands {x.dtype} x {w.dtype} (the kernel takes int8/uint8 x int8)"
    if groups != 1:
        return f"groups={groups}"
    return None


def supports_matmul(a: np.ndarray, w: np.ndarray) -> str | None:
    """None if :func:`matmul` takes these operands, else why not."""
    if not available():
        return "no AVX-512 VNNI on this host (or disabled)"
    if a.dtype not in (np.int8, np.uint8) or w.dtype != np.int8:
        return f"operands {a.dtype} x {w.dtype} (the kernel takes int8/uint8 x int8)"
    return None


def _quads(x: np.ndarray, pads: Sequence[int]) -> np.ndarray:
    """NCHW int8/uint8 ``x`` padded and as uint32 quads of 4 consecutive channels, (N,
    ceil(C/4), H', W'), int8 values offset to uint8 (the padding is the offset zero); the
    channels past C are left unset (their weights are zero)."""
    n, c, h, wd = x.shape
    pt, pl, pb, pr = pads
    cq = -(-c // 4)
    hp, wp = h + pt + pb, wd + pl + pr
    buf = _scratch("igemm_quads", (n, cq, hp, wp, 4), np.uint8)
    fill = 128 if x.dtype == np.int8 else 0
    if pt:
        buf[:, :, :pt] = fill
    if pb:
        buf[:, :, pt + h:] = fill
    if pl:
        buf[:, :, pt: pt + h, :pl] = fill
    if pr:
        buf[:, :, pt: pt + h, pl + wd:] = fill
    src = x.view(np.uint8)
    for c4 in range(min(4, c)):
        part = src[:, c4::4]
        dst = buf[:, : part.shape[1], pt: pt + h, pl: pl + wd, c4]
        if x.dtype == np.int8:
            np.bitwise_xor(part, np.uint8(0x80), out=dst)
        else:
            dst[...] = part
    return buf.view(np.uint32).reshape(n, cq, hp, wp)


@dataclass(frozen=True)
class ConvWeights:
    """OIHW int8 weights packed for :func:`conv2d_cnhw` (:func:`pack_conv_weights`)."""

    shape: tuple[int, int, int, int]  # the OIHW weights'
    signed: bool  # packed for int8 activations (with the -128 * sum(w) correction)
    w4: np.ndarray  # (O, Q) uint32 quads
    corr: np.ndarray  # (O,) int32


def pack_conv_weights(w: np.ndarray, x_dtype) -> ConvWeights:
    """OIHW int8 ``w`` as (O, Q) uint32 quads in the activations' reduction order (channel
    quad, tap, channel in the quad; zero past C) and the int32 correction ``-128 * sum(w[o])``
    (zero for uint8 activations), for activations of ``x_dtype``. A layer run over several
    batches packs its weights once."""
    if w.dtype != np.int8 or w.ndim != 4:
        raise KernelError(f"igemm conv: weights must be 4-D int8, not {w.ndim}-D {w.dtype}")
    signed = np.dtype(x_dtype) == np.int8
    o, c, kh, kw = w.shape
    cq = -(-c // 4)
    w4 = np.empty((o, cq, kh, kw, 4), np.int8)
    if c % 4:
        w4[:, -1] = 0
    for c4 in range(min(4, c)):
        part = w[:, c4::4]
        w4[:, : part.shape[1], :, :, c4] = part
    corr = _correction(w.reshape(o, -1).sum(axis=1, dtype=np.int64) if signed else None, o)
    return ConvWeights(tuple(w.shape), signed, w4.view(np.uint32).reshape(o, cq * kh * kw),
                       corr)


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
    n, c, h, wd = x.shape
    o, cw, kh, kw = w.shape
    if cw != c:
        raise KernelError(f"igemm conv: weights have {cw} input channels, input {c}")
    (sh, sw), (dh, dw) = strides, dilations
    xq = _quads(np.ascontiguousarray(x), pads)
    hp, wp = xq.shape[2:]
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise KernelError(f"igemm conv: empty output {oh}x{ow}")
    cq = xq.shape[1]
    m = n * oh * ow
    q = cq * kh * kw
    ldx = _cols_for(m)
    x4 = _scratch("igemm_cols", (q, ldx), np.uint32)
    s = xq.strides
    win = as_strided(xq, (n, cq, oh, ow, kh, kw),
                     (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)
    e = x4.itemsize
    dst = as_strided(x4, (cq, kh, kw, n, oh, ow),
                     (kh * kw * ldx * e, kw * ldx * e, ldx * e, oh * ow * e, ow * e, e))
    dst[...] = win.transpose(1, 4, 5, 0, 2, 3)
    if packed is None:
        packed = pack_conv_weights(w, x.dtype)
    elif packed.shape != tuple(w.shape) or packed.signed != (x.dtype == np.int8):
        raise KernelError(f"igemm conv: weights packed for {packed.shape} "
                          f"{'int8' if packed.signed else 'uint8'} activations, not "
                          f"{tuple(w.shape)} {x.dtype}")
    out = np.empty((o, m), np.int32)
    gemm(x4, m, packed.w4, packed.corr, out)
    return out.reshape(o, n, oh, ow)


def matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``a @ w.T`` of (M, K) int8/uint8 ``a`` and (O, K) int8 ``w`` as (M, O) int32
    lanes (wrapped mod 2**32). ``w`` is read in place when it is C-contiguous with K a
    multiple of 4; the weight sums the int8 offset needs come out of the same pass (a column
    of ones among the activations)."""
    why = supports_matmul(a, w)
    if why is not None:
        raise KernelError(f"igemm matmul: {why}")
    mrows, k = a.shape
    o, kw = w.shape
    if kw != k:
        raise KernelError(f"igemm matmul: weights have {kw} inputs, activations {k}")
    signed = a.dtype == np.int8
    q = -(-k // 4)
    if k % 4 or not w.flags.c_contiguous:
        wp = np.zeros((o, q * 4), np.int8)
        wp[:, :k] = w
    else:
        wp = w
    w4 = wp.view(np.uint32)
    ap = np.zeros((mrows, q * 4), np.uint8) if k % 4 else np.empty((mrows, k), np.uint8)
    if signed:
        np.bitwise_xor(a.view(np.uint8), np.uint8(0x80), out=ap[:, :k])
    else:
        ap[:, :k] = a
    m = mrows + 1 if signed else mrows  # int8: one more column of ones gives sum(w[o])
    x4 = _scratch("igemm_cols", (q, _cols_for(m)), np.uint32)
    x4[:, :mrows] = ap.view(np.uint32).T
    if signed:
        x4[:, mrows] = 0x01010101
    out = np.empty((o, m), np.int32)
    gemm(x4, m, w4, np.zeros(o, np.int32), out)
    res = np.empty((mrows, o), np.int32)
    if signed:
        corr = out[:, mrows] * np.int32(-128)  # wraps mod 2**32, as the lanes do
        np.add(out[:, :mrows].T, corr[None, :], out=res)
    else:
        res[...] = out.T
    return res
