"""Import state shared by the ONNX converters: constants, tensor infos, emitted nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from tessera.compiler.ir import OPS, Node, TensorInfo
from tessera.compiler.reference import KERNELS
from tessera.errors import CompileError

__all__ = ["Unsupported", "Ctx", "attrs_of", "decode", "ONNX_DTYPES"]

# ONNX element types the IR has (doubles become float32).
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.DOUBLE: "float32",
}


class Unsupported(Exception):
    """Raised by a converter; collected into the final CompileError."""


class Ctx:
    """Import state: constants, tensor infos, emitted nodes."""

    def __init__(self, opset: int):
        self.opset = opset
        self.consts: dict[str, np.ndarray] = {}
        self.infos: dict[str, TensorInfo] = {}
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.counter = 0
        self.cur = ""  # ONNX node name being converted

    # -- helpers used by converters ----------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def const(self, name: str, what: str = "input") -> np.ndarray:
        if not name or name not in self.consts:
            raise Unsupported(f"{what} {name!r} must be a constant (it is computed at run time)")
        return self.consts[name]

    def maybe_const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def tmp(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def add_const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        self.consts[name] = value
        self.infos[name] = TensorInfo(value.shape, str(value.dtype) if str(value.dtype) in
                                      ("float32", "int8", "int32", "int64", "uint8", "bool")
                                      else "float32")
        return name

    def emit(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        """Emit an IR node, or fold it when every input is a constant."""
        name = self.cur if self.cur not in self.names else f"{self.cur}#{self.counter}"
        self.counter += 1
        node = Node(op, tuple(inputs), (output,), attrs, name or f"{op}_{self.counter}")
        ins = [self.infos[i] if i else None for i in inputs]
        try:
            out = OPS[op].infer(node, ins, None)  # type: ignore[arg-type]
        except CompileError as exc:
            raise Unsupported(str(exc).split(": ", 1)[-1]) from None
        if all((not i) or i in self.consts for i in inputs) and op in KERNELS:
            args = [self.consts[i] if i else None for i in inputs]
            with np.errstate(all="ignore"):
                value = KERNELS[op](node, *args)[0]
            self.add_const(output, np.asarray(value).astype(out[0].dtype))
            return output
        self.names.add(node.name)
        self.nodes.append(node)
        self.infos[output] = out[0]
        return output


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def decode(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v
