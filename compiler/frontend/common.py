"""Helpers shared by the ONNX converters: optional inputs, axes, padding, dtype alignment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from tessera.compiler.frontend.context import Ctx, Unsupported, decode

__all__ = ["opt_input", "const_list", "axes_arg", "spatial_pads", "int_list",
           "same_dtype_inputs", "norm_axes"]


def opt_input(n: onnx.NodeProto, k: int) -> str:
    """Input ``k`` of ``n`` or ``""`` when absent."""
    return n.input[k] if k < len(n.input) else ""


def const_list(ctx: Ctx, name: str, what: str) -> list[int]:
    """The integer values of constant input ``name``."""
    return [int(v) for v in ctx.const(name, what).reshape(-1)]


def int_list(values: Sequence) -> list[int]:
    return [int(v) for v in values]


def norm_axes(axes: Sequence[int], rank: int, what: str) -> list[int]:
    out = []
    for ax in axes:
        if not -rank <= int(ax) < max(rank, 1):
            raise Unsupported(f"{what} {int(ax)} is out of range for rank {rank}")
        out.append(int(ax) % rank if rank else 0)
    if len(set(out)) != len(out):
        raise Unsupported(f"{what} {list(axes)} repeat an axis")
    return out


def axes_arg(ctx: Ctx, n: onnx.NodeProto, a: dict, what: str, input_index: int = 1
             ) -> list[int] | None:
    """Axes given as the ``axes`` attribute or as constant input ``input_index``; None when
    neither is given (or the input is an empty tensor)."""
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    name = opt_input(n, input_index)
    if name:
        v = ctx.const(name, f"{what} axes")
        return [int(x) for x in v.reshape(-1)] if v.size else None
    return None


def spatial_pads(a: dict, in_size: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dil: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis from ``pads`` or ``auto_pad`` (ONNX rules)."""
    nd = len(in_size)
    auto = decode(a.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        p = list(a.get("pads", [0] * (2 * nd)))
        if len(p) != 2 * nd:
            raise Unsupported(f"pads {p} must have {2 * nd} values")
        if any(v < 0 for v in p):
            raise Unsupported(f"negative pads {p} are not supported")
        return p[:nd], p[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, not "
                          f"{auto!r}")
    begin, end = [], []
    for size, k, s, d in zip(in_size, kernel, strides, dil):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


def same_dtype_inputs(ctx: Ctx, names: Sequence[str], what: str) -> list[str]:
    """Inputs of one dtype: constants of another dtype are converted (a float constant
    exponent for a float base, say); a run-time tensor of another dtype is an error."""
    dts = [ctx.info(i).dtype for i in names]
    runtime = [d for i, d in zip(names, dts) if not ctx.is_const(i)]
    want = runtime[0] if runtime else dts[0]
    if any(d != want for d in runtime):
        raise Unsupported(f"{what} operands must have one dtype, not {dts}")
    out = []
    for i, d in zip(names, dts):
        if d != want:
            i = ctx.add_const(ctx.tmp(i), ctx.consts[i].astype(np.dtype(want)))
        out.append(i)
    return out
