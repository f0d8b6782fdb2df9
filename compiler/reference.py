"""Numpy reference interpreter of the IR: float semantics and bit-exact int8 semantics.

Float ops follow ONNX. Quantised ops (``qconv2d``, ``qdense``, ``qadd``, ``requant``,
``qavgpool``, ``qglobal_avgpool``) produce an int32 accumulator and then run the requantisation
:class:`~tessera.runtime.accel.epilogue.Epilogue` with
:func:`~tessera.runtime.accel.epilogue.apply_epilogue`, i.e. through the functional simulator's
ALU (SPEC §4). The accelerator must reproduce :func:`run` on a quantised graph bit for bit.
Accelerator layers whose layouts are assigned (``layout="blocked"``) read and write SPEC §2
blocked tensors; the reference unpacks, computes and packs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tessera.compiler.ir import Graph, Node
from tessera.compiler.refops import KERNELS as _FAMILY_KERNELS
from tessera.errors import CompileError, ProgramError
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.accel.epilogue import apply_epilogue as _apply
from tessera.runtime.cpu import igemm
from tessera.runtime.scratch import release_scratch, scratch

__all__ = ["run", "conv2d_nchw", "int_conv2d", "int_conv2d_cnhw", "int_matmul", "conv_output",
           "dense_output", "apply_epilogue", "wrap32", "sums_fit_int32", "exact_splits",
           "packed_conv_weights",
           "float_activation", "scratch", "release_scratch", "KERNELS"]


def wrap32(v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Two's complement wrap of integer values to int32 range (returned as int64): the
    accumulator's arithmetic. ``out`` (an int64 array of ``v``'s shape, may be ``v``) receives
    the result."""
    v = np.asarray(v, dtype=np.int64)
    if out is None:
        return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    np.add(v, 1 << 31, out=out)
    np.bitwise_and(out, 0xFFFFFFFF, out=out)
    return np.subtract(out, 1 << 31, out=out)


def apply_epilogue(acc: np.ndarray, epi: Epilogue, residual: np.ndarray | None = None,
                   channel_axis: int = 1, overwrite: bool = False) -> np.ndarray:
    """:func:`tessera.runtime.accel.epilogue.apply_epilogue`, with its errors as
    :class:`CompileError`."""
    try:
        return _apply(acc, epi, residual, channel_axis, overwrite)
    except ProgramError as exc:
        raise CompileError(str(exc)) from None



# -- float / integer kernels --------------------------------------------------------------------

def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int = 1,
             dw: int = 1) -> np.ndarray:
    """View of shape (N, C, OH, OW, KH, KW) over an already padded NCHW array."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    s = x.strides
    return as_strided(x, (n, c, oh, ow, kh, kw),
                      (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)


def _padded(x: np.ndarray, pads) -> np.ndarray:
    """NCHW ``x`` zero padded by ``pads`` (top, left, bottom, right), in a scratch buffer;
    ``x`` itself if there are no pads."""
    pt, pl, pb, pr = pads
    if not (pt or pl or pb or pr):
        return x
    n, c, h, w = x.shape
    xp = scratch("pad", (n, c, h + pt + pb, w + pl + pr), x.dtype)
    xp[:, :, :pt] = 0
    xp[:, :, pt + h:] = 0
    xp[:, :, pt: pt + h, :pl] = 0
    xp[:, :, pt: pt + h, pl + w:] = 0
    xp[:, :, pt: pt + h, pl: pl + w] = x
    return xp


def _im2col(x: np.ndarray, w_shape, strides, pads, dilations, groups: int
            ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The (G, N*OH*OW, Cg*KH*KW) patch matrix of a grouped conv (a view where numpy can
    reshape without a copy), and (N, OH, OW)."""
    o, cg, kh, kw = w_shape
    win = _windows(_padded(x, pads), kh, kw, strides[0], strides[1], dilations[0],
                   dilations[1])
    n, c, oh, ow = win.shape[:4]
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return cols.reshape(groups, n * oh * ow, cg * kh * kw), (n, oh, ow)


