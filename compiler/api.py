"""``tessera.compile`` and ``CompiledModel``: ONNX in, a runnable, saveable int8 model out.

The pipeline reads top to bottom::

    graph = import_onnx(model)                 # our IR, shapes folded
    graph = run_pipeline(graph, PASSES)        # fold, fuse, dead-code
    qmodel = quantize(graph, calibration)      # calibrated int8 with accelerator epilogues
    plan = lower(qmodel.graph, config)         # accelerator streams + LLVM CPU kernels
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tessera.compiler import cpu_ops
from tessera.compiler.frontend import import_onnx
from tessera.compiler.lower import AccelStep, CpuStep, Plan, Slot, lower, partition_report
from tessera.compiler.passes import DEFAULT_PIPELINE, run_pipeline
from tessera.compiler.quantize import quantize
from tessera.config import Config
from tessera.driver import open_device
from tessera.driver.base import Device
from tessera.errors import ArtifactError, CompileError
from tessera.runtime.artifact import (
    pack_arrays,
    read_container,
    unpack_arrays,
    write_container,
)
from tessera.runtime.executor import Executor, Profile

__all__ = ["compile", "load", "CompiledModel", "Profile"]

ARTIFACT_KIND = "tessera-compiled-model"


class CompiledModel:
    """A model compiled for one accelerator config; runs on any device kind of that config."""

    def __init__(self, plan: Plan, input_specs: dict[str, tuple[tuple[int, ...], str]],
                 meta: dict[str, Any] | None = None, quantized=None):
        self.plan = plan
        self.config = plan.config
        self.input_specs = input_specs
        self.meta = meta or {}
        self.quantized = quantized  # QuantizedModel (only on a freshly compiled model)
        self._executors: dict[Any, tuple[Device, Executor, bool]] = {}

    @property
    def input_names(self) -> list[str]:
        return list(self.plan.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.plan.outputs)

    # -- running -----------------------------------------------------------------------------

    def _executor(self, device: str | Device, options: dict[str, Any]) -> Executor:
        key = device if isinstance(device, str) else id(device)
        if key not in self._executors:
            if isinstance(device, str):
                dev = open_device(device, self.config, **options)
                owned = True
            elif isinstance(device, Device):
                dev, owned = device, False
            else:
                raise CompileError(f"device must be a kind name or a Device, not {device!r}")
            self._executors[key] = (dev, Executor(self.plan, dev), owned)
        return self._executors[key][1]

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise CompileError(f"feeds must be a dict of input name -> array, not "
                               f"{type(feeds).__name__}")
        missing = [n for n in self.input_specs if n not in feeds]
        extra = [n for n in feeds if n not in self.input_specs]
        if missing or extra:
            raise CompileError(f"feeds must name exactly the inputs {list(self.input_specs)}; "
                               f"missing {missing}, unknown {extra}")
        out = {}
        for name, (shape, dtype) in self.input_specs.items():
            arr = np.asarray(feeds[name])
            if tuple(arr.shape) != tuple(shape):
                raise CompileError(f"input {name!r} must have shape {list(shape)}, not "
                                   f"{list(arr.shape)}")
            if not np.issubdtype(arr.dtype, np.number):
                raise CompileError(f"input {name!r} must be numeric, not {arr.dtype}")
            if np.issubdtype(np.dtype(dtype), np.floating) and not np.isfinite(arr).all():
                raise CompileError(f"input {name!r} contains NaN or infinity")
            out[name] = arr.astype(dtype)
        return out

    def run(self, feeds: Mapping[str, np.ndarray], device: str | Device = "fsim",
            profile: bool = False, progress: bool = False, timeout_cycles: int | None = None,
            **device_options: Any):
        """Outputs in graph order; with ``profile=True`` also a per-layer :class:`Profile`."""
        ex = self._executor(device, device_options)
        outs, prof = ex.run(self._check_feeds(feeds), profile=profile, progress=progress,
                            timeout_cycles=timeout_cycles)
        return (outs, prof) if profile else outs

    def close(self) -> None:
        for dev, ex, owned in self._executors.values():
            ex.close()
            if owned:
                dev.close()
        self._executors.clear()

    # -- reports -----------------------------------------------------------------------------

    def summary(self) -> str:
        acc = [s for s in self.plan.steps if s.kind == "accel"]
        cpu = [s for s in self.plan.steps if s.kind == "cpu"]
        macs = sum(s.info.get("macs", 0) for s in acc)
        insns = sum(s.insn_count for s in acc)
        return (f"{len(acc)} accelerator layers ({macs / 1e6:.1f} M MACs, {insns} "
                f"instructions), {len(cpu)} CPU operators, arena {self.plan.arena_size} B, "
                f"params {self.plan.params_size} B, config {self.config.summary()}")

    # -- saving ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write one self-contained file (no pickle); :func:`load` reads it back."""
        plan = self.plan
        index, blob = pack_arrays(plan.params)
        sections: dict[str, bytes] = {"params": blob}
        steps = []
        for k, step in enumerate(plan.steps):
            entry: dict[str, Any] = {"kind": step.kind, "name": step.name,
                                     "inputs": step.inputs, "outputs": step.outputs,
                                     "info": _jsonable(step.info)}
            if isinstance(step, AccelStep):
                entry.update({"op": step.op, "uop_load_pcs": step.uop_load_pcs})
                sections[f"code/{k}"] = step.code
                sections[f"uops/{k}"] = step.uop_words
            else:
                entry["op"] = step.op.to_json()
            steps.append(entry)
        graph = {"inputs": plan.inputs, "outputs": plan.outputs,
                 "slots": [s.to_json() for s in plan.slots.values()], "steps": steps,
                 "arena_size": plan.arena_size, "params_size": plan.params_size,
                 "input_specs": {k: [list(v[0]), v[1]] for k, v in self.input_specs.items()}}
        sections["graph.json"] = json.dumps(graph).encode()
        meta = {"kind": ARTIFACT_KIND, "config": self.config.to_dict(), "params_index": index,
                "meta": _jsonable(self.meta)}
        write_container(path, sections, meta)

    @classmethod
    def load(cls, path: str | Path) -> CompiledModel:
        sections, meta = read_container(path)
        if meta.get("kind") != ARTIFACT_KIND:
            raise ArtifactError(f"{str(path)!r} is a Tessera container but not a compiled model")
        try:
            cfg = Config.from_dict(meta["config"])
            graph = json.loads(sections["graph.json"])
            params = unpack_arrays(meta["params_index"], sections["params"])
            slots = {d["name"]: Slot.from_json(d) for d in graph["slots"]}
            steps: list[AccelStep | CpuStep] = []
            for k, e in enumerate(graph["steps"]):
                if e["kind"] == "accel":
                    steps.append(AccelStep(e["name"], e["op"], e["inputs"], e["outputs"],
                                           sections[f"code/{k}"], sections[f"uops/{k}"],
                                           list(e["uop_load_pcs"]), e["info"]))
                else:
                    steps.append(CpuStep(e["name"], cpu_ops.CpuOp.from_json(e["op"]),
                                         e["inputs"], e["outputs"], e["info"]))
            plan = Plan(cfg, slots, steps, graph["inputs"], graph["outputs"],
                        graph["arena_size"], params, graph["params_size"])
            specs = {k: (tuple(v[0]), v[1]) for k, v in graph["input_specs"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{str(path)!r} is not a well-formed compiled model: "
                                f"{type(exc).__name__}: {exc}") from None
        return cls(plan, specs, meta.get("meta", {}))


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _random_calibration(graph, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(graph.tensors[name].shape).astype(np.float32)
             for name in graph.inputs} for _ in range(count)]


