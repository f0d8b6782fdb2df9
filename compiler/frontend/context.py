"""Import state shared by the ONNX converters: constants, tensor infos, emitted nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from tessera.compiler.ir import DTYPES, OPS, Node, TensorInfo
from tessera.compiler.reference import KERNELS
from tessera.errors import CompileError

__all__ = ["Unsupported", "ImportProblems", "Ctx", "attrs_of", "decode", "ONNX_DTYPES",
           "onnx_dtype_name"]

# ONNX element types the IR has (doubles become float32).
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.DOUBLE: "float32",
}


def onnx_dtype_name(elem_type: int) -> str:
    """The ONNX name of an element type (``FLOAT16``), or its number when unknown."""
    try:
        return onnx.TensorProto.DataType.Name(int(elem_type))
    except ValueError:
        return str(elem_type)


class Unsupported(Exception):
    """Raised by a converter; collected into the final :class:`ImportProblems`.

    ``tensor`` names the tensor the converter needed as a constant when that is the reason.
    """

    def __init__(self, message: str, tensor: str | None = None):
        super().__init__(message)
        self.tensor = tensor


class ImportProblems(CompileError):
    """A model the frontend cannot import. ``problems`` lists one dict per offending node:
    ``node``, ``op``, ``domain``, ``reason``, ``depends_on`` (the unsupported nodes whose outputs
    it reads, when it could not be checked because of them) and ``needs_constant`` (graph inputs
    whose *values* the node needs at compile time, e.g. a Reshape shape fed as an input)."""

    def __init__(self, message: str, problems: list[dict[str, Any]]):
        super().__init__(message)
        self.problems = problems


class Ctx:
    """Import state: constants, tensor infos, emitted nodes."""

    def __init__(self, opset: int, opsets: dict[str, int] | None = None):
        self.opset = opset
        self.opsets = dict(opsets or {})
        self.consts: dict[str, np.ndarray] = {}
        self.infos: dict[str, TensorInfo] = {}
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.counter = 0
        self.cur = ""  # ONNX node name being converted
        # tensors whose type is known only from ONNX shape inference (outputs of nodes that
        # failed to convert), with the failing node's label
        self.placeholders: dict[str, str] = {}
        # the ONNX graph around the node being converted: op types reading each tensor, and
        # the graph outputs (for converters whose import depends on how a result is used)
        self.readers: dict[str, list[str]] = {}
        self.graph_outputs: frozenset[str] = frozenset()

    # -- helpers used by converters ----------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.infos[name].shape

    def rank(self, name: str) -> int:
        return len(self.infos[name].shape)

    def const(self, name: str, what: str = "input") -> np.ndarray:
        if not name or name not in self.consts:
            raise Unsupported(f"{what} {name!r} must be a constant (it is computed at run time)",
                              tensor=name or None)
        return self.consts[name]

    def maybe_const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.consts

    def tmp(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def add_const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        if str(value.dtype) not in DTYPES:
            raise Unsupported(f"constant {name!r} has dtype {value.dtype}, which the IR does not "
                              f"have ({', '.join(DTYPES)})")
        self.consts[name] = value
        self.infos[name] = TensorInfo(value.shape, str(value.dtype))
        return name

    def scalar(self, value: float | int, dtype: str = "float32", base: str = "c") -> str:
        """A fresh 0-d constant."""
        return self.add_const(self.tmp(base), np.array(value, dtype=dtype))

    def emit(self, op: str, inputs: Sequence[str], output: str | Sequence[str],
             **attrs: Any) -> Any:
        """Emit an IR node, or fold it when every input is a constant. Returns the output
        name (or the list of names when ``output`` is a list)."""
        outputs = [output] if isinstance(output, str) else list(output)
        name = self.cur if self.cur not in self.names else f"{self.cur}#{self.counter}"
        self.counter += 1
        node = Node(op, tuple(inputs), tuple(outputs), attrs, name or f"{op}_{self.counter}")
        ins = [self.infos[i] if i else None for i in inputs]
        try:
            outs = OPS[op].infer(node, ins, None)  # type: ignore[arg-type]
        except CompileError as exc:
            raise Unsupported(str(exc).split(": ", 1)[-1]) from None
        present = [i for i in inputs if i]
        if present and all(i in self.consts for i in present) and op in KERNELS:
            args = [self.consts[i] if i else None for i in inputs]
            with np.errstate(all="ignore"):
                values = KERNELS[op](node, *args)
            for o, v, ti in zip(outputs, values, outs):
                self.add_const(o, np.asarray(v).astype(ti.dtype))
        else:
            self.names.add(node.name)
            self.nodes.append(node)
            for o, ti in zip(outputs, outs):
                self.infos[o] = ti
        return output if isinstance(output, str) else outputs


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def decode(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v
