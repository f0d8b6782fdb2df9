"""ONNX converters: constants, shape arithmetic and data movement.

Shape sub-graphs (Shape, Size, Gather, Unsqueeze, Concat, Slice, Range, ConstantOfShape, Cast on
shapes ...) fold to constants at import because every input shape is static.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tessera.compiler.frontend.common import axes_arg, const_list, norm_axes, opt_input
from tessera.compiler.frontend.context import Ctx, Unsupported, decode
from tessera.compiler.frontend.registry import converter

__all__: list[str] = []


@converter("Constant")
def _constant(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    if "value" in a:
        v = numpy_helper.to_array(a["value"])
    elif "value_float" in a:
        v = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        v = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        v = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        v = np.array(a["value_ints"], np.int64)
    else:
        raise Unsupported(f"Constant attribute {sorted(a)} is not supported")
    ctx.add_const(n.output[0], v)


@converter("ConstantOfShape")
def _constant_of_shape(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = const_list(ctx, n.input[0], "ConstantOfShape shape")
    if any(d < 0 for d in shape):
        raise Unsupported(f"shape {shape} has a negative dimension")
    v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    ctx.add_const(n.output[0], np.full(shape, v.reshape(-1)[0], dtype=v.dtype))


@converter("Shape")
def _shape(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    s = np.array(ctx.shape(n.input[0]), np.int64)
    r = len(s)
    start, end = int(a.get("start", 0)), int(a.get("end", r))
    ctx.add_const(n.output[0], s[slice(start, end)])


@converter("Size")
def _size(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    ctx.add_const(n.output[0], np.array(ctx.info(n.input[0]).size, np.int64))


@converter("Range")
def _range(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    s, e, d = (ctx.const(i, "Range operand") for i in n.input[:3])
    s, e, d = s.reshape(()), e.reshape(()), d.reshape(())
    if d == 0:
        raise Unsupported("Range delta must not be 0")
    count = max(int(np.ceil((e.astype(np.float64) - s) / d)), 0)
    ctx.add_const(n.output[0], (s + d * np.arange(count)).astype(s.dtype))


@converter("Identity")
def _identity(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    ctx.emit("identity", [n.input[0]], n.output[0])


@converter("Dropout")
def _dropout(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    training = opt_input(n, 2)
    if training and bool(ctx.const(training, "Dropout training_mode").reshape(-1)[0]):
        ratio = float(ctx.const(n.input[1], "Dropout ratio").reshape(-1)[0]) \
            if opt_input(n, 1) else 0.5
        if ratio != 0.0:  # a ratio of 0 drops nothing, in training mode too
            raise Unsupported("Dropout in training mode is not supported (inference only)")
    if len(n.output) > 1 and n.output[1]:
        # inference mode: nothing is dropped, the mask is all true
        ctx.add_const(n.output[1], np.ones(ctx.shape(n.input[0]), dtype=bool))
    ctx.emit("identity", [n.input[0]], n.output[0])


def resolve_shape(src: tuple[int, ...], spec: Sequence[int], allowzero: bool) -> tuple[int, ...]:
    """The target shape of ONNX Reshape (0 copies a dimension unless ``allowzero``; one -1)."""
    out = [int(d) for d in spec]
    for i, d in enumerate(out):
        if d == 0 and not allowzero:
            if i >= len(src):
                raise Unsupported(f"shape {list(spec)} copies dimension {i} that {src} lacks")
            out[i] = src[i]
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise Unsupported(f"shape {list(spec)} has more than one -1 or a dimension below -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(src))
        if known == 0 or total % known:
            raise Unsupported(f"cannot reshape {src} to {list(spec)}")
        out[out.index(-1)] = total // known
    if int(np.prod(out)) != int(np.prod(src)):
        raise Unsupported(f"cannot reshape {src} ({int(np.prod(src))} elements) to {out}")
    return tuple(out)


@converter("Reshape")
def _reshape(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    spec = a["shape"] if "shape" in a else const_list(ctx, n.input[1], "Reshape shape")
    shape = resolve_shape(ctx.shape(n.input[0]), spec, bool(a.get("allowzero", 0)))
    ctx.emit("reshape", [n.input[0]], n.output[0], shape=shape)


@converter("Flatten")
def _flatten(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = ctx.rank(n.input[0])
    axis = int(a.get("axis", 1))
    if not -r <= axis <= r:
        raise Unsupported(f"axis {axis} is out of range for rank {r}")
    ctx.emit("flatten", [n.input[0]], n.output[0], axis=axis + r if axis < 0 else axis)


@converter("Squeeze", "Unsqueeze")
def _squeeze(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = list(ctx.shape(n.input[0]))
    axes = axes_arg(ctx, n, a, n.op_type)
    if n.op_type == "Squeeze":
        drop = set(norm_axes(axes, len(shape), "axes")) if axes is not None else {
            i for i, d in enumerate(shape) if d == 1}
        if any(shape[i] != 1 for i in drop):
            raise Unsupported(f"cannot squeeze non-1 axes {sorted(drop)} of {tuple(shape)}")
        new = [d for i, d in enumerate(shape) if i not in drop]
    else:
        if axes is None:
            raise Unsupported("Unsqueeze needs axes")
        new = shape
        for ax in sorted(norm_axes(axes, len(shape) + len(axes), "axes")):
            new.insert(ax, 1)
    ctx.emit("reshape", [n.input[0]], n.output[0], shape=tuple(new))


@converter("Transpose")
def _transpose(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = ctx.rank(n.input[0])
    perm = tuple(int(p) for p in a.get("perm", range(r - 1, -1, -1)))
    ctx.emit("transpose", [n.input[0]], n.output[0], perm=perm)


@converter("Concat")
def _concat(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    ins = [i for i in n.input if i]
    r = ctx.rank(ins[0])
    axis = norm_axes([int(a["axis"])], r, "axis")[0]
    kept = [i for i in ins if ctx.info(i).size > 0] or ins[:1]
    ctx.emit("concat", kept, n.output[0], axis=axis)


_BIG = 1 << 62


def emit_slice(ctx: Ctx, x: str, out: str, starts: Sequence[int], ends: Sequence[int],
               axes: Sequence[int], steps: Sequence[int]) -> str:
    r = ctx.rank(x)
    axes = norm_axes(axes, r, "Slice axes")
    if any(s == 0 for s in steps):
        raise Unsupported("Slice steps must not be 0")
    clamp = [(max(min(int(s), _BIG), -_BIG), max(min(int(e), _BIG), -_BIG))
             for s, e in zip(starts, ends)]
    return ctx.emit("slice", [x], out, starts=tuple(s for s, _ in clamp),
                    ends=tuple(e for _, e in clamp), axes=tuple(axes),
                    steps=tuple(int(s) for s in steps))


@converter("Slice")
def _slice(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    if "starts" in a:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = const_list(ctx, n.input[1], "Slice starts")
        ends = const_list(ctx, n.input[2], "Slice ends")
        axes = const_list(ctx, n.input[3], "Slice axes") if opt_input(n, 3) \
            else list(range(len(starts)))
        steps = const_list(ctx, n.input[4], "Slice steps") if opt_input(n, 4) \
            else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise Unsupported(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must "
                          f"have one length")
    emit_slice(ctx, n.input[0], n.output[0], starts, ends, axes, steps)


@converter("Split")
def _split(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    shape = ctx.shape(x)
    axis = norm_axes([int(a.get("axis", 0))], len(shape), "axis")[0]
    length = shape[axis]
    outs = list(n.output)
    if "split" in a:
        sizes = [int(v) for v in a["split"]]
    elif opt_input(n, 1):
        sizes = const_list(ctx, n.input[1], "Split split")
    else:
        parts = int(a.get("num_outputs", len(outs)))
        if parts != len(outs):
            raise Unsupported(f"num_outputs {parts} differs from the {len(outs)} outputs")
        chunk = -(-length // parts)
        sizes = [min(chunk, length - k * chunk) for k in range(parts)]
        if "num_outputs" not in a and length % parts:
            raise Unsupported(f"axis {axis} of length {length} does not split evenly into "
                              f"{parts} outputs")
    if len(sizes) != len(outs) or sum(sizes) != length or any(s < 0 for s in sizes):
        raise Unsupported(f"split {sizes} does not cut axis {axis} of length {length} into "
                          f"{len(outs)} outputs")
    start = 0
    for out, size in zip(outs, sizes):
        o = out or ctx.tmp(f"{x}:split")
        emit_slice(ctx, x, o, [start], [start + size], [axis], [1])
        start += size


@converter("Pad")
def _pad(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    mode = decode(a.get("mode", "constant"))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"Pad mode {mode!r} is not supported")
    r = ctx.rank(n.input[0])
    if "pads" in a:
        pads, value = [int(v) for v in a["pads"]], float(a.get("value", 0.0))
    else:
        pads = const_list(ctx, n.input[1], "Pad pads")
        value = 0.0
        if opt_input(n, 2):
            v = ctx.const(n.input[2], "Pad constant_value").reshape(-1)
            value = float(v[0]) if v.size else 0.0
        if opt_input(n, 3):
            axes = norm_axes(const_list(ctx, n.input[3], "Pad axes"), r, "Pad axes")
            if len(pads) != 2 * len(axes):
                raise Unsupported(f"pads {pads} must have 2 values per axis of {axes}")
            full = [0] * (2 * r)
            for k, ax in enumerate(axes):
                full[ax], full[ax + r] = pads[k], pads[k + len(axes)]
            pads = full
    if len(pads) != 2 * r:
        raise Unsupported(f"pads {pads} must have {2 * r} values")
    ctx.emit("pad", [n.input[0]], n.output[0], pads=tuple(pads), value=value, mode=mode)


@converter("Expand")
def _expand(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = const_list(ctx, n.input[1], "Expand shape")
    ctx.emit("expand", [n.input[0]], n.output[0], shape=tuple(shape))


@converter("Tile")
def _tile(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    reps = const_list(ctx, n.input[1], "Tile repeats")
    ctx.emit("tile", [n.input[0]], n.output[0], repeats=tuple(reps))


@converter("Gather")
def _gather(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = ctx.shape(n.input[0])
    axis = norm_axes([int(a.get("axis", 0))], len(shape), "axis")[0]
    idx = ctx.const(n.input[1], "Gather indices").astype(np.int64)
    dim = shape[axis]
    if np.any((idx < -dim) | (idx >= dim)):
        raise Unsupported(f"Gather indices must be in [{-dim}, {dim}) for axis {axis}, not "
                          f"{idx.reshape(-1)[:8].tolist()}...")
    idx = np.where(idx < 0, idx + dim, idx)
    ctx.emit("gather", [n.input[0]], n.output[0], axis=axis,
             indices=tuple(int(i) for i in idx.reshape(-1)), indices_shape=idx.shape)


@converter("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = ctx.shape(n.input[0])
    if len(shape) != 4:
        raise Unsupported(f"{n.op_type} needs a 4-D NCHW input, not {shape}")
    bs = int(a["blocksize"])
    b, c, h, w = shape
    x = n.input[0]
    if n.op_type == "DepthToSpace":
        if c % (bs * bs):
            raise Unsupported(f"channels {c} are not a multiple of blocksize^2 = {bs * bs}")
        mode = decode(a.get("mode", "DCR"))
        if mode == "DCR":
            view, perm = (b, bs, bs, c // bs ** 2, h, w), (0, 3, 4, 1, 5, 2)
        elif mode == "CRD":
            view, perm = (b, c // bs ** 2, bs, bs, h, w), (0, 1, 4, 2, 5, 3)
        else:
            raise Unsupported(f"mode must be DCR or CRD, not {mode!r}")
        final = (b, c // bs ** 2, h * bs, w * bs)
    else:
        if h % bs or w % bs:
            raise Unsupported(f"spatial size {h}x{w} is not a multiple of blocksize {bs}")
        mode = decode(a.get("mode", "DCR"))
        if mode not in ("DCR", "CRD"):
            raise Unsupported(f"mode must be DCR or CRD, not {mode!r}")
        view = (b, c, h // bs, bs, w // bs, bs)
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
        final = (b, c * bs * bs, h // bs, w // bs)
    t = ctx.emit("reshape", [x], ctx.tmp(n.output[0]), shape=view)
    t = ctx.emit("transpose", [t], ctx.tmp(n.output[0]), perm=perm)
    ctx.emit("reshape", [t], n.output[0], shape=final)