def _im2col_t(x: np.ndarray, w_shape, strides, pads, dilations, groups: int, dtype
              ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The patches reduction-major, (G, Cg*KH*KW, N*OH*OW), in ``dtype``, and (N, OH, OW):
    a copy of whole output rows per tap, several times faster than :func:`_im2col`'s layout
    (whose innermost run is KW elements)."""
    o, cg, kh, kw = w_shape
    n, c, h, w = x.shape
    if (kh, kw, n, groups) == (1, 1, 1, 1) and tuple(strides) == (1, 1) and not any(pads) \
            and x.dtype == dtype:  # an unpadded pointwise conv reads the input as it is
        return np.ascontiguousarray(x).reshape(1, c, h * w), (1, h, w)
    win = _windows(_padded(x, pads), kh, kw, strides[0], strides[1], dilations[0],
                   dilations[1])
    n, c, oh, ow = win.shape[:4]
    cols = scratch("cols", (groups, cg, kh, kw, n, oh, ow), dtype)
    cols[...] = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4)
    return cols.reshape(groups, cg * kh * kw, n * oh * ow), (n, oh, ow)


def _nchw(out: np.ndarray, n: int, oh: int, ow: int) -> np.ndarray:
    """(G, Og, N*OH*OW) products as an NCHW array (no copy for one image)."""
    return np.ascontiguousarray(out.reshape(-1, n, oh, ow).transpose(1, 0, 2, 3))


def conv2d_nchw(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
                dilations=(1, 1), groups: int = 1) -> np.ndarray:
    """Grouped 2-D convolution (cross-correlation) of NCHW ``x`` with OIHW ``w``, zero padded.

    Computes in the dtype of ``x``; pass float64 operands for exact integer results (or use
    :func:`int_conv2d`). An ungrouped conv is one BLAS product ``W (O, K) @ patches (K, M)``
    over reduction-major patches; a grouped one ``patches (G, M, K) @ W (G, K, Og)`` (for
    depthwise convs the other orientation rounds differently and is no faster).
    """
    o, cg, kh, kw = w.shape
    k = cg * kh * kw
    if groups == 1:
        cols, (n, oh, ow) = _im2col_t(x, w.shape, strides, pads, dilations, 1, x.dtype)
        out = np.matmul(w.reshape(1, o, k).astype(cols.dtype, copy=False), cols)
        return _nchw(out, n, oh, ow)
    cols, (n, oh, ow) = _im2col(x, w.shape, strides, pads, dilations, groups)
    og = o // groups
    wm = w.reshape(groups, og, k).transpose(0, 2, 1).astype(cols.dtype, copy=False)
    out = np.matmul(cols, wm)  # (G, N*OH*OW, Og)
    return out.reshape(groups, n, oh, ow, og).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)


def _exact_chunk(a: np.dtype, b: np.dtype) -> int | None:
    """The longest reduction whose every partial sum of ``a * b`` products float32 holds
    exactly (all integers up to 2**24 are float32 values), or None if not even one."""
    if a.kind not in "iu" or b.kind not in "iu":
        return None
    big = max(abs(int(np.iinfo(a).min)), int(np.iinfo(a).max)) \
        * max(abs(int(np.iinfo(b).min)), int(np.iinfo(b).max))
    k = (1 << 24) // big
    return k if k >= 1 else None


def sums_fit_int32(a: np.dtype, b: np.dtype, k: int) -> bool:
    """Whether every sum of ``k`` products of ``a`` and ``b`` values fits int32 (so the exact
    result converts to int32 lanes with no wrap)."""
    big = max(abs(int(np.iinfo(a).min)), int(np.iinfo(a).max)) \
        * max(abs(int(np.iinfo(b).min)), int(np.iinfo(b).max))
    return k * big <= (1 << 31) - 1


_SPLIT_WEIGHTS = 1 << 22  # larger weight tensors keep the dtype's chunks (no prefix sums)


def exact_splits(x_dtype: np.dtype, w: np.ndarray) -> list[int] | None:
    """Boundaries of reduction chunks over which float32 sums ``x @ w[c]`` exactly for any
    ``x_dtype`` input: integers up to 2**24 are float32 values, so a chunk is exact when
    ``max|x| * sum over the chunk of |w[c]|`` is at most 2**24 for every output channel ``c``
    (then every partial sum, in whatever order BLAS adds, is such an integer). ``w`` is
    (O, ...) integer weights, reduced over everything but axis 0; None if float32 holds no
    product exactly (wide integers). Trained int8 weights are far from all +-127: a 3x3x256
    reduction usually fits one chunk where the dtype's bound allows 1024 terms."""
    flat = w.reshape(w.shape[0], -1)
    k = flat.shape[1]
    chunk = _exact_chunk(np.dtype(x_dtype), flat.dtype)
    if chunk is None:
        return None
    if k <= chunk or flat.size > _SPLIT_WEIGHTS:
        return _dtype_splits(k, chunk)
    info = np.iinfo(x_dtype)
    limit = (1 << 24) // max(abs(int(info.min)), int(info.max))  # sum|w| a chunk may reach
    # per-channel sums of |w| over blocks of g terms (one block is within the dtype's chunk,
    # so exact on its own); chunks are whole blocks, as many as stay within the limit
    g = min(64, chunk)
    mag = np.abs(flat, dtype=np.int16 if flat.dtype.itemsize == 1 else np.int64)
    full = k // g * g
    blocks = mag[:, :full].reshape(flat.shape[0], -1, g).sum(axis=2, dtype=np.int64)
    if full < k:
        blocks = np.concatenate([blocks, mag[:, full:].sum(axis=1, dtype=np.int64)[:, None]],
                                axis=1)
    prefix = np.cumsum(blocks, axis=1)
    nb = blocks.shape[1]
    bounds, start = [0], 0
    while start < nb:
        base = prefix[:, start - 1: start] if start else 0
        reach = (prefix[:, start:] - base).max(axis=0)  # non-decreasing along the chunk
        start += max(1, int(np.searchsorted(reach, limit, side="right")))
        bounds.append(min(k, start * g))
    dtype_splits = _dtype_splits(k, chunk)
    return bounds if len(bounds) < len(dtype_splits) else dtype_splits


def packed_conv_weights(x_dtype, w: np.ndarray, groups: int = 1) -> igemm.ConvWeights | None:
    """``w`` packed once for several :func:`int_conv2d_cnhw` int32-lane calls on ``x_dtype``
    inputs, or None where those calls do not take the int8 kernel (then
    :func:`exact_splits` is what they reuse)."""
    if igemm.supports_conv(np.empty(0, x_dtype), w, groups) is not None:
        return None
    return igemm.pack_conv_weights(w, x_dtype)


def _dtype_splits(k: int, chunk: int) -> list[int]:
    return list(range(0, k, chunk)) + [k]


def _as_int(total: np.ndarray, exact32: bool, dtype) -> np.ndarray:
    """Exact integer-valued float sums as ``dtype`` (int64, or int32 lanes: wrapped as the
    accumulator wraps them)."""
    if np.dtype(dtype) == np.int64:
        return total.astype(np.int64)
    if exact32:  # no value beyond int32: the direct conversion is exact
        return total.astype(np.int32)
    return wrap32(total.astype(np.int64)).astype(np.int32)


def _chunked(product: Callable[[int, int, np.ndarray | None], np.ndarray],
             bounds: Sequence[int], shape: tuple[int, ...], exact32: bool, dtype
             ) -> np.ndarray:
    """Sum the exact float32 products ``product(k0, k1, out)`` of the reduction chunks
    ``bounds`` as integers (int32 lanes when no sum can leave int32, else int64), converted
    to ``dtype`` as :func:`_as_int` does. Every chunk's product lands in one scratch buffer."""
    if len(bounds) == 2:
        return _as_int(product(bounds[0], bounds[1], None), exact32, dtype)
    buf = scratch("products", shape, np.float32)
    acc_dtype = np.int32 if exact32 else np.int64
    total = None
    for k0, k1 in zip(bounds[:-1], bounds[1:]):
        part = product(k0, k1, buf)
        if total is None:
            total = part.astype(acc_dtype)
        else:  # integer + exact float32 integer, computed in float64: exact
            np.add(total, part, out=total, casting="unsafe")
    if np.dtype(dtype) == np.int64 or exact32:
        return total.astype(dtype, copy=False)
    return wrap32(total).astype(np.int32)


def int_matmul(a: np.ndarray, b: np.ndarray, dtype=np.int64,
               splits: Sequence[int] | None = None) -> np.ndarray:
    """Exact ``a @ b`` of 2-D integer arrays as int64 (or, with ``dtype=np.int32``, wrapped to
    int32 lanes: :func:`wrap32` of it, without int64 copies when the sums cannot leave int32).

    int8 x int8 products go through float32 BLAS over reductions of at most 1024 terms (each
    exact: |sum| <= 1024 * 128 * 128 = 2**24), or over ``splits`` (:func:`exact_splits` of
    ``b.T``: longer chunks the weights allow), summed as integers; wider integers through
    float64 BLAS (exact while the sums stay below 2**53). Operands are converted one reduction
    chunk at a time (a large dense layer's weights are never copied whole). int32 lanes of
    int8/uint8 x int8 operands come from the int8 kernel where the host has one (AVX-512
    VNNI or AVX2: :mod:`tessera.runtime.cpu.igemm`; ``splits`` is then not needed)."""
    if np.dtype(dtype) == np.int32 and a.ndim == 2 and b.ndim == 2:
        why = igemm.supports_matmul(a, b.T)
        if why is None:
            return igemm.matmul(a, b.T)
        igemm.note_fallback(f"matmul: {why}")
    chunk = _exact_chunk(a.dtype, b.dtype)
    k = a.shape[-1]
    if chunk is None:
        total = np.rint(a.astype(np.float64) @ b.astype(np.float64))
        return _as_int(total, False, dtype)
    bounds = list(splits) if splits is not None else _dtype_splits(k, chunk)

    def product(k0: int, k1: int, out: np.ndarray | None) -> np.ndarray:
        return np.matmul(a[:, k0: k1].astype(np.float32), b[k0: k1].astype(np.float32),
                         out=out)

    return _chunked(product, bounds, a.shape[:-1] + b.shape[-1:],
                    sums_fit_int32(a.dtype, b.dtype, k), dtype)


def int_conv2d(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
               dilations=(1, 1), groups: int = 1) -> np.ndarray:
    """:func:`conv2d_nchw` of integer ``x`` and ``w``, exact, as int64 (the sums as in
    :func:`int_matmul`; reduction-major patches for every conv: the order of an exact sum is
    free)."""
    return np.ascontiguousarray(
        int_conv2d_cnhw(x, w, strides, pads, dilations, groups).transpose(1, 0, 2, 3))


def int_conv2d_cnhw(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
                    dilations=(1, 1), groups: int = 1, dtype=np.int64,
                    splits: Sequence[int] | None = None,
                    packed: igemm.ConvWeights | None = None) -> np.ndarray:
    """:func:`int_conv2d` with the output channel-major, (O, N, OH, OW) (how the products come
    out: no transposing copy; ``[:, i]`` is image ``i``'s output). ``dtype=np.int32`` gives
    the products wrapped to int32 lanes and ``splits`` the reduction chunks as
    :func:`int_matmul` takes them (:func:`exact_splits` of ``w``). int32 lanes of an
    ungrouped int8/uint8 x int8 conv come from the int8 kernel where the host has one
    (AVX-512 VNNI or AVX2: :mod:`tessera.runtime.cpu.igemm`; ``packed``:
    :func:`packed_conv_weights` of ``w``)."""
    if np.dtype(dtype) == np.int32:
        why = igemm.supports_conv(x, w, groups)
        if why is None:
            return igemm.conv2d_cnhw(x, w, strides, pads, dilations, packed)
        igemm.note_fallback(f"conv: {why}")
    o, cg, kh, kw = w.shape
    chunk = _exact_chunk(x.dtype, w.dtype)
    fdtype = np.float64 if chunk is None else np.float32
    cols, (n, oh, ow) = _im2col_t(x, w.shape, strides, pads, dilations, groups, fdtype)
    k = cg * kh * kw
    wm = w.reshape(groups, o // groups, k).astype(fdtype)
    if chunk is None:
        out = _as_int(np.rint(np.matmul(wm, cols)), False, dtype)
    else:
        def product(k0: int, k1: int, buf: np.ndarray | None) -> np.ndarray:
            return np.matmul(wm[:, :, k0: k1], cols[:, k0: k1], out=buf)

        bounds = list(splits) if splits is not None else _dtype_splits(k, chunk)
        out = _chunked(product, bounds, (groups, o // groups, cols.shape[-1]),
                       sums_fit_int32(x.dtype, w.dtype, k), dtype)
    return out.reshape(o, n, oh, ow)


def _pool_windows(x: np.ndarray, a: Mapping[str, Any], fill: float,
                  divisor: bool = True) -> tuple[np.ndarray, Any]:
    """The (N, C, OH, OW, KH, KW) windows of a pooling node over ``x`` padded with ``fill``
    (``x`` itself when no window reaches past it), and each window's divisor (positions inside
    the input, or inside input + explicit pads; None unless ``divisor``)."""
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    dh, dw = a.get("dilations", (1, 1))
    pt, pl, pb, pr = a["pads"]
    h, w = x.shape[2:]
    from tessera.compiler.ir import pool_out_size
    oh = pool_out_size(h, kh, sh, pt, pb, dh, bool(a["ceil_mode"]))
    ow = pool_out_size(w, kw, sw, pl, pr, dw, bool(a["ceil_mode"]))
    eb = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + pt + pb))
    er = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + pl + pr))
    if pt or pl or pb + eb or pr + er:
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + eb), (pl, pr + er)), constant_values=fill)
    else:  # every window inside x: no padded copy
        xp = x
    win = _windows(xp, kh, kw, sh, sw, dh, dw)[:, :, :oh, :ow]
    if not divisor:
        return win, None
    # divisor: positions inside the input (or inside input + explicit pads)
    inside = np.zeros((1, 1) + xp.shape[2:], dtype=np.float64)
    if a.get("count_include_pad"):
        inside[..., : h + pt + pb, : w + pl + pr] = 1
    else:
        inside[..., pt: pt + h, pl: pl + w] = 1
    count = _windows(inside, kh, kw, sh, sw, dh, dw)[:, :, :oh, :ow].sum(axis=(4, 5))
    return win, count


