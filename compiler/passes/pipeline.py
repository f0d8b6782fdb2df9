"""The pass contract and the one pipeline runner.

A pass is a short named unit with one contract: ``apply(graph) -> (graph, changed)``; it never
mutates the graph it is given. A pipeline is a flat list of passes; :func:`run_pipeline` runs it
once, verifies the graph after each pass, and prints the IR after any pass named in
``dump_after`` (``tessera compile --dump-ir PASS``). The compiler's pipeline
(:func:`tessera.compiler.api.compile`) is graph rewrites, quantisation, then the lowering passes
(narrow-input folding, partition, layout assignment, memory planning).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from tessera.compiler.ir import Graph
from tessera.errors import CompileError

__all__ = ["Pass", "PassLike", "PASSES", "register", "get_pass", "run_pipeline"]


class PassLike(Protocol):
    """Anything with a ``name`` and the pass contract (a :class:`Pass`, or a stateful pass such
    as :class:`~tessera.compiler.quant.quantize.Quantize`)."""

    name: str

    def apply(self, graph: Graph) -> tuple[Graph, bool]: ...


@dataclass(frozen=True)
class Pass:
    """A named graph rewrite."""

    name: str
    apply: Callable[[Graph], tuple[Graph, bool]]

    def __call__(self, graph: Graph) -> tuple[Graph, bool]:
        return self.apply(graph)


# Passes that need nothing but the graph, by name (the target-independent rewrites).
PASSES: dict[str, Pass] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(graph) -> (graph, changed)`` as pass ``name``."""
    def deco(fn: Callable[[Graph], tuple[Graph, bool]]) -> Callable:
        PASSES[name] = Pass(name, fn)
        return fn
    return deco


def get_pass(p: str | PassLike) -> PassLike:
    if not isinstance(p, str):
        return p
    try:
        return PASSES[p]
    except (KeyError, TypeError):
        raise CompileError(f"unknown pass {p!r}; known passes: {', '.join(sorted(PASSES))}") \
            from None


def run_pipeline(graph: Graph, passes: Sequence[str | PassLike],
                 dump_after: str | Iterable[str] | None = None, out: TextIO | None = None,
                 verify: bool = True,
                 on_pass: Callable[[str, float], None] | None = None) -> Graph:
    """Run ``passes`` in order; after each pass named in ``dump_after`` (or ``"all"``) print the
    IR to ``out`` (stdout by default). A name in ``dump_after`` that is not in the pipeline is an
    error raised before any pass runs. ``on_pass(name, seconds)`` is told about each pass as it
    finishes (verification included): the compiler's progress bar and phase times."""
    wanted = {dump_after} if isinstance(dump_after, str) else set(dump_after or ())
    resolved = [get_pass(p) for p in passes]
    unknown = wanted - {p.name for p in resolved} - {"all"}
    if unknown:
        raise CompileError(f"--dump-ir names pass(es) {sorted(unknown)} not in the pipeline "
                           f"{[p.name for p in resolved]}")
    for p in resolved:
        t0 = time.perf_counter()
        graph, _ = p.apply(graph)
        if verify:
            graph.verify()
        if on_pass is not None:
            on_pass(p.name, time.perf_counter() - t0)
        if p.name in wanted or "all" in wanted:
            print(f"# IR after {p.name}", file=out or sys.stdout)
            print(graph.dump(), file=out or sys.stdout)
    return graph