def compile(model: Any, config: Config | str | None = None,
            calibration: Iterable[Mapping[str, np.ndarray]] | None = None, *,
            input_shapes: Mapping[str, Iterable[int]] | None = None,
            calibration_method: str = "mse", dump_ir: str | Iterable[str] | None = None,
            double_buffer: bool = True) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto) to int8 for ``config``.

    ``calibration`` is an iterable of input dicts (float32 arrays); without it, eight batches of
    seeded standard-normal data are used and the model's ``meta`` records that.
    """
    t0 = time.perf_counter()
    cfg = Config.resolve(config)
    graph = import_onnx(model, input_shapes=input_shapes)
    passes = list(DEFAULT_PIPELINE)
    graph = run_pipeline(graph, passes, dump_after=dump_ir)
    meta: dict[str, Any] = {"calibration": "given"}
    if calibration is None:
        calibration = _random_calibration(graph, 8)
        meta["calibration"] = "random (8 seeded standard-normal batches)"
    qmodel = quantize(graph, calibration, method=calibration_method)
    plan = lower(qmodel.graph, cfg, double_buffer=double_buffer)
    specs = {name: (tuple(graph.tensors[name].shape), graph.tensors[name].dtype)
             for name in graph.inputs}
    meta["partition"] = partition_report(qmodel.graph)
    meta["compile_seconds"] = time.perf_counter() - t0
    return CompiledModel(plan, specs, meta, qmodel)


def load(path: str | Path) -> CompiledModel:
    """Read a model written by :meth:`CompiledModel.save`."""
    return CompiledModel.load(path)