def _epi_args(node: Node) -> Epilogue:
    epi = node.attrs.get("epilogue")
    if not isinstance(epi, Epilogue):
        raise CompileError(f"node {node.name!r} ({node.op}) has no requantisation epilogue")
    return epi


def _act(y: np.ndarray, a: Mapping[str, Any]) -> np.ndarray:
    act = a.get("act", "none")
    if act == "relu":
        return np.maximum(y, 0)
    if act == "clip":
        return np.clip(y, a["act_min"], a["act_max"])
    return y


def float_activation(y: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """A float conv/dense node's fused activation (``attrs["act"]``) applied to ``y``, as the
    node's kernel returns it."""
    return _f32(_act(y, attrs))


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if x.dtype == np.float64 else x


def _k_conv2d(n: Node, x, w, b=None, r=None):
    a = n.attrs
    y = conv2d_nchw(x, w, a["strides"], a["pads"], a["dilations"], a["groups"])
    return conv_output(n, y, b, r)


def conv_output(n: Node, y: np.ndarray, b=None, r=None) -> list[np.ndarray]:
    """A float conv2d node's output from its products ``y`` (which it may overwrite): bias,
    residual and fused activation added as its kernel does."""
    a = n.attrs
    if y.dtype == np.result_type(y, *(v for v in (b, r) if v is not None)):
        # y is a fresh array of the result dtype: the same sums, computed in place
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        if r is not None:
            y += r
        return [_f32(_act_inplace(y, a))]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    if r is not None:
        y = y + r
    return [_f32(_act(y, a))]


def _act_inplace(y: np.ndarray, a: Mapping[str, Any]) -> np.ndarray:
    """:func:`_act` writing into ``y`` (which the caller owns)."""
    act = a.get("act", "none")
    if act == "relu":
        return np.maximum(y, 0, out=y)
    if act == "clip":
        return np.clip(y, a["act_min"], a["act_max"], out=y)
    return y


def _k_dense(n: Node, x, w, b=None, r=None):
    return dense_output(n, x @ w.T, b, r)


def dense_output(n: Node, y: np.ndarray, b=None, r=None) -> list[np.ndarray]:
    """A float dense node's output from its products ``y`` = ``x @ w.T``."""
    if b is not None:
        y = y + b
    if r is not None:
        y = y + r
    return [_f32(_act(y, n.attrs))]


def _k_binary(fn: Callable) -> Callable:
    def k(n: Node, a, b):
        return [_act(fn(a, b), n.attrs).astype(np.result_type(a, b), copy=False)]
    return k


def _power(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy power; integers to negative powers give 0 (1 and -1 their own powers)."""
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return np.power(a, b)
    neg = b < 0
    out = np.power(a, np.where(neg, 0, b))
    unit = np.where(a == -1, np.where(b % 2 == 1, -1, 1), np.where(a == 1, 1, 0))
    return np.where(neg, unit, out).astype(np.result_type(a, b))


def _int_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Division of integers truncating toward zero (C, onnxruntime); exact for int64."""
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return np.divide(a, b)
    q = np.abs(a) // np.where(b == 0, 1, np.abs(b))
    return np.where(b == 0, 0, np.where((a < 0) != (b < 0), -q, q))


def _k_pool(n: Node, x):
    if n.op == "maxpool":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        win, _ = _pool_windows(x, n.attrs, fill, divisor=False)
        # the max over the window, one window offset at a time (exact, and far faster than a
        # reduction over the two short trailing axes of the strided view)
        out = win[..., 0, 0].copy()
        for i in range(win.shape[4]):
            for j in range(win.shape[5]):
                if i or j:
                    np.maximum(out, win[..., i, j], out=out)
        return [out]
    win, count = _pool_windows(x, n.attrs, 0)
    return [(win.sum(axis=(4, 5)) / count).astype(x.dtype)]


def _k_lrn(n: Node, x):
    a = n.attrs
    size = int(a["size"])
    sq = np.pad(x * x, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
    s = sum(sq[:, i: i + x.shape[1]] for i in range(size))
    return [(x / (a["bias"] + a["alpha"] / size * s) ** a["beta"]).astype(x.dtype)]


def _k_softmax(n: Node, x):
    e = np.exp(x - x.max(axis=n.attrs["axis"], keepdims=True))
    return [(e / e.sum(axis=n.attrs["axis"], keepdims=True)).astype(x.dtype)]


def _k_batchnorm(n: Node, x, scale, bias, mean, var):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + n.attrs["epsilon"])
    return [(x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)).astype(x.dtype)]


def _k_slice(n: Node, x):
    a = n.attrs
    idx = [slice(None)] * x.ndim
    steps = a["steps"] or (1,) * len(a["starts"])
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], steps):
        idx[ax] = slice(s, e, st)
    return [x[tuple(idx)]]


