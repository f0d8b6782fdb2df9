"""Data-movement CPU kernels: reshape, flatten, transpose, concat, slice, blocked layout packing.

Every kernel copies (outputs never alias inputs). ``PackNCHW`` turns an ``N C H W`` tensor into
the accelerator's blocked layout ``(N/BATCH, C/BLOCK, H, W, BATCH, BLOCK)`` (SPEC §2), rounding
N and C up with zeros; ``UnpackNCHW`` is its inverse and drops the padding. Attributes ``batch``
and ``block`` come from :class:`tessera.Config` (``cfg.batch``, ``cfg.block_in``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    I1,
    I8,
    I32,
    PTR,
    KernelBuilder,
    Shape,
    Spec,
    check,
    check_attrs,
    check_inputs,
    coalesce,
    contiguous_strides,
    fail,
    int_attr,
    ints_attr,
    itemsize,
    norm_axis,
    size,
)

_ANY = ("float32", "int8", "int32", "int64", "bool", "uint8")


def emit_copy(kb: KernelBuilder, ty: ir.Type, shape: Shape, src: ir.Value,
              src_strides: Sequence[int], src_base: int, dst: ir.Value,
              dst_strides: Sequence[int], dst_base: int) -> None:
    """``dst[dst_base + i.dst_strides] = src[src_base + i.src_strides]`` for i over ``shape``."""
    if any(d == 0 for d in shape):
        return
    shape, (ss, ds) = coalesce(shape, [src_strides, dst_strides])
    if len(shape) == 1 and ss == (1,) and ds == (1,):
        nbytes = shape[0] * itemsize(ty)
        kb.memcpy(kb.ptr(dst, ty, dst_base), kb.ptr(src, ty, src_base), nbytes)
        return
    tile = _transpose_tile(shape, ss, ds, itemsize(ty))
    if tile is not None:
        _emit_transpose(kb, ty, shape, src, ss, src_base, dst, ds, dst_base, *tile)
        return
    _emit_scalar_copy(kb, ty, shape, src, ss, src_base, dst, ds, dst_base)


_TILES = (4, 8, 16, 32, 64)
_TILE_BYTES = 64  # one tile row in a vector register (AVX-512: 64 bytes; narrower ISAs split it)


def _emit_scalar_copy(kb: KernelBuilder, ty: ir.Type, shape: Shape, src: ir.Value,
                      ss: Sequence[int], src_base: int, dst: ir.Value, ds: Sequence[int],
                      dst_base: int) -> None:
    with kb.nest(shape) as idx:
        v = kb.load(src, ty, kb.index(list(zip(idx, ss, strict=True)), base=src_base))
        kb.store(v, dst, ty, kb.index(list(zip(idx, ds, strict=True)), base=dst_base))


def _transpose_tile(shape: Shape, ss: Sequence[int], ds: Sequence[int],
                    item: int) -> tuple[int, int, int] | None:
    """``(p, q, a)`` when the two innermost dimensions of a coalesced copy transpose: ``p`` is
    contiguous in the source only, ``q`` in the destination only, and the smaller of them has
    ``a`` elements, a tile size whose row fits a vector register; else None."""
    if len(shape) < 2:
        return None
    n = len(shape)
    for p, q in ((n - 2, n - 1), (n - 1, n - 2)):
        if ss[p] == 1 and ds[q] == 1 and ss[q] > 1 and ds[p] > 1:
            a = min(shape[p], shape[q])
            if a in _TILES and a * item <= _TILE_BYTES:
                return p, q, a
    return None


def _emit_transpose(kb: KernelBuilder, ty: ir.Type, shape: Shape, src: ir.Value,
                    ss: Sequence[int], src_base: int, dst: ir.Value, ds: Sequence[int],
                    dst_base: int, p: int, q: int, a_n: int) -> None:
    """A batch of 2-D transposes (:func:`_transpose_tile`) in ``a x a`` tiles through vector
    registers: ``a`` row loads along ``p`` (contiguous in ``src``), log2(a) rounds of
    interleaving shuffles, ``a`` row stores along ``q`` (contiguous in ``dst``). The larger
    dimension's last ``extent % a`` elements are copied one by one."""
    big = p if shape[p] > a_n or shape[q] == a_n else q
    outer = [k for k in range(len(shape)) if k not in (p, q)]
    chunks, rem = divmod(shape[big], a_n)
    vec = ir.VectorType(ty, a_n)
    half = a_n // 2
    lo = ir.Constant(ir.VectorType(I32, a_n), [v for k in range(half) for v in (k, a_n + k)])
    hi = ir.Constant(ir.VectorType(I32, a_n),
                     [v for k in range(half, a_n) for v in (k, a_n + k)])
    b = kb.b
    with kb.nest([shape[k] for k in outer], name="t") as idx:
        with kb.loop(0, chunks, name="tile") as c:
            o_src = [*zip(idx, [ss[k] for k in outer], strict=True), (c, a_n * ss[big])]
            o_dst = [*zip(idx, [ds[k] for k in outer], strict=True), (c, a_n * ds[big])]
            s0, d0 = kb.index(o_src, base=src_base), kb.index(o_dst, base=dst_base)
            rows = [b.load(kb.ptr(src, ty, b.add(s0, kb.i64(r * ss[q]), flags=("nsw",))),
                           typ=vec, align=1) for r in range(a_n)]
            # perfect shuffle: after log2(a) rounds, row j holds the tile's column j
            for _ in range(a_n.bit_length() - 1):
                nxt = []
                for r in range(half):
                    nxt += [b.shuffle_vector(rows[r], rows[r + half], lo),
                            b.shuffle_vector(rows[r], rows[r + half], hi)]
                rows = nxt
            for j, row in enumerate(rows):
                b.store(row, kb.ptr(dst, ty, b.add(d0, kb.i64(j * ds[p]), flags=("nsw",))),
                        align=1)
    if rem:
        tail = tuple(rem if k == big else n for k, n in enumerate(shape))
        _emit_scalar_copy(kb, ty, tail, src, ss, src_base + chunks * a_n * ss[big],
                          dst, ds, dst_base + chunks * a_n * ds[big])

