"""The ``partition`` pass: which nodes run on the accelerator, which on the CPU.

Accelerator: ``qconv2d`` with ``groups == 1`` (any stride, dilation and asymmetric padding the
LOAD padding fields can hold) and constant weights and bias, and ``qdense`` with constant
weights and bias. Everything else runs on the CPU. The pass records the decision on every node
as ``attrs["target"]`` (``"accel"`` or ``"cpu"``) and, for a CPU node that is an accelerator
op, why (``attrs["cpu_reason"]``).
"""

from __future__ import annotations

from tessera.compiler.ir import Graph, Node
from tessera.config import Config
from tessera.errors import CompileError
from tessera.isa import layout

__all__ = ["accel_capable", "partition", "partition_report", "targets_assigned"]


def accel_capable(g: Graph, n: Node, cfg: Config) -> str | None:
    """None if ``n`` can run on the accelerator, else why not (for the partition report)."""
    if n.op not in ("qconv2d", "qdense"):
        return "no accelerator kernel for this op"
    if n.inputs[1] not in g.constants or (n.input(2) and n.input(2) not in g.constants):
        return "weights are not constant"
    ranks = {"qconv2d": 4, "qdense": 2}[n.op]
    if len(g.tensors[n.inputs[0]].shape) != ranks or g.tensors[n.inputs[0]].dtype != "int8":
        return f"input is not a {ranks}-D int8 tensor"
    if n.op == "qconv2d":
        if n.attrs.get("groups", 1) != 1:
            return "grouped/depthwise convolution"
        top = layout(cfg).limits.max_pad
        if max(n.attrs.get("pads", (0, 0, 0, 0))) > top:
            return f"padding above {top}"
    return None


def partition(g: Graph, cfg: Config) -> tuple[Graph, bool]:
    """Mark every node with its target (see the module docstring)."""
    nodes = []
    for n in g.nodes:
        why = accel_capable(g, n, cfg)
        if why is None:
            nodes.append(n.with_attrs(target="accel"))
        elif n.op in ("qconv2d", "qdense"):
            nodes.append(n.with_attrs(target="cpu", cpu_reason=why))
        else:
            nodes.append(n.with_attrs(target="cpu"))
    return g.replace(nodes=nodes), True


def targets_assigned(g: Graph, what: str) -> None:
    missing = [n.name for n in g.nodes if n.attrs.get("target") not in ("accel", "cpu")]
    if missing:
        raise CompileError(f"{what} needs every node partitioned (run the partition pass "
                           f"first); not partitioned: {missing[:5]}")


def partition_report(g: Graph) -> list[tuple[str, str, str]]:
    """(node name, op, where it runs / why not on the accelerator) for every node of a
    partitioned graph."""
    targets_assigned(g, "the partition report")
    out = []
    for n in g.nodes:
        if n.attrs["target"] == "accel":
            out.append((n.name, n.op, "accelerator"))
        else:
            why = n.attrs.get("cpu_reason")
            out.append((n.name, n.op, f"cpu ({why})" if why else "cpu"))
    return out
