"""Indexing CPU kernels: Expand, Tile, Gather (constant indices), TopK. Any dtype unless noted.

- Expand(``shape``): broadcast to ``numpy.broadcast_shapes(x.shape, shape)``;
- Tile(``repeats``): ``numpy.tile`` with one repeat per axis;
- Gather(``axis``, ``indices``, ``indices_shape``): ``numpy.take`` with constant, in-range,
  non-negative indices (the frontend resolves negative ones);
- TopK(``k``, ``axis``, ``largest``, ``sorted``): the k largest (smallest) values along axis in
  order, ties broken by the lower index, and their int64 indices; float32 / int8 / int32 /
  int64 (``sorted=0`` returns the same sorted order, which ONNX allows). NaNs are never selected
  before numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    I64,
    KernelBuilder,
    Spec,
    broadcast_shape,
    broadcast_strides,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    contiguous_strides,
    int_attr,
    ints_attr,
    itemsize,
    norm_axis,
    size,
)
from tessera.runtime.cpu.data import emit_copy

__all__ = ["GENERATORS"]

_ANY = ("float32", "int8", "int32", "int64", "bool", "uint8")


def _expand(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("shape",))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], _ANY)
    shape = in_specs[0][0]
    target = ints_attr(op, attrs, "shape", None)
    check(all(d >= 0 for d in target), op, f"shape must be non-negative, not {target}")
    out = broadcast_shape(op, [shape, target])
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_expand_{dt}", 1, 1)
    emit_copy(kb, ty, out, kb.ins[0], broadcast_strides(shape, out), 0, kb.outs[0],
              contiguous_strides(out), 0)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _tile(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("repeats",))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], _ANY)
    shape = in_specs[0][0]
    reps = ints_attr(op, attrs, "repeats", len(shape))
    check(all(r >= 0 for r in reps), op, f"repeats must be non-negative, not {reps}")
    out = tuple(d * r for d, r in zip(shape, reps, strict=True))
    ostr, istr = contiguous_strides(out), contiguous_strides(shape)
    # walk (r0, d0, r1, d1, ...): the copy reads dimension k with stride istr[k], repeats with 0
    view, src, dst = [], [], []
    for k, (d, r) in enumerate(zip(shape, reps, strict=True)):
        view += [r, d]
        src += [0, istr[k]]
        dst += [d * ostr[k], ostr[k]]
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_tile_{dt}", 1, 1)
    emit_copy(kb, ty, tuple(view), kb.ins[0], src, 0, kb.outs[0], dst, 0)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _gather(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axis", "indices", "indices_shape"))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], _ANY)
    shape = in_specs[0][0]
    check(len(shape) >= 1, op, "input must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", 0), len(shape))
    idx = ints_attr(op, attrs, "indices", None)
    ishape = ints_attr(op, attrs, "indices_shape", None)
    check(size(ishape) == len(idx), op, f"{len(idx)} indices do not fill {ishape}")
    check(all(0 <= i < shape[axis] for i in idx), op,
          f"indices must be in [0, {shape[axis]}) along axis {axis}, not {list(idx)[:8]}...")
    outer, inner = size(shape[:axis]), size(shape[axis + 1:])
    out = shape[:axis] + ishape + shape[axis + 1:]
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_gather_{dt}", 1, 1)
    tab = kb.table(list(idx))
    if size(out):
        with kb.loop(0, outer, name="o") as o, kb.loop(0, len(idx), name="j") as j:
            i = kb.load(tab, I64, j)
            src = kb.ptr(kb.ins[0], ty, kb.index([(o, shape[axis] * inner), (i, inner)]))
            dst = kb.ptr(kb.outs[0], ty, kb.index([(o, len(idx) * inner), (j, inner)]))
            kb.memcpy(dst, src, inner * itemsize(ty))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _topk(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("k", "axis", "largest", "sorted"))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], ("float32", "int8", "int32", "int64"))
    shape = in_specs[0][0]
    check(len(shape) >= 1, op, "input must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", -1), len(shape))
    k = int_attr(op, attrs, "k")
    largest = int_attr(op, attrs, "largest", 1)
    check(int_attr(op, attrs, "sorted", 1) in (0, 1) and largest in (0, 1), op,
          "largest and sorted must be 0 or 1")
    length = shape[axis]
    check(0 <= k <= length, op, f"k must be in [0, {length}], not {k}")
    outer, inner = size(shape[:axis]), size(shape[axis + 1:])
    out = shape[:axis] + (k,) + shape[axis + 1:]
    ty = DTYPES[dt]
    flt = dt == "float32"
    kb = KernelBuilder(f"tsr_topk_{dt}", 1, 2)
    b = kb.b
    x, vals, idxs = kb.ins[0], kb.outs[0], kb.outs[1]
    count = kb.alloca(I64, 1)
    pos = kb.alloca(I64, 1)
    rel = ">" if largest else "<"

    def better(a: ir.Value, c: ir.Value) -> ir.Value:
        if flt:  # a number beats NaN; NaN never beats anything
            return b.or_(b.fcmp_ordered(rel, a, c),
                         b.and_(b.fcmp_ordered("ord", a, a), b.fcmp_unordered("uno", c, c)))
        return b.icmp_signed(rel, a, c)

    if k and size(out):
        with kb.loop(0, outer, name="o") as o, kb.loop(0, inner, name="i") as ii:
            src = kb.index([(o, length * inner), (ii, 1)])
            dst = kb.index([(o, k * inner), (ii, 1)])
            b.store(kb.i64(0), count)
            with kb.loop(0, length, name="a") as a:
                v = kb.load(x, ty, kb.index([(src, 1), (a, inner)]))
                n = b.load(count, typ=I64)
                full = b.icmp_signed("==", n, kb.i64(k))
                last = kb.index([(dst, 1)], base=(k - 1) * inner)
                enter = b.or_(b.xor(full, ir.Constant(ir.IntType(1), 1)),
                              better(v, kb.load(vals, ty, last)))
                with kb.if_then(enter):
                    # insertion: shift worse entries right, then place v (ties stay in order)
                    b.store(b.select(full, kb.i64(k - 1), n), pos)
                    with kb.loop(0, k, name="s"):
                        p = b.load(pos, typ=I64)
                        prev = kb.index([(dst, 1), (p, inner)], base=-inner)
                        move = b.and_(b.icmp_signed(">", p, kb.i64(0)),
                                      better(v, kb.load(vals, ty, b.select(
                                          b.icmp_signed(">", p, kb.i64(0)), prev, dst))))
                        with kb.if_then(move):
                            here = kb.index([(dst, 1), (p, inner)])
                            kb.store(kb.load(vals, ty, prev), vals, ty, here)
                            kb.store(kb.load(idxs, I64, prev), idxs, I64, here)
                            b.store(b.sub(p, kb.i64(1)), pos)
                    here = kb.index([(dst, 1), (b.load(pos, typ=I64), inner)])
                    kb.store(v, vals, ty, here)
                    kb.store(a, idxs, I64, here)
                    b.store(b.select(full, n, b.add(n, kb.i64(1))), count)
    return kb.finish(), kb.name, [(out, np.dtype(dt)), (out, np.dtype("int64"))]


GENERATORS = {"Expand": _expand, "Tile": _tile, "Gather": _gather, "TopK": _topk}
