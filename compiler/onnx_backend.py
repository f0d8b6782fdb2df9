"""Tessera as an ONNX backend (:class:`onnx.backend.base.Backend`): ``prepare``, ``run_model``,
``run_node``, ``supports_device``, so ONNX's conformance suite (``onnx.backend.test``) runs
against it::

    import tessera.onnx_backend as backend
    rep = backend.prepare(model, "CPU")
    outputs = rep.run([x])                 # or a dict name -> array

Float models compile with ``precision="float"`` (every op an LLVM CPU kernel); models with
integer/quantisation ops (QuantizeLinear, DequantizeLinear, QLinear*, QGemm, *Integer:
:data:`INTEGER_OPS`) with ``precision="int8"`` (the integer path: the model's own scales). A
DynamicQuantizeLinear has no scales of its own (they are computed from each input) and does not
make a model int8: alone, it is computed by float CPU kernels (see
:mod:`tessera.compiler.frontend.qlinear`). Tessera compiles for static
shapes and constant attributes: a graph input whose *value* the importer needs at compile time
(a Reshape shape, Resize scales, Slice starts, Pad pads ... fed as an input, as ONNX's node tests
do) is bound from the first ``run`` and the model is compiled for those values (one compiled
model per distinct value set); every other input stays a run-time input. Outputs come back in
graph order with the model's dtypes (doubles are computed and returned as float32: the IR has
no float64).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from tessera.compiler.api import compile as tessera_compile
from tessera.compiler.frontend import load_model
from tessera.compiler.frontend.context import ImportProblems
from tessera.compiler.frontend.importer import MAX_OPSET
from tessera.compiler.frontend.qlinear import QUANT_OPS
from tessera.errors import CompileError, InputError
from tessera.runtime.model import CompiledModel

__all__ = ["TesseraBackend", "TesseraRep", "prepare", "run_model", "run_node",
           "supports_device", "INTEGER_OPS"]

# the ops the integer path imports with the model's own scales (compiler/frontend/qlinear.py):
# a model with one of them compiles with precision="int8"
INTEGER_OPS = frozenset(QUANT_OPS) - {"DynamicQuantizeLinear"}


def _integer_model(m: onnx.ModelProto) -> bool:
    return any(n.op_type in INTEGER_OPS for n in m.graph.node)


class TesseraRep(BackendRep):
    """A prepared model: compiled now, or on the first run when input values are needed."""

    def __init__(self, model: onnx.ModelProto, device: str, config: Any, precision: str,
                 device_kind: str):
        self.model = model
        self.config = config
        self.precision = precision
        self.device_kind = device_kind
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = [vi.name for vi in model.graph.output]
        self.bind: set[str] = set()
        self._compiled: dict[tuple, CompiledModel] = {}
        try:
            self._compiled[()] = self._compile({}, None)
        except ImportProblems as exc:
            need = _needed_inputs(exc, self.input_names)
            if need is None:
                raise
            self.bind = need

    def _compile(self, bound: Mapping[str, np.ndarray],
                 shapes: Mapping[str, tuple[int, ...]] | None) -> CompiledModel:
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        if bound:
            keep = [vi for vi in m.graph.input if vi.name not in bound]
            del m.graph.input[:]
            m.graph.input.extend(keep)
            m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in bound.items())
        shapes = {k: v for k, v in (shapes or {}).items() if k not in bound}
        return tessera_compile(m, self.config, precision=self.precision,
                               input_shapes=shapes or None)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        feeds = self._feeds(inputs)
        # each round binds at least one more input (a bound value can reveal another input the
        # importer needs), so there are at most as many rounds as inputs
        for _ in range(len(self.input_names) + 1):
            key = tuple(sorted((k, feeds[k].dtype.str, feeds[k].shape, feeds[k].tobytes())
                               for k in self.bind))
            compiled = self._compiled.get(key)
            if compiled is None:
                bound = {k: feeds[k] for k in self.bind}
                shapes = {k: tuple(v.shape) for k, v in feeds.items()}
                try:
                    compiled = self._compile(bound, shapes)
                except ImportProblems as exc:
                    need = _needed_inputs(exc, self.input_names)
                    if need is None or need <= self.bind:
                        raise
                    self.bind |= need
                    continue
                self._compiled[key] = compiled
            runtime = {k: v for k, v in feeds.items() if k not in self.bind}
            outs = compiled.run(runtime, device=self.device_kind)
            return tuple(outs)
        raise CompileError(f"inputs {sorted(self.bind)} keep revealing inputs that must be "
                           f"constants")

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            inputs = list(inputs)
            if len(inputs) != len(self.input_names):
                raise InputError(f"the model has {len(self.input_names)} input(s) "
                                 f"{self.input_names}, not {len(inputs)}")
            feeds = {k: np.asarray(v) for k, v in zip(self.input_names, inputs)}
        # the IR computes doubles as float32 (documented); Tessera never casts silently else
        return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feeds.items()}


def _needed_inputs(exc: ImportProblems, inputs: Sequence[str]) -> set[str] | None:
    """The graph inputs to bind when every problem is a value needed at compile time, else
    None (the model is unsupported for another reason)."""
    need: set[str] = set()
    for p in exc.problems:
        if p.get("depends_on"):
            continue  # downstream of another problem: checked once that one is solved
        names = [n for n in p.get("needs_constant", []) if n in inputs]
        if not names:
            return None
        need.update(names)
    return need or None


class TesseraBackend(Backend):
    """ONNX backend on Tessera's compiler and runtime (device ``CPU``: CPU kernels, with the
    accelerator simulated by the functional simulator for int8 layers)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> TesseraRep:
        if not cls.supports_device(device):
            raise CompileError(f"device must be 'CPU', not {device!r}")
        m = load_model(model)
        precision = kwargs.pop("precision", None) or ("int8" if _integer_model(m) else "float")
        config = kwargs.pop("config", "default")
        kind = kwargs.pop("device_kind", "fsim")
        return TesseraRep(m, device, config, precision, kind)

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run one node on ``inputs`` (a list lined up with ``node.input``, or a dict)."""
        names = [i for i in node.input if i]
        if isinstance(inputs, Mapping):
            arrays = [np.asarray(inputs[i]) for i in names]
        else:
            arrays = [np.asarray(v) for v in inputs]
        if len(arrays) != len(names):
            raise InputError(f"node {node.name or node.op_type!r} has {len(names)} inputs, "
                             f"not {len(arrays)}")
        ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                             a.shape) for n, a in zip(names, arrays)]
        outs = []
        for k, o in enumerate(x for x in node.output if x):
            if outputs_info is not None and k < len(outputs_info):
                dtype, shape = outputs_info[k]
                outs.append(helper.make_tensor_value_info(
                    o, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
            else:
                outs.append(helper.make_empty_tensor_value_info(o))
        opset = kwargs.pop("opset_version", None) or MAX_OPSET
        graph = helper.make_graph([node], node.name or node.op_type, ins, outs)
        opsets = [helper.make_opsetid("", opset)]
        if node.domain not in ("", "ai.onnx"):
            opsets.append(helper.make_opsetid(node.domain, 1))
        model = helper.make_model(graph, opset_imports=opsets)
        return cls.run_model(model, dict(zip(names, arrays)), device, **kwargs)


prepare = TesseraBackend.prepare
run_model = TesseraBackend.run_model
run_node = TesseraBackend.run_node
supports_device = TesseraBackend.supports_device
