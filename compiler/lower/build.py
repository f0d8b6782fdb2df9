"""Lower a partitioned, layout-assigned, memory-planned graph to the runtime's
:class:`~tessera.runtime.plan.Plan`: one step per node, one slot per tensor.

- every non-constant tensor becomes an arena slot at the offset ``plan_memory`` chose, stored
  as its graph type says (blocked tensors in their packed shape);
- constants a CPU node reads become ``raw`` params slots, placed in order of first use;
- an accelerator node becomes an :class:`~tessera.runtime.plan.AccelStep` built by the
  accelerator kernel library (:mod:`tessera.runtime.accel`): its parameter arrays (packed
  weights, bias and multiplier rows) are placed in the params region, and its instruction stream
  addresses the virtual region bases the executor relocates;
- a CPU node becomes a :class:`~tessera.runtime.plan.CpuStep` of kernel descriptions
  (:func:`~tessera.compiler.lower.cpu.make_cpu_op`).
"""

from __future__ import annotations

import numpy as np

from tessera.compiler.ir import Graph, Node
from tessera.compiler.lower.cpu import make_cpu_op
from tessera.compiler.lower.partition import targets_assigned
from tessera.config import Config
from tessera.errors import CompileError, ConfigError, ProgramError
from tessera.runtime.accel import (
    ConvGeom,
    ConvShape,
    LayerAddrs,
    conv2d_params,
    dense_params,
    emit_conv2d,
    emit_dense,
    plan_conv2d,
    plan_dense,
)
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.layout import ceil_div
from tessera.runtime.plan import REGION_BASES, REGION_LIMIT, AccelStep, CpuStep, Plan, Slot

__all__ = ["build_plan", "cpu_macs", "param_align", "check_config"]


def param_align(cfg: Config) -> int:
    """Bytes each parameter array is aligned to in the params region: the config's largest DRAM
    element (so any memory type can address it) and at least one bus beat."""
    return max(cfg.dram_align, cfg.mem_bus_bytes)


def check_config(cfg: Config) -> None:
    """Raise :class:`ConfigError` when ``cfg`` cannot run even the smallest accelerator layer
    (a 1x1 convolution of one channel block at one pixel, with bias): its buffers are too small
    for any tile the accelerator kernel library can emit, so no model would compile. A layer
    that is merely too large for a config fails later, naming the layer."""
    shape = ConvShape.make((1, 1, 1, 1), (1, 1, 1, 1))
    try:
        plan_conv2d(cfg, ConvGeom.of(cfg, shape))
    except ProgramError as exc:
        raise ConfigError(f"config {cfg.summary()} cannot run even the smallest accelerator "
                          f"layer (a 1x1 convolution of one channel block): {exc}") from None


def cpu_macs(g: Graph, n: Node) -> int:
    """Multiply-accumulates of a conv/dense/matmul node run on the CPU (0 for other ops)."""
    if n.op in ("conv2d", "qconv2d"):
        w = g.tensors[n.inputs[1]].shape
        y = g.tensors[n.outputs[0]].shape
        return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if n.op in ("dense", "qdense", "matmul"):
        y = g.tensors[n.outputs[0]].shape
        k = g.tensors[n.inputs[0]].shape[-1]
        return int(np.prod(y, dtype=np.int64) * k)
    return 0


