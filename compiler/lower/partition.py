"""The ``partition`` pass: which nodes run on the accelerator, which on the CPU.

Accelerator: ``qconv2d`` (any groups, stride, dilation and asymmetric padding) with constant
weights and bias, and ``qdense`` with constant weights and
bias, when at least the smallest tile (one output pixel of one channel block over one kernel
tap) fits the accelerator's buffers: the kernel library then tiles it along whatever it needs
(batch, output channels, rows, columns, input channels, kernel rows and columns), so no layer
is too big for a config that can run a 1x1 convolution (``check_config``); on a config too
small for even that tile the pass raises a :class:`CompileError` naming the node (a layer is
never sent to the CPU for its size). A grouped convolution (depthwise included) runs on
block-diagonal or windowed weight blocks (zeros off its groups, so part of the multipliers
idle; :func:`~tessera.runtime.accel.conv2d.group_blocks`) and goes to the accelerator when
the tiling's estimated cycles at the config's clock beat the host's time including moving its
tensors (:class:`HostModel`). Everything else runs on the CPU. The pass records the decision
on every node as ``attrs["target"]`` (``"accel"`` or ``"cpu"``), for a CPU node that is an
accelerator op why (``attrs["cpu_reason"]``), and for a grouped convolution on the
accelerator the comparison that sent it there (``attrs["accel_reason"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.compiler.ir import Graph, Node
from tessera.config import Config
from tessera.errors import CompileError, ProgramError
from tessera.runtime.accel import (
    ConvGeom,
    ConvShape,
    ConvTiles,
    dense_shape,
    lower_epilogue,
    plan_conv2d,
)
from tessera.runtime.accel.conv2d import fits

__all__ = ["accel_capable", "partition", "partition_report", "targets_assigned", "HostModel",
           "HOST"]


def accel_capable(g: Graph, n: Node, cfg: Config) -> str | None:
    """None if ``n`` can run on the accelerator, else why not (for the partition report)."""
    if n.op not in ("qconv2d", "qdense"):
        return "no accelerator kernel for this op"
    if n.inputs[1] not in g.constants or (n.input(2) and n.input(2) not in g.constants):
        return "weights are not constant"
    ranks = {"qconv2d": 4, "qdense": 2}[n.op]
    if len(g.tensors[n.inputs[0]].shape) != ranks or g.tensors[n.inputs[0]].dtype != "int8":
        return f"input is not a {ranks}-D int8 tensor"
    return None


def _no_tiling(g: Graph, n: Node, cfg: Config) -> str | None:
    """Why not even the smallest tile of an accelerator-capable ``n`` fits the accelerator
    (None: one does, and the kernel library tiles the layer along whatever it needs)."""
    w = g.constants[n.inputs[1]]
    x = g.tensors[n.inputs[0]].shape
    bias = g.constants[n.input(2)] if n.input(2) else None
    try:
        if n.op == "qconv2d":
            shape = ConvShape.make(tuple(x), w.shape, tuple(n.attrs["strides"]),
                                   tuple(n.attrs["pads"]),
                                   tuple(n.attrs.get("dilations", (1, 1))),
                                   n.attrs.get("groups", 1))
        else:
            shape = dense_shape(x[0], x[1], w.shape[0])
        geom = ConvGeom.of(cfg, shape)
        prog = lower_epilogue(n.attrs["epilogue"], bias, int(w.shape[0]))
    except ProgramError as exc:
        return str(exc)
    why = fits(cfg, geom, ConvTiles(1, 1, 1, False, 1, 1, 1, tkw=1), prog)
    if why is None:
        return None
    return (f"no conv2d tiling fits {cfg.summary()}: even a 1x1x1 tile over one kernel tap "
            f"fails ({why})")


@dataclass(frozen=True)
class HostModel:
    """What running a layer on the host costs, for the per-layer choice of grouped
    convolutions (the accelerator runs them on weight blocks with zeros off the groups: one
    sixteenth of its multipliers busy when depthwise on 16-channel blocks). ``macs_per_s``: the
    host's int8 grouped kernel (measured 10 GMAC/s depthwise on the 2-core development machine,
    ``runtime/cpu`` ``Conv``); ``convert_bytes_per_s``: its
    blocked-layout pack/unpack (measured 4.4 GB/s); ``link_bytes_per_s``: moving the layer's
    input from and its output to device memory (default: the boards' 3 Mbaud host link,
    295 kB/s, docs/host-link.md; ``inf`` for a simulated device)."""

    macs_per_s: float = 10e9
    convert_bytes_per_s: float = 4.4e9
    link_bytes_per_s: float = 295e3

    def cpu_seconds(self, macs: int, in_bytes: int, out_bytes: int) -> float:
        moved = in_bytes + out_bytes
        return (macs / self.macs_per_s + moved / self.convert_bytes_per_s
                + moved / self.link_bytes_per_s)


HOST = HostModel()


def _grouped_choice(g: Graph, n: Node, cfg: Config, host: HostModel) -> tuple[bool, str]:
    """For a grouped convolution: (the host is faster, the comparison in words)."""
    w = g.constants[n.inputs[1]]
    x = g.tensors[n.inputs[0]]
    y = g.tensors[n.outputs[0]]
    bias = g.constants[n.input(2)] if n.input(2) else None
    shape = ConvShape.make(tuple(x.shape), w.shape, tuple(n.attrs["strides"]),
                           tuple(n.attrs["pads"]), tuple(n.attrs.get("dilations", (1, 1))),
                           n.attrs["groups"])
    prog = lower_epilogue(n.attrs["epilogue"], bias, int(w.shape[0]))
    geom = ConvGeom.of(cfg, shape)
    cycles = plan_conv2d(cfg, geom, prog).est_cycles
    accel = cycles / (cfg.clock_mhz * 1e6)
    cpu = host.cpu_seconds(shape.macs, x.nbytes, y.nbytes)
    useful = shape.macs / (geom.gemm_steps() * cfg.macs_per_gemm_step)
    kind = "depthwise" if shape.depthwise else (
        f"grouped ({shape.groups} groups of {shape.c // shape.groups} input channels)")
    if cpu < accel:
        return True, (f"{kind}: the host is faster ({cpu * 1e3:.3f} ms vs "
                      f"{accel * 1e3:.3f} ms on the accelerator at {cfg.clock_mhz:g} MHz, "
                      f"{useful:.0%} of its MACs useful)")
    return False, (f"{kind}: {accel * 1e3:.3f} ms at {cfg.clock_mhz:g} MHz ({useful:.0%} of "
                   f"its MACs useful) vs {cpu * 1e3:.3f} ms on the host")


def partition(g: Graph, cfg: Config, host: HostModel = HOST) -> tuple[Graph, bool]:
    """Mark every node with its target (see the module docstring)."""
    nodes = []
    for n in g.nodes:
        why = accel_capable(g, n, cfg)
        if why is None:
            too_big = _no_tiling(g, n, cfg)
            if too_big is not None:
                raise CompileError(f"node {n.name!r} ({n.op}): {too_big}")
            if n.op == "qconv2d" and n.attrs.get("groups", 1) != 1:
                on_cpu, words = _grouped_choice(g, n, cfg, host)
                if not on_cpu:
                    nodes.append(n.with_attrs(target="accel", accel_reason=words))
                    continue
                why = words
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
            why = n.attrs.get("accel_reason")
            out.append((n.name, n.op, f"accelerator ({why})" if why else "accelerator"))
        else:
            why = n.attrs.get("cpu_reason")
            out.append((n.name, n.op, f"cpu ({why})" if why else "cpu"))
    return out
