"""``tessera.compile``: ONNX in, a runnable, saveable :class:`CompiledModel` out (int8 on the
accelerator, or ``precision="float"``: float32 CPU kernels only).

The whole compiler is one flat pipeline, run once; ``dump_ir`` prints the IR after any pass::

    graph = import_onnx(model)                      # our IR, shapes and constants folded
    graph = run_pipeline(graph, [
        *GRAPH_PASSES,          # fold_constants remove_identity fuse_elementwise
                                # fold_batchnorm fold_affine fuse_activation fuse_residual dce
        quantize,               # calibrated int8 with accelerator epilogues (not for float)
        *lowering_passes(cfg),  # fold_narrow_input partition assign_layouts group_siblings
                                # plan_memory
    ])
    plan = build_plan(graph, cfg)                   # accelerator streams + CPU kernel calls
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np

from tessera.compiler.frontend import import_onnx
from tessera.compiler.ir import Graph
from tessera.compiler.lower import (
    HostModel,
    build_plan,
    check_config,
    lowering_passes,
    partition_report,
)
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline
from tessera.compiler.quant import CALIBRATION_METHODS, Quantize
from tessera.compiler.quant.calibrate import check_batches
from tessera.config import Config
from tessera.errors import CompileError
from tessera.runtime.model import CompiledModel
from tessera.runtime.scratch import small_pages

__all__ = ["compile", "CompiledModel", "RANDOM_CALIBRATION_BATCHES", "PRECISIONS"]

RANDOM_CALIBRATION_BATCHES = 8
PRECISIONS = ("int8", "float")
# Models with at least this many bytes of constants (float weights) compile with numpy's
# huge-page advice off (the import always does): their footprint is larger than the memory
# other processes freed recently, and on this VM idle memory costs ~10x per byte to fault
# back in as huge pages (tessera.runtime.scratch). Measured, alternating fresh cold-cache
# compiles: light VGG-19 (575 MB) 2-2.5 CPU s faster without; ResNet-18 (47 MB) 0.25-0.35 s
# and light ResNet-50 (100 MB) ~0.3 s slower without (4 KB faults cost twice as much per
# byte when the memory is warm).
SMALL_PAGES_BYTES = 256 << 20


def _random_calibration(graph: Graph, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(graph.tensors[name].shape).astype(np.float32)
             for name in graph.inputs} for _ in range(count)]


def compile(model: Any, config: Config | str | None = None,
            calibration: Iterable[Mapping[str, np.ndarray]] | None = None, *,
            precision: str = "int8",
            input_shapes: Mapping[str, Iterable[int]] | None = None,
            calibration_method: str = "mse", dump_ir: str | Iterable[str] | None = None,
            double_buffer: bool = True, keep_float: Iterable[str] | str = (),
            activations: str = "auto", bias_correction: bool = True, tune: int = 0,
            host: HostModel | None = None, progress: bool | None = None) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto) for ``config``.

    ``precision="int8"`` (the default) quantises to int8 for the accelerator: ``calibration``
    is an iterable of input dicts (float arrays, one dict per batch); without it, eight batches
    of seeded standard-normal data are used and the model's ``meta`` records that. A
    pre-quantised model (QDQ or QOperator) runs with its own scales and needs no calibration.
    ``keep_float`` names nodes (after the graph rewrites: a fused conv+relu is named after the
    conv) that stay float inside the int8 model (``"auto"``, alone or among them: also the
    layers whose outputs got few calibration values per channel,
    :mod:`tessera.compiler.quant.quantize`); ``activations`` is ``"auto"``,
    ``"symmetric"`` or ``"asymmetric"`` (:mod:`tessera.compiler.quant.quantize`);
    ``bias_correction`` folds each int8 layer's mean error on the calibration batches into its
    bias (:mod:`tessera.compiler.quant.bias_correction`).
    ``precision="float"`` runs every op as an LLVM CPU kernel in float32 — the same graph
    rewrites, no quantisation, no calibration. ``tune``: for each accelerator layer, run the
    ``tune`` best tilings of a wider search through the cycle model of the RTL and keep the
    fastest (0: the analytic model alone). ``host``: the cost model of the host the partition
    weighs depthwise layers against (default: the board host link,
    :class:`~tessera.compiler.lower.HostModel`). ``progress`` draws a progress bar on stderr
    (default: when stderr is a terminal); ``meta["compile_phases"]`` records the seconds of
    each phase (import, every pass, plan building; the quantisation pass's calibration and
    bias correction apart from the rest of it, ``quantize``).
    """
    t0 = time.perf_counter()
    cfg = Config.resolve(config)
    if precision not in PRECISIONS:
        raise CompileError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    check_config(cfg)  # a config no layer can run on fails here, before any work
    if calibration_method not in CALIBRATION_METHODS:
        raise CompileError(f"calibration_method must be one of {CALIBRATION_METHODS}, not "
                           f"{calibration_method!r}")
    if precision == "float" and calibration is not None:
        raise CompileError("calibration is only used with precision='int8'; a float model "
                           "needs none")
    keep_float = (keep_float,) if isinstance(keep_float, str) else tuple(keep_float)
    if precision == "float" and keep_float:
        raise CompileError("keep_float is only used with precision='int8'; with "
                           "precision='float' every node is float")
    bar = _ProgressBar(progress)
    pages = ExitStack()
    try:
        with small_pages():
            graph = import_onnx(model, input_shapes=input_shapes)
        pages.enter_context(small_pages(
            sum(np.asarray(c).nbytes for c in graph.constants.values()) >= SMALL_PAGES_BYTES))
        bar.done("import", time.perf_counter() - t0)
        specs = {name: (tuple(graph.tensors[name].shape), graph.tensors[name].dtype)
                 for name in graph.inputs}
        if precision == "float":
            meta: dict[str, Any] = {"precision": "float"}
            quant = None
            passes = [*GRAPH_PASSES, *lowering_passes(cfg)]
        else:
            meta = {"precision": "int8", "calibration": "given"}
            if calibration is None:
                batches = _random_calibration(graph, RANDOM_CALIBRATION_BATCHES)
                meta["calibration"] = (f"random ({RANDOM_CALIBRATION_BATCHES} seeded "
                                       f"standard-normal batches)")
            else:
                batches = check_batches(graph, calibration)
            quant = Quantize(batches, calibration_method, activations=activations,
                             keep_float=keep_float, config=cfg, bias_correction=bias_correction)
            passes = [*GRAPH_PASSES, quant, *lowering_passes(cfg, host)]
        bar.expect(len(passes) + 1 + (2 if quant is not None else 0))

        def on_pass(name: str, seconds: float) -> None:
            if quant is not None and name == quant.name and quant.result is not None:
                # calibration, bias correction: phases of their own
                parts = quant.result.seconds
                for part, s in parts.items():
                    bar.done(part, s)
                seconds = max(0.0, seconds - sum(parts.values()))
            bar.done(name, seconds)

        graph = run_pipeline(graph, passes, dump_after=dump_ir, on_pass=on_pass)
        if quant is not None and quant.result is not None and quant.result.method == "model":
            meta["calibration"] = "none: the model's own quantisation scales"
        t1 = time.perf_counter()
        if quant is None:
            plan = build_plan(graph, cfg, double_buffer=double_buffer)
        else:
            plan = build_plan(graph, cfg, double_buffer=double_buffer, tune=tune)
        bar.done("build_plan", time.perf_counter() - t1)
    finally:
        pages.close()
        bar.close()
    meta["partition"] = partition_report(graph)
    meta["compile_seconds"] = time.perf_counter() - t0
    meta["compile_phases"] = bar.phases
    return CompiledModel(plan, specs, meta, None if quant is None else quant.result)


class _ProgressBar:
    """The compile's phases: their seconds, and a tqdm bar on stderr when ``enabled`` (None:
    when stderr is a terminal)."""

    def __init__(self, enabled: bool | None):
        self.phases: dict[str, float] = {}
        show = sys.stderr.isatty() if enabled is None else bool(enabled)
        self._bar = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=1, desc="compile", unit="phase", file=sys.stderr,
                             leave=False, bar_format="{desc} {bar} {n_fmt}/{total_fmt} "
                                                     "[{elapsed}]")

    def expect(self, more: int) -> None:
        if self._bar is not None:
            self._bar.total = self._bar.n + more
            self._bar.refresh()

    def done(self, name: str, seconds: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + seconds, 6)
        if self._bar is not None:
            self._bar.set_description_str(f"compile: {name[:16]:<16}", refresh=False)
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