class _Builder:
    def __init__(self, g: Graph, cfg: Config, double_buffer: bool):
        self.g, self.cfg, self.double_buffer = g, cfg, double_buffer
        self.slots: dict[str, Slot] = {}
        self.params: dict[str, np.ndarray] = {}
        self.params_size = 0
        blocked = {o for n in g.nodes if n.op == "pack" or n.attrs.get("layout") == "blocked"
                   for o in n.outputs}
        mem = g.memory
        for t, off in mem.offsets.items():
            info = g.tensors[t]
            self.slots[t] = Slot(t, "arena", off, info.nbytes, tuple(info.shape), info.dtype,
                                 "blocked" if t in blocked else "nchw")

    def param(self, name: str, data: np.ndarray) -> int:
        """Place constant ``data`` in the params region; returns its virtual byte address."""
        if name in self.slots:
            raise CompileError(f"parameter {name!r} collides with another slot")
        data = np.ascontiguousarray(data).reshape(np.shape(data))  # keeps 0-d arrays 0-d
        align = param_align(self.cfg)
        offset = ceil_div(self.params_size, align) * align
        self.params[name] = data
        self.slots[name] = Slot(name, "params", offset, data.nbytes, tuple(data.shape),
                                data.dtype.name, "raw")
        self.params_size = offset + data.nbytes
        return REGION_BASES["params"] + offset

    def arena(self, tensor: str) -> int:
        return REGION_BASES["arena"] + self.slots[tensor].offset

    def cpu(self, n: Node) -> CpuStep:
        g = self.g
        ins = []
        for i in n.inputs:
            if i in g.constants and i not in self.slots:
                self.param(i, g.constants[i])
            ins.append(i)
        op = make_cpu_op(n, [g.tensors[i] if i else None for i in n.inputs])
        return CpuStep(n.name, op, ins, list(n.outputs), {"op": n.op, "macs": cpu_macs(g, n)})

    def accel(self, n: Node) -> AccelStep:
        g, cfg = self.g, self.cfg
        a = n.attrs
        epi = a["epilogue"]
        wt = g.constants[n.inputs[1]]
        bias = g.constants[n.input(2)] if n.input(2) else None
        res = n.input(3) or None
        x_shape = tuple(a["in_shape"])
        if n.op == "qconv2d":
            shape = ConvShape.make(x_shape, wt.shape, tuple(a["strides"]), tuple(a["pads"]))
            params = conv2d_params(cfg, wt, bias, epi)
            tiles = plan_conv2d(cfg, ConvGeom.of(cfg, shape), residual=res is not None,
                                vec="mult" in params, n_alu=len(epi.alu_steps()),
                                double_buffer=self.double_buffer)
            macs, tile = shape.macs, [tiles.to, tiles.th, tiles.kc]
        else:
            m, k = x_shape
            o = wt.shape[0]
            params = dense_params(cfg, wt, bias, epi)
            tiles = plan_dense(cfg, m, k, o, residual=res is not None, vec="mult" in params,
                               n_alu=len(epi.alu_steps()), double_buffer=self.double_buffer)
            macs, tile = m * k * o, [tiles.tm, tiles.to, tiles.kc]
        addr = {key: self.param(f"{n.name}:{key}", arr) for key, arr in params.items()}
        x, y = n.inputs[0], n.outputs[0]
        addrs = LayerAddrs(self.arena(x), addr["w"], self.arena(y), addr["bias"],
                           addr.get("mult"), self.arena(res) if res else None)
        b = CommandBuilder(cfg)
        if n.op == "qconv2d":
            stats = emit_conv2d(b, shape, addrs, epi, tiles=tiles)
        else:
            stats = emit_dense(b, m, k, o, addrs, epi, tiles=tiles)
        prog = b.finish()
        code = prog.to_bytes(0)
        inputs = [x] + ([res] if res else []) + [f"{n.name}:{key}" for key in params]
        info = {"op": n.op, "macs": int(macs),
                "gemm_steps": stats.hw_macs // cfg.macs_per_gemm_step,
                "insns": len(prog.insns), "tile": tile, "double_buffer": tiles.double_buffer,
                "loop_form": getattr(tiles, "loop_form", "dense"),
                "est_cycles": tiles.est_cycles, "counts": dict(prog.counts()),
                "loads_skipped": stats.pipeline["loads_skipped"]}
        return AccelStep(n.name, n.op, inputs, [y], code, prog.uop_words,
                         list(prog.uop_load_pcs), info)


def build_plan(g: Graph, cfg: Config, double_buffer: bool = True) -> Plan:
    """The plan of a graph the lowering passes have prepared (see the module docstring)."""
    targets_assigned(g, "lowering")
    if g.memory is None:
        raise CompileError("lowering needs the graph's memory plan (run plan_memory last)")
    b = _Builder(g, cfg, double_buffer)
    steps: list[AccelStep | CpuStep] = []
    for n in g.nodes:
        try:
            steps.append(b.accel(n) if n.attrs["target"] == "accel" else b.cpu(n))
        except ProgramError as exc:
            raise CompileError(f"node {n.name!r} ({n.op}): {exc}") from None
    if b.params_size > REGION_LIMIT:
        raise CompileError(f"the model needs {b.params_size} params bytes; at most "
                           f"{REGION_LIMIT} are supported")
    return Plan(cfg, b.slots, steps, {i: i for i in g.inputs}, {o: o for o in g.outputs},
                g.memory.arena_size, b.params, b.params_size)