def _one_input(op: str, in_specs: list[Spec]) -> tuple[Shape, str]:
    check_inputs(op, in_specs, (1,))
    shape, dtype = in_specs[0]
    check(dtype.name in _ANY, op, f"input dtype must be one of {', '.join(_ANY)}")
    return shape, dtype.name


def _reshape(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    shape, dt = _one_input(op, in_specs)
    if op == "Flatten":
        check_attrs(op, attrs, ("axis",))
        axis = int_attr(op, attrs, "axis", 1)
        check(-len(shape) <= axis <= len(shape), op,
              f"axis must be in [{-len(shape)}, {len(shape)}], not {axis}")
        axis += len(shape) if axis < 0 else 0
        out = (size(shape[:axis]), size(shape[axis:]))
    else:
        check_attrs(op, attrs, ("shape", "allowzero"))
        want = ints_attr(op, attrs, "shape", None)
        allowzero = int_attr(op, attrs, "allowzero", 0)
        dims = [shape[k] if (d == 0 and not allowzero and k < len(shape)) else d
                for k, d in enumerate(want)]
        if any(d == 0 for d in want) and not allowzero:
            check(all(k < len(shape) for k, d in enumerate(want) if d == 0), op,
                  f"shape {want} copies a dimension the input {shape} does not have")
        check(dims.count(-1) <= 1, op, f"shape {want} has more than one -1")
        check(all(d >= -1 for d in dims), op, f"shape {want} has a dimension below -1")
        if -1 in dims:
            known = size(d for d in dims if d != -1)
            check(known > 0 and size(shape) % known == 0, op,
                  f"cannot reshape {shape} to {want}")
            dims[dims.index(-1)] = size(shape) // known
        out = tuple(dims)
    check(size(out) == size(shape), op, f"cannot reshape {shape} ({size(shape)} elements) to "
                                        f"{out} ({size(out)} elements)")
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    if size(shape):
        kb.memcpy(kb.outs[0], kb.ins[0], size(shape) * itemsize(ty))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _transpose(op: str, attrs: dict[str, Any],
               in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("perm",))
    shape, dt = _one_input(op, in_specs)
    rank = len(shape)
    perm = ints_attr(op, attrs, "perm", rank, tuple(reversed(range(rank))))
    perm = tuple(p % rank if -rank <= p < rank else p for p in perm)
    check(sorted(perm) == list(range(rank)), op, f"perm {perm} is not a permutation of "
                                                 f"0..{rank - 1}")
    out = tuple(shape[p] for p in perm)
    in_strides = contiguous_strides(shape)
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_transpose_{dt}", 1, 1)
    emit_copy(kb, ty, out, kb.ins[0], [in_strides[p] for p in perm], 0, kb.outs[0],
              contiguous_strides(out), 0)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _concat(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axis",))
    check(len(in_specs) >= 1, op, "takes at least one input")
    shape0, dt0 = in_specs[0]
    rank = len(shape0)
    check(rank >= 1, op, "inputs must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis"), rank)
    for k, (s, d) in enumerate(in_specs):
        check(d == dt0, op, f"input {k} has dtype {d.name}, input 0 has {dt0.name}")
        check(len(s) == rank and all(a == b for j, (a, b) in enumerate(zip(s, shape0))
                                     if j != axis), op,
              f"input {k} shape {s} does not match {shape0} outside axis {axis}")
    out = list(shape0)
    out[axis] = sum(s[axis] for s, _ in in_specs)
    out_t = tuple(out)
    check(dt0.name in _ANY, op, f"dtype must be one of {', '.join(_ANY)}")
    ty = DTYPES[dt0.name]
    kb = KernelBuilder(f"tsr_concat_{dt0.name}", len(in_specs), 1)
    out_strides = contiguous_strides(out_t)
    offset = 0
    for k, (s, _) in enumerate(in_specs):
        emit_copy(kb, ty, s, kb.ins[k], contiguous_strides(s), 0, kb.outs[0], out_strides,
                  offset * out_strides[axis])
        offset += s[axis]
    return kb.finish(), kb.name, [(out_t, dt0)]


def _slice(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    """ONNX Slice with constant starts/ends/axes/steps given as attributes."""
    check_attrs(op, attrs, ("starts", "ends", "axes", "steps"))
    shape, dt = _one_input(op, in_specs)
    rank = len(shape)
    starts = ints_attr(op, attrs, "starts", None)
    ends = ints_attr(op, attrs, "ends", len(starts))
    axes = ints_attr(op, attrs, "axes", len(starts), tuple(range(len(starts))))
    steps = ints_attr(op, attrs, "steps", len(starts), (1,) * len(starts))
    axes = tuple(norm_axis(op, a, rank, "axes") for a in axes)
    check(len(set(axes)) == len(axes), op, f"axes {axes} repeat an axis")
    check(all(s != 0 for s in steps), op, "steps must not be 0")
    begin, step, out = [0] * rank, [1] * rank, list(shape)
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        r = range(*slice(s, e, st).indices(shape[a]))
        begin[a], step[a], out[a] = (r.start if len(r) else 0), st, len(r)
    in_strides = contiguous_strides(shape)
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_slice_{dt}", 1, 1)
    out_t = tuple(out)
    emit_copy(kb, ty, out_t, kb.ins[0], [st * s for st, s in zip(step, in_strides, strict=True)],
              sum(bg * s for bg, s in zip(begin, in_strides, strict=True)), kb.outs[0],
              contiguous_strides(out_t), 0)
    return kb.finish(), kb.name, [(out_t, np.dtype(dt))]


def _block_attrs(op: str, attrs: dict[str, Any]) -> tuple[int, int]:
    batch, block = int_attr(op, attrs, "batch", 1), int_attr(op, attrs, "block")
    check(batch >= 1, op, f"batch must be >= 1, not {batch}")
    check(block >= 1, op, f"block must be >= 1, not {block}")
    return batch, block


def _pack(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("batch", "block"))
    shape, dt = _one_input(op, in_specs)
    check(len(shape) == 4, op, f"input must be 4-D NCHW, not shape {shape}")
    bt, bl = _block_attrs(op, attrs)
    n, c, h, w = shape
    nb, cb = -(-n // bt), -(-c // bl)
    out = (nb, cb, h, w, bt, bl)
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_pack_nchw_{dt}", 1, 1)
    x, y = kb.ins[0], kb.outs[0]
    if (nb * bt, cb * bl) != (n, c) and size(out):
        memset = kb.intrinsic("llvm.memset.p0.i64", ir.VoidType(), [PTR, I8, ir.IntType(64),
                                                                    I1])
        kb.b.call(memset, [y, ir.Constant(I8, 0), kb.i64(size(out) * itemsize(ty)),
                           ir.Constant(I1, 0)])
    # Whole blocks first (constant inner extents), then the ragged last batch/channel blocks.
    ostr = contiguous_strides(out)
    istr = contiguous_strides(shape)
    for nb_lo, nb_hi, b_len in ((0, n // bt, bt), (n // bt, nb, n % bt)):
        for cb_lo, cb_hi, c_len in ((0, c // bl, bl), (c // bl, cb, c % bl)):
            if nb_hi <= nb_lo or cb_hi <= cb_lo or b_len == 0 or c_len == 0:
                continue
            # dims: (nb, cb, h, w, b, bl) over the block range
            sub = (nb_hi - nb_lo, cb_hi - cb_lo, h, w, b_len, c_len)
            src = (bt * istr[0], bl * istr[1], istr[2], istr[3], istr[0], istr[1])
            src_base = nb_lo * bt * istr[0] + cb_lo * bl * istr[1]
            dst_base = nb_lo * ostr[0] + cb_lo * ostr[1]
            emit_copy(kb, ty, sub, x, src, src_base, y, ostr, dst_base)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _unpack(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("batch", "block", "shape"))
    shape, dt = _one_input(op, in_specs)
    bt, bl = _block_attrs(op, attrs)
    target = ints_attr(op, attrs, "shape", 4)
    n, c, h, w = target
    want = (-(-n // bt), -(-c // bl), h, w, bt, bl)
    if shape != want:
        raise fail(op, f"input shape {shape} is not the blocked layout {want} of NCHW {target}")
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_unpack_nchw_{dt}", 1, 1)
    istr = contiguous_strides(shape)
    # out[n, c, h, w] = in[n // bt, c // bl, h, w, n % bt, c % bl], split into whole blocks
    ostr = contiguous_strides(target)
    for nb_lo, nb_hi, b_len in ((0, n // bt, bt), (n // bt, want[0], n % bt)):
        for cb_lo, cb_hi, c_len in ((0, c // bl, bl), (c // bl, want[1], c % bl)):
            if nb_hi <= nb_lo or cb_hi <= cb_lo or b_len == 0 or c_len == 0:
                continue
            sub = (nb_hi - nb_lo, b_len, cb_hi - cb_lo, c_len, h, w)
            src = (istr[0], istr[4], istr[1], istr[5], istr[2], istr[3])
            dst = (bt * ostr[0], ostr[0], bl * ostr[1], ostr[1], ostr[2], ostr[3])
            emit_copy(kb, ty, sub, kb.ins[0], src, nb_lo * istr[0] + cb_lo * istr[1],
                      kb.outs[0], dst, nb_lo * bt * ostr[0] + cb_lo * bl * ostr[1])
    return kb.finish(), kb.name, [(target, np.dtype(dt))]


GENERATORS = {
    "Reshape": _reshape,
    "Flatten": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "PackNCHW": _pack,
    "UnpackNCHW": _unpack,
}