def _k_pad(n: Node, x):
    p = n.attrs["pads"]
    r = x.ndim
    crop = tuple(slice(max(0, -p[i]), x.shape[i] - max(0, -p[i + r])) for i in range(r))
    x = x[crop]
    widths = [(max(0, p[i]), max(0, p[i + r])) for i in range(r)]
    mode = n.attrs.get("mode", "constant")
    if mode == "constant":
        return [np.pad(x, widths, constant_values=n.attrs["value"])]
    if mode == "reflect" and any(d == 1 and sum(w) for d, w in zip(x.shape, widths)):
        # numpy cannot reflect a length-1 axis; its reflection is the element itself
        return [np.pad(x, widths, mode="edge")]
    return [np.pad(x, widths, mode=mode)]


def _k_pack(n: Node, x):
    blk, b = n.attrs["block"], n.attrs["batch"]
    s = x.shape
    nb, cb = -(-s[0] // b), -(-s[1] // blk)
    xp = np.zeros((nb * b, cb * blk) + s[2:], dtype=x.dtype)
    xp[: s[0], : s[1]] = x
    xp = xp.reshape((nb, b, cb, blk) + s[2:])
    if x.ndim == 4:
        return [np.ascontiguousarray(xp.transpose(0, 2, 4, 5, 1, 3))]
    return [np.ascontiguousarray(xp.transpose(0, 2, 1, 3))]


def _k_unpack(n: Node, x):
    shape = tuple(n.attrs["shape"])
    if x.ndim == 6:
        nb, cb, h, w, b, blk = x.shape
        full = x.transpose(0, 4, 1, 5, 2, 3).reshape(nb * b, cb * blk, h, w)
    else:
        nb, cb, b, blk = x.shape
        full = x.transpose(0, 2, 1, 3).reshape(nb * b, cb * blk)
    return [np.ascontiguousarray(full[: shape[0], : shape[1]])]


def _blocked(kernel: Callable) -> Callable:
    """Run an accelerator layer's NCHW kernel on blocked (SPEC §2) inputs and output."""
    def k(n: Node, x, w, b=None, r=None):
        a = n.attrs
        if a.get("layout", "nchw") != "blocked":
            return kernel(n, x, w, b, r)
        shape = tuple(a["in_shape"])
        xs = _k_unpack(n.with_attrs(shape=shape), x)[0]
        y = kernel(n, xs, w, b, None if r is None else _unpack_like(n, r, xs, w))[0]
        return _k_pack(n, y)
    return k


def _unpack_like(n: Node, r: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The residual of a blocked layer in the logical output's shape."""
    out_c = w.shape[0]
    shape = (x.shape[0], out_c) + tuple(r.shape[2:-2])
    return _k_unpack(n.with_attrs(shape=shape), r)[0]


def _k_qconv2d(n: Node, x, w, b=None, r=None):
    a = n.attrs
    acc = wrap32(int_conv2d(x, w, a["strides"], a["pads"], a["dilations"], a["groups"]))
    if b is not None:
        acc = wrap32(acc + b.astype(np.int64).reshape(1, -1, 1, 1))
    return [apply_epilogue(acc, _epi_args(n), r)]


def _k_qdense(n: Node, x, w, b=None, r=None):
    acc = wrap32(int_matmul(x, w.T))
    if b is not None:
        acc = wrap32(acc + b.astype(np.int64))
    return [apply_epilogue(acc, _epi_args(n), r)]


def _k_qadd(n: Node, x, y):
    return [apply_epilogue(x.astype(np.int64), _epi_args(n), y)]


def _k_requant(n: Node, x):
    return [apply_epilogue(x.astype(np.int64), _epi_args(n))]


def _k_qavgpool(n: Node, x):
    win, _ = _pool_windows(x.astype(np.int64), n.attrs, 0)
    return [apply_epilogue(win.sum(axis=(4, 5)), _epi_args(n))]


def _k_qglobal_avgpool(n: Node, x):
    acc = x.astype(np.int64).sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    return [apply_epilogue(acc, _epi_args(n))]


def _axis_param(n: Node, key: str, x: np.ndarray, dtype: Any) -> np.ndarray:
    """A quantize/dequantize parameter broadcastable against ``x`` (per-axis when a list)."""
    v = np.asarray(n.attrs[key], dtype=dtype).reshape(-1)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * x.ndim
    shape[int(n.attrs["axis"]) % x.ndim] = v.size
    return v.reshape(shape)


def _k_quantize(n: Node, x):
    a = n.attrs
    s = _axis_param(n, "scale", x, np.float32)
    zp = _axis_param(n, "zero_point", x, np.float32)
    return [np.clip(np.rint(x / s) + zp, a["lo"], a["hi"]).astype(np.int8)]


def _k_dequantize(n: Node, x):
    s = _axis_param(n, "scale", x, np.float32)
    zp = _axis_param(n, "zero_point", x, np.int64)
    return [(x.astype(np.int64) - zp).astype(np.float32) * s]


def _k_recenter(n: Node, x):
    to = n.attrs["to"]
    return [(x.astype(np.int16) + (128 if to == "uint8" else -128)).astype(to)]


def _k_matmul(n: Node, a, b):
    return [np.matmul(a, b)]


KERNELS: dict[str, Callable[..., list[np.ndarray]]] = {
    "conv2d": _k_conv2d,
    "dense": _k_dense,
    "matmul": _k_matmul,
    "add": _k_binary(np.add),
    "sub": _k_binary(np.subtract),
    "mul": _k_binary(np.multiply),
    "div": _k_binary(_int_divide),
    "max": _k_binary(np.maximum),
    "min": _k_binary(np.minimum),
    "pow": _k_binary(_power),
    "relu": lambda n, x: [np.maximum(x, np.zeros((), x.dtype))],
    "clip": lambda n, x: [np.clip(x, n.attrs["min"], n.attrs["max"]).astype(x.dtype)],
    "sigmoid": lambda n, x: [(1 / (1 + np.exp(-x))).astype(x.dtype)],
    "tanh": lambda n, x: [np.tanh(x)],
    "exp": lambda n, x: [np.exp(x)],
    "sqrt": lambda n, x: [np.sqrt(x)],
    "neg": lambda n, x: [-x],
    "leaky_relu": lambda n, x: [np.where(x >= 0, x, x * n.attrs["alpha"]).astype(x.dtype)],
    "identity": lambda n, x: [x],
    "softmax": _k_softmax,
    "lrn": _k_lrn,
    "batchnorm": _k_batchnorm,
    "maxpool": _k_pool,
    "avgpool": _k_pool,
    "global_avgpool": lambda n, x: [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)],
    "global_maxpool": lambda n, x: [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)],
    "mean": lambda n, x: [x.mean(axis=tuple(n.attrs["axes"]), keepdims=n.attrs["keepdims"])
                          .astype(x.dtype)],
    "flatten": lambda n, x: [x.reshape(int(np.prod(x.shape[: n.attrs["axis"]])), -1)],
    "reshape": lambda n, x: [x.reshape(n.attrs["shape"])],
    "transpose": lambda n, x: [np.transpose(x, n.attrs["perm"] or None)],
    "concat": lambda n, *xs: [np.concatenate(xs, axis=n.attrs["axis"])],
    "slice": _k_slice,
    "pad": _k_pad,
    "cast": lambda n, x: [x.astype(n.attrs["to"])],
    "quantize": _k_quantize,
    "dequantize": _k_dequantize,
    "recenter": _k_recenter,
    "qconv2d": _blocked(_k_qconv2d),
    "qdense": _blocked(_k_qdense),
    "qadd": _k_qadd,
    "requant": _k_requant,
    "qavgpool": _k_qavgpool,
    "qglobal_avgpool": _k_qglobal_avgpool,
    "pack": _k_pack,
    "unpack": _k_unpack,
}


