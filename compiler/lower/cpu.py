"""One IR node on the CPU: the kernel calls of the runtime's :class:`~tessera.runtime.cpu.op.CpuOp`.

::

    op = make_cpu_op(node, [graph.info(i) if i else None for i in node.inputs])
    (y,) = op(*[env[i] if i else None for i in node.inputs])
    op.out_specs                       # [((1, 64, 28, 28), dtype('int8'))]

:func:`make_cpu_op` covers every op of :data:`tessera.compiler.ir.OPS` with the semantics of
:mod:`tessera.compiler.reference` — bit-exact for integer ops — by translating the IR node into
one or more kernels of :mod:`tessera.runtime.cpu.kernels` (e.g. ``qconv2d`` is an int8 ``Conv``
into an int32 accumulator followed by ``Requant``; a fused ``act`` becomes a ``Relu`` or
``Clip``).
Intermediate buffers are allocated per call; an input whose kernel wants another shape of the same
size (e.g. a 2-D tensor packed as NCHW with H = W = 1) is passed as a reshaped view, which for
contiguous arrays copies nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tessera.compiler.ir import OPS, Node, TensorInfo
from tessera.compiler.lower.cpu_float import PLANNERS
from tessera.errors import CompileError, KernelError
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.cpu import kernels
from tessera.runtime.cpu.builder import Spec, size
from tessera.runtime.cpu.jit import Engine
from tessera.runtime.cpu.op import CpuOp, KernelCall
from tessera.runtime.cpu.quant import requant_attrs

__all__ = ["make_cpu_op", "supported_ops"]


def _spec_from(op: str, k: int, item: Any) -> Spec | None:
    if item is None:
        return None
    if isinstance(item, TensorInfo):
        shape, dtype = item.shape, item.dtype
    else:
        try:
            shape, dtype = item
        except (TypeError, ValueError):
            raise CompileError(f"{op}: input spec {k} must be a TensorInfo or a (shape, dtype) "
                               f"pair, not {item!r}") from None
    try:
        return tuple(int(d) for d in shape), np.dtype(dtype)
    except (TypeError, ValueError):
        raise CompileError(f"{op}: input spec {k} is not a (shape, dtype) pair: {item!r}") \
            from None


# -- planning ------------------------------------------------------------------------------------


class _Plan:
    """Builds the step list of one node."""

    def __init__(self, node: Node, in_specs: list[Spec | None], engine: Engine | None):
        self.node = node
        self.engine = engine
        self.specs: list[Spec | None] = list(in_specs)
        self.n_in = len(in_specs)
        self.steps: list[KernelCall] = []

    def err(self, msg: str) -> CompileError:
        return CompileError(f"node {self.node.name!r} ({self.node.op}): {msg}")

    def input(self, k: int, required: bool = True) -> int | None:
        if k >= self.n_in or self.specs[k] is None:
            if required:
                raise self.err(f"input {k} is required")
            return None
        return k

    def spec(self, slot: int) -> Spec:
        s = self.specs[slot]
        assert s is not None
        return s

    def dtype(self, slot: int) -> str:
        return self.spec(slot)[1].name

    def shape(self, slot: int) -> tuple[int, ...]:
        return self.spec(slot)[0]

    def kernel(self, op: str, attrs: dict[str, Any],
               args: Sequence[int | tuple[int, tuple[int, ...]]]) -> list[int]:
        """Append ``op`` on ``args`` (a slot, or (slot, shape) to pass a reshaped view)."""
        slots, specs = [], []
        for a in args:
            slot, shape = a if isinstance(a, tuple) else (a, self.shape(a))
            if size(shape) != size(self.shape(slot)):
                raise AssertionError(f"view {shape} of {self.shape(slot)} changes the size")
            slots.append(slot)
            specs.append((tuple(shape), self.spec(slot)[1]))
        try:
            k = kernels.get(op, attrs, specs, engine=self.engine, lazy=True)
        except KernelError as exc:
            raise self.err(str(exc)) from None
        outs = list(range(len(self.specs), len(self.specs) + len(k.out_specs)))
        self.specs.extend(k.out_specs)
        self.steps.append(KernelCall(k, tuple(slots), tuple(outs)))
        return outs

    def one(self, op: str, attrs: dict[str, Any],
            args: Sequence[int | tuple[int, tuple[int, ...]]]) -> int:
        return self.kernel(op, attrs, args)[0]


def _float_only(p: _Plan, slot: int) -> None:
    if p.dtype(slot) != "float32":
        raise p.err(f"the CPU runs {p.node.op} on float32 only, not {p.dtype(slot)}")


def _act(p: _Plan, y: int) -> int:
    a = p.node.attrs
    act = a.get("act", "none")
    if act == "none":
        return y
    if act == "relu":
        return p.one("Relu", {}, [y])
    if act == "clip":
        return p.one("Clip", {"min": float(a["act_min"]), "max": float(a["act_max"])}, [y])
    raise p.err(f"unknown fused activation {act!r}")


def _residual_act(p: _Plan, y: int, res_input: int) -> int:
    r = p.input(res_input, required=False)
    if r is not None:
        y = p.one("Add", {}, [y, r])
    return _act(p, y)


def _conv_attrs(a: Mapping[str, Any]) -> dict[str, Any]:
    return {"group": int(a["groups"]), "strides": [int(v) for v in a["strides"]],
            "pads": [int(v) for v in a["pads"]], "dilations": [int(v) for v in a["dilations"]]}


def _pool_attrs(a: Mapping[str, Any], avg: bool) -> dict[str, Any]:
    out = {"kernel_shape": [int(v) for v in a["kernel"]],
           "strides": [int(v) for v in a["strides"]], "pads": [int(v) for v in a["pads"]],
           "ceil_mode": int(bool(a["ceil_mode"]))}
    if avg:
        out["count_include_pad"] = int(bool(a.get("count_include_pad", False)))
    dil = [int(v) for v in a.get("dilations", (1, 1))]
    if dil != [1, 1]:
        out["dilations"] = dil
    return out


def _requant(p: _Plan, acc: int, residual: int | None = None) -> int:
    epi = p.node.attrs.get("epilogue")
    if not isinstance(epi, Epilogue):
        raise p.err("has no requantisation epilogue")
    args = [acc] if residual is None else [acc, residual]
    return p.one("Requant", requant_attrs(epi, 1), args)


def _num_or_list(v: Any, kind: type) -> Any:
    """A quantisation parameter as JSON: a number, or a list for per-axis values."""
    arr = np.asarray(v).reshape(-1)
    return kind(arr[0]) if arr.size == 1 else [kind(x) for x in arr]


def _spatial_view(p: _Plan, x: int) -> tuple[int, tuple[int, ...]]:
    """An NCHW view (N, C, prod(spatial), 1) of a rank >= 3 tensor, for global pooling."""
    s = p.shape(x)
    if len(s) < 3:
        raise p.err(f"global pooling needs rank >= 3, got {s}")
    return x, (s[0], s[1], size(s[2:]), 1)


def _plan(p: _Plan) -> list[int]:
    n, a = p.node, p.node.attrs
    op = n.op
    family = PLANNERS.get(op)
    if family is not None:
        return family(p)
    if op == "conv2d":
        x, w, bias = p.input(0), p.input(1), p.input(2, False)
        _float_only(p, x)
        y = p.one("Conv", _conv_attrs(a), [x, w] + ([bias] if bias is not None else []))
        return [_residual_act(p, y, 3)]
    if op == "dense":
        x, w, bias = p.input(0), p.input(1), p.input(2, False)
        _float_only(p, x)
        y = p.one("Dense", {}, [x, w] + ([bias] if bias is not None else []))
        return [_residual_act(p, y, 3)]
    if op == "matmul":
        return [p.one("MatMul", {}, [p.input(0), p.input(1)])]
    if op in ("add", "sub", "mul", "div"):
        y = p.one(op.capitalize(), {}, [p.input(0), p.input(1)])
        return [_act(p, y)]
    if op in ("max", "min", "pow"):
        return [p.one(op.capitalize(), {}, [p.input(0), p.input(1)])]
    if op == "clip":
        x = p.input(0)
        attrs = {k: float(a[k]) for k in ("min", "max") if np.isfinite(float(a[k]))}
        return [p.one("Clip", attrs, [x])]
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp",
              "sqrt": "Sqrt", "neg": "Neg", "identity": "Identity"}
    if op in simple:
        return [p.one(simple[op], {}, [p.input(0)])]
    if op == "leaky_relu":
        return [p.one("LeakyRelu", {"alpha": float(a["alpha"])}, [p.input(0)])]
    if op == "softmax":
        return [p.one("Softmax", {"axis": int(a["axis"])}, [p.input(0)])]
    if op == "lrn":
        attrs = {"size": int(a["size"]), "alpha": float(a["alpha"]), "beta": float(a["beta"]),
                 "bias": float(a["bias"])}
        return [p.one("LRN", attrs, [p.input(0)])]
    if op == "batchnorm":
        return [p.one("BatchNorm", {"epsilon": float(a["epsilon"])},
                      [p.input(k) for k in range(5)])]
    if op == "maxpool":
        return [p.one("MaxPool", _pool_attrs(a, False), [p.input(0)])]
    if op == "avgpool":
        x = p.input(0)
        if p.dtype(x) == "int8":
            return [p.one("SumPool", {**_pool_attrs(a, True), "divide": 1}, [x])]
        return [p.one("AveragePool", _pool_attrs(a, True), [x])]
    if op in ("global_avgpool", "global_maxpool"):
        x, view = _spatial_view(p, p.input(0))
        if op == "global_avgpool" and p.dtype(x) == "int8":
            return [p.one("SumPool", {"kernel_shape": [view[2], 1], "divide": 1}, [(x, view)])]
        kop = "GlobalAveragePool" if op == "global_avgpool" else "GlobalMaxPool"
        return [p.one(kop, {}, [(x, view)])]
    if op == "mean":
        return [p.one("Mean", {"axes": [int(v) for v in a["axes"]],
                               "keepdims": int(bool(a["keepdims"]))}, [p.input(0)])]
    if op in ("flatten", "reshape"):
        out = OPS[op].infer(n, [_info(p.spec(0))], None)[0].shape  # type: ignore[arg-type]
        attrs = {"shape": list(out)}
        if 0 in out:
            attrs["allowzero"] = 1  # the shape is final: a 0 is an empty dimension
        return [p.one("Reshape", attrs, [p.input(0)])]
    if op == "transpose":
        perm = [int(v) for v in a["perm"]]
        return [p.one("Transpose", {"perm": perm} if perm else {}, [p.input(0)])]
    if op == "concat":
        ins = [p.input(k) for k in range(len(n.inputs))]
        return [p.one("Concat", {"axis": int(a["axis"])}, ins)]
    if op == "slice":
        lists = [list(a["starts"]), list(a["ends"]), list(a["axes"])]
        steps = list(a["steps"]) or [1] * len(lists[0])
        k = min(len(v) for v in (*lists, steps))  # the reference zips them
        attrs = {"starts": [int(v) for v in lists[0][:k]], "ends": [int(v) for v in lists[1][:k]],
                 "axes": [int(v) for v in lists[2][:k]], "steps": [int(v) for v in steps[:k]]}
        return [p.one("Slice", attrs, [p.input(0)])]
    if op == "pad":
        attrs = {"pads": [int(v) for v in a["pads"]], "value": float(a["value"])}
        if a.get("mode", "constant") != "constant":
            attrs["mode"] = a["mode"]
        return [p.one("Pad", attrs, [p.input(0)])]
    if op == "cast":
        return [p.one("Cast", {"to": str(a["to"])}, [p.input(0)])]
    if op in ("quantize", "dequantize"):
        attrs = {"scale": _num_or_list(a["scale"], float),
                 "zero_point": _num_or_list(a["zero_point"], int), "axis": int(a["axis"])}
        if op == "quantize":
            attrs.update(lo=int(a["lo"]), hi=int(a["hi"]))
        return [p.one(op.capitalize(), attrs, [p.input(0)])]
    if op == "recenter":
        return [p.one("Recenter", {"to": str(a["to"])}, [p.input(0)])]
    if op == "qconv2d":
        x, w, bias = p.input(0), p.input(1), p.input(2, False)
        acc = p.one("Conv", _conv_attrs(a), [x, w] + ([bias] if bias is not None else []))
        return [_requant(p, acc, p.input(3, False))]
    if op == "qdense":
        x, w, bias = p.input(0), p.input(1), p.input(2, False)
        acc = p.one("Dense", {}, [x, w] + ([bias] if bias is not None else []))
        return [_requant(p, acc, p.input(3, False))]
    if op == "qadd":
        return [_requant(p, p.input(0), p.input(1))]
    if op == "requant":
        return [_requant(p, p.input(0))]
    if op == "qavgpool":
        acc = p.one("SumPool", _pool_attrs(a, True), [p.input(0)])
        return [_requant(p, acc)]
    if op == "qglobal_avgpool":
        x, view = _spatial_view(p, p.input(0))
        acc = p.one("SumPool", {"kernel_shape": [view[2], 1]}, [(x, view)])
        return [_requant(p, acc)]
    if op == "pack":
        x = p.input(0)
        s = p.shape(x)
        attrs = {"block": int(a["block"]), "batch": int(a["batch"])}
        view = s if len(s) == 4 else (s + (1, 1) if len(s) == 2 else None)
        if view is None:
            raise p.err(f"pack needs a 2-D or 4-D tensor, got {s}")
        return [p.one("PackNCHW", attrs, [(x, view)])]
    if op == "unpack":
        x = p.input(0)
        s, target = p.shape(x), tuple(int(v) for v in a["shape"])
        if len(s) == 6 and len(target) == 4:
            return [p.one("UnpackNCHW", {"batch": s[4], "block": s[5], "shape": list(target)},
                          [x])]
        if len(s) == 4 and len(target) == 2:
            attrs = {"batch": s[2], "block": s[3], "shape": list(target) + [1, 1]}
            return [p.one("UnpackNCHW", attrs, [(x, (s[0], s[1], 1, 1, s[2], s[3]))])]
        raise p.err(f"cannot unpack a {len(s)}-D blocked tensor to shape {target}")
    raise p.err("no CPU implementation of this op")


_COVERED = frozenset(OPS)


def supported_ops() -> list[str]:
    """IR ops :func:`make_cpu_op` accepts."""
    return sorted(_COVERED)


def _info(spec: Spec | None) -> TensorInfo | None:
    return None if spec is None else TensorInfo(spec[0], spec[1].name)


def make_cpu_op(node: Node, in_specs: Sequence[Any], engine: Engine | None = None) -> CpuOp:
    """Compile IR ``node`` for the CPU given its inputs' specs (``TensorInfo``, ``(shape,
    dtype)`` or ``None`` for an absent optional input, lined up with ``node.inputs``)."""
    where = f"node {node.name!r} ({node.op})"
    if node.op not in OPS:
        raise CompileError(f"{where}: unknown op")
    specs = [_spec_from(where, k, s) for k, s in enumerate(in_specs)]
    if len(specs) != len(node.inputs):
        raise CompileError(f"{where}: {len(node.inputs)} input spec(s) expected, got "
                           f"{len(specs)}")
    for k, (name, spec) in enumerate(zip(node.inputs, specs, strict=True)):
        if (spec is None) != (not name):
            raise CompileError(f"{where}: input spec {k} must be None exactly when the input "
                               "is absent")
    want = OPS[node.op].infer(node, [_info(s) for s in specs], None)  # type: ignore[arg-type]
    plan = _Plan(node, specs, engine)
    try:
        outs = _plan(plan)
    except CompileError as exc:
        if str(exc).startswith(where):
            raise
        raise CompileError(f"{where}: cannot run on the CPU: {exc}") from exc
    out_specs: list[Spec] = []
    for slot, ti in zip(outs, want, strict=True):
        shape, dtype = plan.spec(slot)
        if dtype.name != ti.dtype or size(shape) != size(ti.shape):
            raise CompileError(f"{where}: the CPU plan yields {dtype.name}{list(shape)} but the "
                               f"IR expects {ti.dtype}{list(ti.shape)}")
        out_specs.append((ti.shape, dtype))
    return CpuOp(node.op, node.name, specs, out_specs, plan.steps, outs)
