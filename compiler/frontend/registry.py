"""The table of ONNX operator converters, keyed by (domain, op type).

A converter turns one ONNX node into IR nodes or constants through the import context::

    @converter("HardSigmoid")
    def _hard_sigmoid(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
        ctx.emit("hard_sigmoid", [n.input[0]], n.output[0], alpha=..., beta=...)

It raises :class:`~tessera.compiler.frontend.context.Unsupported` with the reason when it cannot
convert the node. The default domain is ``""`` (``"ai.onnx"`` is the same domain). Each op family
lives in its own module (``ops_*.py``) that registers here; the importer imports them all.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from tessera.compiler.frontend.context import Ctx

__all__ = ["Converter", "CONVERTERS", "converter", "domain_of", "supported_ops"]

Converter = Callable[[Ctx, onnx.NodeProto, dict], None]
CONVERTERS: dict[tuple[str, str], Converter] = {}


def domain_of(domain: str) -> str:
    """The canonical name of an ONNX domain (``"ai.onnx"`` -> ``""``)."""
    return "" if domain in ("", "ai.onnx") else domain


def converter(*ops: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of ``ops`` in ``domain``."""
    def deco(fn: Converter) -> Converter:
        for op in ops:
            key = (domain_of(domain), op)
            if key in CONVERTERS:
                raise AssertionError(f"two converters for {key}")
            CONVERTERS[key] = fn
        return fn
    return deco


def supported_ops() -> tuple[str, ...]:
    """Every supported op, as ``Op`` (default domain) or ``domain:Op``."""
    return tuple(sorted(op if not dom else f"{dom}:{op}" for dom, op in CONVERTERS))