KERNELS.update(_FAMILY_KERNELS)


def run(graph: Graph, feeds: Mapping[str, np.ndarray], *, all_tensors: bool = False,
        observe: Callable[[str, np.ndarray], None] | None = None,
        kernels: Mapping[str, Callable[..., list[np.ndarray]]] | None = None
        ) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` (input name -> array).

    Returns the graph outputs, or every tensor when ``all_tensors`` is set. ``observe`` is
    called with (tensor name, value) for every node output as it is produced (calibration).
    ``kernels`` replaces the kernels of some ops (op -> kernel computing the same values, e.g.
    one that also records something).
    Intermediate tensors are freed after their last use unless ``all_tensors`` is set.
    """
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in feeds:
            raise CompileError(f"missing input {name!r} (graph inputs: {list(graph.inputs)})")
        info = graph.tensors[name]
        x = np.asarray(feeds[name])
        if tuple(x.shape) != info.shape:
            raise CompileError(f"input {name!r} must have shape {info.shape}, not {x.shape}")
        env[name] = x.astype(info.dtype, copy=False)
    unknown = set(feeds) - set(graph.inputs)
    if unknown:
        raise CompileError(f"unknown input(s) {sorted(unknown)}; graph inputs are "
                           f"{list(graph.inputs)}")
    env.update(graph.constants)
    last_use: dict[str, int] = {}
    for idx, n in enumerate(graph.nodes):
        for i in n.inputs:
            last_use[i] = idx
    keep = set(graph.outputs) | set(graph.constants)
    for idx, n in enumerate(graph.nodes):
        kernel = (kernels.get(n.op) if kernels else None) or KERNELS.get(n.op)
        if kernel is None:
            raise CompileError(f"node {n.name!r}: the reference has no kernel for op {n.op!r}")
        args = [env[i] if i else None for i in n.inputs]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            outs = kernel(n, *args)  # IEEE results (inf, NaN) are ONNX's semantics
        for o, v in zip(n.outputs, outs):
            want = graph.tensors.get(o)
            if want is not None and v.dtype != np.dtype(want.dtype):
                v = v.astype(want.dtype)
            env[o] = v
            if observe is not None:
                observe(o, v)
        if not all_tensors:
            for i in set(n.inputs):
                if i and last_use.get(i) == idx and i not in keep:
                    env.pop(i, None)
    if all_tensors:
        return env
    return {o: env[o] for o in graph.outputs}
