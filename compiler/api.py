"""``tessera.compile``: ONNX in, a runnable, saveable :class:`CompiledModel` out (int8 on the
accelerator, or ``precision="float"``: float32 CPU kernels only).

The whole compiler is one flat pipeline, run once; ``dump_ir`` prints the IR after any pass::

    graph = import_onnx(model)                      # our IR, shapes and constants folded
    graph = run_pipeline(graph, [
        *GRAPH_PASSES,          # fold_constants remove_identity fuse_elementwise
                                # fold_batchnorm fold_affine fuse_activation fuse_residual dce
        quantize,               # calibrated int8 with accelerator epilogues (not for float)
        *lowering_passes(cfg),  # fold_narrow_input partition assign_layouts plan_memory
    ])
    plan = build_plan(graph, cfg)                   # accelerator streams + CPU kernel calls
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tessera.compiler.frontend import import_onnx
from tessera.compiler.ir import Graph
from tessera.compiler.lower import build_plan, check_config, lowering_passes, partition_report
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline
from tessera.compiler.quant import CALIBRATION_METHODS, Quantize
from tessera.compiler.quant.calibrate import check_batches
from tessera.config import Config
from tessera.errors import CompileError
from tessera.runtime.model import CompiledModel

__all__ = ["compile", "CompiledModel", "RANDOM_CALIBRATION_BATCHES", "PRECISIONS"]

RANDOM_CALIBRATION_BATCHES = 8
PRECISIONS = ("int8", "float")


def _random_calibration(graph: Graph, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(graph.tensors[name].shape).astype(np.float32)
             for name in graph.inputs} for _ in range(count)]


def compile(model: Any, config: Config | str | None = None,
            calibration: Iterable[Mapping[str, np.ndarray]] | None = None, *,
            precision: str = "int8",
            input_shapes: Mapping[str, Iterable[int]] | None = None,
            calibration_method: str = "mse", dump_ir: str | Iterable[str] | None = None,
            double_buffer: bool = True, keep_float: Iterable[str] = (),
            activations: str = "auto", bias_correction: bool = True) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto) for ``config``.

    ``precision="int8"`` (the default) quantises to int8 for the accelerator: ``calibration``
    is an iterable of input dicts (float arrays, one dict per batch); without it, eight batches
    of seeded standard-normal data are used and the model's ``meta`` records that. A
    pre-quantised model (QDQ or QOperator) runs with its own scales and needs no calibration.
    ``keep_float`` names nodes (after the graph rewrites: a fused conv+relu is named after the
    conv) that stay float inside the int8 model; ``activations`` is ``"auto"``,
    ``"symmetric"`` or ``"asymmetric"`` (:mod:`tessera.compiler.quant.quantize`);
    ``bias_correction`` folds each int8 layer's mean error on the calibration batches into its
    bias (:mod:`tessera.compiler.quant.bias_correction`).
    ``precision="float"`` runs every op as an LLVM CPU kernel in float32 — the same graph
    rewrites, no quantisation, no calibration.
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
    keep_float = tuple(keep_float)
    if precision == "float" and keep_float:
        raise CompileError("keep_float is only used with precision='int8'; with "
                           "precision='float' every node is float")
    graph = import_onnx(model, input_shapes=input_shapes)
    specs = {name: (tuple(graph.tensors[name].shape), graph.tensors[name].dtype)
             for name in graph.inputs}
    if precision == "float":
        graph = run_pipeline(graph, [*GRAPH_PASSES, *lowering_passes(cfg)], dump_after=dump_ir)
        plan = build_plan(graph, cfg, double_buffer=double_buffer)
        meta = {"precision": "float", "partition": partition_report(graph),
                "compile_seconds": time.perf_counter() - t0}
        return CompiledModel(plan, specs, meta, None)
    meta: dict[str, Any] = {"precision": "int8", "calibration": "given"}
    if calibration is None:
        batches = _random_calibration(graph, RANDOM_CALIBRATION_BATCHES)
        meta["calibration"] = (f"random ({RANDOM_CALIBRATION_BATCHES} seeded standard-normal "
                               f"batches)")
    else:
        batches = check_batches(graph, calibration)
    quant = Quantize(batches, calibration_method, activations=activations,
                     keep_float=keep_float, config=cfg, bias_correction=bias_correction)
    graph = run_pipeline(graph, [*GRAPH_PASSES, quant, *lowering_passes(cfg)],
                         dump_after=dump_ir)
    if quant.result is not None and quant.result.method == "model":
        meta["calibration"] = "none: the model's own quantisation scales"
    plan = build_plan(graph, cfg, double_buffer=double_buffer)
    meta["partition"] = partition_report(graph)
    meta["compile_seconds"] = time.perf_counter() - t0
    return CompiledModel(plan, specs, meta, quant.result)
