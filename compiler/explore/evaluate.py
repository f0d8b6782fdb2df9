"""Evaluating design points: what one worker process (local or a Dask worker) runs.

A :class:`Task` is one config with every model and DRAM timing to measure on it, so a config is
synthesised once and a model compiled once per config. :func:`run_task` compiles each model for
the config, runs it on the functional simulator's cycle model (or, with ``rtl``, on Verilator)
once per DRAM timing with seeded inputs, and returns one result row per point: a dict with the
columns of :data:`~tessera.compiler.explore.db.COLUMNS`. Nothing here raises for a bad point: a
point that fails (compile error, synthesis failure, ...) becomes a row carrying its error.
Every figure depends only on the task, never on the process that ran it, so a sweep gives the
same rows locally and on a Dask cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tessera.compiler.explore.space import Point, config_label
from tessera.config import Config
from tessera.errors import CompileError, TesseraError
from tessera.sim.timing import DramTiming

__all__ = ["Task", "run_task", "error_rows", "check_model", "load_model", "model_names",
           "feeds_for", "DEVICES"]

DEVICES = ("fsim", "verilator")
CALIBRATION_BATCHES = 2


def model_names() -> tuple[str, ...]:
    """The zoo models ``--models`` accepts by name."""
    return ("resnet18", "resnet_tiny", "mobilenet_v1", "mobilenet_tiny", "mlp", "small_cnn")


def check_model(name: str) -> None:
    """:class:`CompileError` unless ``name`` is a zoo model or an existing ``.onnx`` file."""
    if not isinstance(name, str):
        raise CompileError(f"a model must be a zoo name or an .onnx path, not {name!r}")
    if name in model_names():
        return
    if Path(name).suffix != ".onnx":
        raise CompileError(f"model must be a zoo name ({', '.join(model_names())}) or an .onnx "
                           f"file, not {name!r}")
    if not Path(name).is_file():
        raise CompileError(f"model file {name!r} does not exist or is not a regular file")


def load_model(name: str):
    """A zoo model by name, or an ``.onnx`` file (loaded by the compiler's frontend: a regular
    file, parsed, never executed)."""
    from tessera.compiler import zoo
    from tessera.compiler.frontend.importer import load_model as load_onnx

    check_model(name)
    if name in model_names():
        return getattr(zoo, name)()
    return load_onnx(name)


def _input_shapes(proto) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        shape = tuple(d.dim_value for d in dims)
        if any(v <= 0 for v in shape):
            raise CompileError(f"model input {vi.name!r} has a dynamic or zero dimension "
                               f"{[d.dim_param or d.dim_value for d in dims]}; a sweep needs "
                               f"static input shapes")
        out[vi.name] = shape
    return out


def feeds_for(proto, seed: int, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` seeded standard-normal float32 input dicts for the model's inputs."""
    shapes = _input_shapes(proto)
    rng = np.random.default_rng(seed)
    return [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
            for _ in range(count)]


@dataclass(frozen=True)
class Task:
    """One model on one config: ``points`` all share the config and differ in DRAM timing."""

    model: str
    points: tuple[Point, ...]
    area: bool = False
    fmax: bool = False
    device: str = "fsim"
    seed: int = 0
    synth_timeout: float | None = None

    @property
    def config(self) -> Config | None:
        return self.points[0].config


def _row(model: str, p: Point, device: str) -> dict[str, Any]:
    return {"model": model, "config_json": p.config_json,
            "label": config_label(p.config, dict(p.values)),
            "read_latency": p.dram.read_latency, "beats_per_cycle": p.dram.beats_per_cycle,
            "device": device, "cycles": None, "utilisation": None, "lut": None, "ff": None,
            "bram": None, "dsp": None, "fmax_mhz": None, "accel_layers": None,
            "cpu_ops": None, "compile_seconds": None, "run_seconds": None, "error": None}


def error_rows(task: Task, error: str) -> list[dict[str, Any]]:
    """The rows of ``task`` with every point failed by ``error``."""
    rows = [_row(task.model, p, task.device) for p in task.points]
    for r in rows:
        r["error"] = error
    return rows


def _hw_cost(task: Task) -> tuple[dict[str, Any], str | None]:
    from tessera.compiler.explore import hwcost

    if not (task.area or task.fmax):
        return {}, None
    try:
        cost = (hwcost.fmax if task.fmax else hwcost.area)(task.config, task.synth_timeout)
    except TesseraError as exc:
        return {}, f"{'fmax' if task.fmax else 'area'}: {exc}"
    out = {"lut": cost.lut, "ff": cost.ff, "bram": cost.bram, "dsp": cost.dsp}
    if task.fmax:
        out["fmax_mhz"] = cost.fmax_mhz
    return out, None


def _measure(compiled, feeds: dict[str, np.ndarray], dram: DramTiming, device: str
             ) -> dict[str, Any]:
    t0 = time.perf_counter()
    _, prof = compiled.run(feeds, device=device, profile=True,
                           read_latency=dram.read_latency, beats_per_cycle=dram.beats_per_cycle)
    tot = prof.totals()
    return {"cycles": tot["cycles"], "utilisation": tot.get("utilisation"),
            "accel_layers": tot["accel_layers"], "cpu_ops": tot["cpu_ops"],
            "run_seconds": time.perf_counter() - t0}


def _fail(row: dict[str, Any], error: str) -> None:
    row["error"] = error if row["error"] is None else f"{row['error']}; {error}"


def run_task(task: Task) -> list[dict[str, Any]]:
    """One result row per point of ``task`` (see the module docstring)."""
    from tessera.compiler.api import compile as tcompile

    if task.config is None:
        return error_rows(task, f"config: {task.points[0].error}")
    rows = [_row(task.model, p, task.device) for p in task.points]
    cost, cost_error = _hw_cost(task)
    for r in rows:
        r.update(cost)
        r["error"] = cost_error
    try:
        proto = load_model(task.model)
        cal = feeds_for(proto, task.seed, CALIBRATION_BATCHES)
        (feeds,) = feeds_for(proto, task.seed + 1, 1)
        t0 = time.perf_counter()
        compiled = tcompile(proto, config=task.config, calibration=cal)
        seconds = time.perf_counter() - t0
    except TesseraError as exc:
        for r in rows:
            _fail(r, f"compile: {exc}")
        return rows
    try:
        for p, r in zip(task.points, rows):
            r["compile_seconds"] = seconds
            try:
                r.update(_measure(compiled, feeds, p.dram, task.device))
            except TesseraError as exc:
                _fail(r, f"run: {exc}")
    finally:
        compiled.close()
    return rows
