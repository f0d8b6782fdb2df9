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

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from tessera.compiler.ir import Graph, Node
from tessera.compiler.lower.cpu import make_cpu_op
from tessera.compiler.lower.partition import targets_assigned
from tessera.config import Config
from tessera.errors import CompileError, ConfigError, ProgramError
from tessera.isa import insert, layout
from tessera.runtime.accel import (
    ConvGeom,
    ConvShape,
    Epilogue,
    LayerAddrs,
    conv2d_params,
    dense_params,
    dense_shape,
    emit_conv2d,
    lower_epilogue,
    plan_conv2d,
)
from tessera.runtime.accel.group import (
    Measured,
    Member,
    emit_conv2d_group,
    moved_group,
    plan_group,
)
from tessera.runtime.accel.layer import CONV_TENSORS, element_base
from tessera.runtime.accel.requant import DeviceEpilogue, DevStep
from tessera.runtime.accel.tiling import tune_conv2d
from tessera.runtime.builder import CommandBuilder, relocate
from tessera.runtime.layout import ceil_div
from tessera.runtime.plan import REGION_BASES, REGION_LIMIT, AccelStep, CpuStep, Plan, Slot

__all__ = ["build_plan", "cpu_macs", "param_align", "check_config"]


# the attainment floor of issue 9: a group is kept when it lifts a member above it
FLOOR = 0.85
_NO_ADDRS = LayerAddrs(0, 0, 0)


def param_align(cfg: Config) -> int:
    """Bytes each parameter array is aligned to in the params region: the config's largest DRAM
    element (so any memory type can address it) and at least one bus beat."""
    return max(cfg.dram_align, cfg.mem_bus_bytes)


def check_config(cfg: Config) -> None:
    """Raise :class:`ConfigError` when ``cfg`` cannot run even the smallest accelerator layer
    (a 1x1 convolution of one channel block at one pixel, with bias): its buffers are too small
    for any tile the accelerator kernel library can emit, so no model would compile. On a
    config that passes, every layer is tiled to fit; one whose epilogue needs more constant
    rows than the accumulator holds fails in the partition, naming the layer."""
    o = cfg.block_out  # one output block with a per-channel bias (one constant row)
    shape = ConvShape.make((1, 1, 1, 1), (o, 1, 1, 1))
    try:
        plan_conv2d(cfg, ConvGeom.of(cfg, shape),
                    lower_epilogue(Epilogue(), np.arange(o, dtype=np.int64), o))
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
    def __init__(self, g: Graph, cfg: Config, double_buffer: bool, tune: int = 0):
        self.g, self.cfg, self.double_buffer, self.tune = g, cfg, double_buffer, tune
        self.slots: dict[str, Slot] = {}
        self.params: dict[str, np.ndarray] = {}
        self.params_size = 0
        # accelerator streams emitted so far, by what the stream depends on apart from the
        # tensors' addresses (see accel)
        self._streams: dict[tuple, tuple[AccelStep, LayerAddrs, list[tuple[int, int]]]] = {}
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

    def _layer(self, n: Node):
        """(shape, params, residual tensor) of accelerator node ``n``."""
        g, cfg = self.g, self.cfg
        a = n.attrs
        epi = a["epilogue"]
        wt = g.constants[n.inputs[1]]
        bias = g.constants[n.input(2)] if n.input(2) else None
        res = n.input(3) or None
        x_shape = tuple(a["in_shape"])
        if n.op == "qconv2d":
            groups = a.get("groups", 1)
            shape = ConvShape.make(x_shape, wt.shape, tuple(a["strides"]), tuple(a["pads"]),
                                   tuple(a.get("dilations", (1, 1))), groups)
            params = conv2d_params(cfg, wt, bias, epi, groups)
        else:
            m, k = x_shape
            shape = dense_shape(m, k, wt.shape[0])
            params = dense_params(cfg, wt, bias, epi)
        return shape, params, res

    def _place(self, n: Node, shape, params, res) -> tuple[LayerAddrs, list[str]]:
        addr = {key: self.param(f"{n.name}:{key}", arr) for key, arr in params.arrays.items()}
        x, y = n.inputs[0], n.outputs[0]
        addrs = LayerAddrs(self.arena(x), addr["w"], self.arena(y), addr.get("consts"),
                           self.arena(res) if res else None)
        return addrs, ([res] if res else []) + [f"{n.name}:{key}" for key in params.arrays]

    def _step(self, name: str, op: str, inputs: list[str], outputs: list[str], b, stats,
              tiles, macs: int, epilogue_steps: int, est_cycles: int,
              members: list[str] | None = None) -> AccelStep:
        prog = b.finish()
        return self._accel_step(name, op, inputs, outputs, prog, prog.to_bytes(0), stats, tiles,
                                macs, epilogue_steps, est_cycles, members)

    def _accel_step(self, name: str, op: str, inputs: list[str], outputs: list[str], prog,
                    code: bytes, stats, tiles, macs: int, epilogue_steps: int, est_cycles: int,
                    members: list[str] | None = None) -> AccelStep:
        """The step of a finished stream ``prog`` whose encoding (micro-op area at 0) is
        ``code``."""
        cfg = self.cfg
        info = {"op": op, "macs": int(macs),
                "gemm_steps": stats.hw_macs // cfg.macs_per_gemm_step,
                "insns": len(prog.insns),
                "tile": [tiles.tn, tiles.to, tiles.th, tiles.tw or 0, tiles.kc, tiles.tkh or 0,
                         tiles.tkw or 0, tiles.regions],
                "double_buffer": tiles.double_buffer, "est_cycles": int(est_cycles),
                "epilogue_steps": epilogue_steps, "counts": dict(prog.counts()),
                "loads_skipped": stats.pipeline["loads_skipped"]}
        if members:
            info["members"] = members
        return AccelStep(name, op, inputs, outputs, code, prog.uop_words,
                         list(prog.uop_load_pcs), info)

    def accel(self, n: Node) -> AccelStep:
        cfg = self.cfg
        shape, params, res = self._layer(n)
        if self.tune:
            tiles = tune_conv2d(cfg, shape, params.program, double_buffer=self.double_buffer,
                                top=self.tune)
        else:
            tiles = plan_conv2d(cfg, ConvGeom.of(cfg, shape), params.program,
                                double_buffer=self.double_buffer)
        addrs, ins = self._place(n, shape, params, res)
        prog = params.program
        inputs, outputs = [n.inputs[0]] + ins, [n.outputs[0]]
        # a layer emitted before with the same shape, tiles and epilogue program (immediates
        # aside) has the same stream but for the tensors' addresses and the immediates: that
        # stream, moved and patched
        key = (n.op, shape, tiles, _structure(prog.steps), tuple(prog.vectors), prog.uniform,
               addrs.consts is None, addrs.residual is None)
        seen = self._streams.get(key)
        if seen is not None:
            step = _moved(cfg, n.name, inputs, outputs, *seen, addrs, prog)
            if step is not None:
                return step
        b = CommandBuilder(cfg)
        stats = emit_conv2d(b, shape, addrs, prog, tiles=tiles)
        step = self._step(n.name, n.op, inputs, outputs, b, stats, tiles, shape.macs,
                          len(prog.steps), tiles.est_cycles)
        self._streams.setdefault(key, (step, addrs, stats.imm_pcs))
        return step

    def accel_group(self, nodes: list[Node]) -> AccelStep | None:
        """One step for sibling convolutions (``group_siblings``), or None when they do not
        share a stream well (no tiles fit together, or the group is not faster than the
        layers apart by the cost model)."""
        cfg = self.cfg
        if not self.double_buffer:
            return None
        layers = [self._layer(n) for n in nodes]
        members = [Member(shape, _NO_ADDRS, params.program, None)
                   for shape, params, _ in layers]
        kept: list[Measured] = []
        planned = plan_group(cfg, members, keep=kept)
        if planned is None:
            return None
        tiles, cycles = planned
        geoms = [ConvGeom.of(cfg, shape) for shape, _, _ in layers]
        alone = [plan_conv2d(cfg, g, params.program).est_cycles
                 for g, (_, params, _) in zip(geoms, layers)]
        # GEMM-bound attainment: the members apart (the worst of them) and together
        worst = min(g.gemm_steps() / c for g, c in zip(geoms, alone))
        together = sum(g.gemm_steps() for g in geoms) / cycles
        if cycles >= sum(alone) and not worst < FLOOR <= together:
            return None
        inputs, placed = [nodes[0].inputs[0]], []
        for n, (shape, params, res), t in zip(nodes, layers, tiles):
            addrs, ins = self._place(n, shape, params, res)
            inputs += ins
            placed.append(Member(shape, addrs, params.program, t))
        name, outputs = "+".join(n.name for n in nodes), [n.outputs[0] for n in nodes]
        macs = sum(shape.macs for shape, _, _ in layers)
        steps = sum(len(params.program.steps) for _, params, _ in layers)
        # the winner's measured stream, moved to the members' tensors (emission otherwise)
        code = moved_group(cfg, kept[0], placed)
        if code is not None:
            m = kept[0]
            return self._accel_step(name, nodes[0].op, inputs, outputs, m.program, code,
                                    m.stats, tiles[0], macs, steps, cycles,
                                    [n.name for n in nodes])
        b = CommandBuilder(cfg)
        stats = emit_conv2d_group(b, placed)
        return self._step(name, nodes[0].op, inputs, outputs, b, stats, tiles[0], macs, steps,
                          cycles, [n.name for n in nodes])


def _structure(steps: tuple[DevStep, ...]) -> tuple:
    """An epilogue program with its immediates (plain int operands) left out."""
    return tuple((s.opcode, s.branch, s.operand.__class__ is int,
                  None if s.operand.__class__ is int else s.operand) for s in steps)


def _moved(cfg: Config, name: str, inputs: list[str], outputs: list[str], step: AccelStep,
           at: LayerAddrs, imm_pcs: list[tuple[int, int]], addrs: LayerAddrs,
           prog: DeviceEpilogue) -> AccelStep | None:
    """``step`` (emitted with tensors at ``at``) for a layer with the same shape, tiles and
    program structure (:func:`_structure`), tensors at ``addrs`` and epilogue program ``prog``.

    The emitter reads each tensor through one memory type (input INP, weights WGT, output OUT,
    constants ACC, residual ACC_8BIT) at addresses it adds to that tensor's element base, and
    nothing it decides depends on those bases or on the immediates (``imm_pcs``: the ALU
    instructions carrying epilogue step j's operand), so moving every LOAD/STORE of a type by
    its tensor's element offset and writing ``prog``'s operands into those instructions gives
    exactly the stream emission would. None when a moved address or an immediate leaves what
    the instruction fields or the address space hold (emission then raises the precise
    error)."""
    shifts = {}
    for field, mt, what in CONV_TENSORS:
        new, old = getattr(addrs, field), getattr(at, field)
        if new is not None:
            shifts[mt] = element_base(cfg, new, mt, what) - element_base(cfg, old, mt, what)
    try:
        code = relocate(step.code, cfg, step.uop_load_pcs, 0, shifts=shifts)
    except ProgramError:
        return None
    if imm_pcs:
        lay = layout(cfg)
        f = lay.field("alu", "imm")
        if not all(lay.limits.imm_min <= s.operand <= lay.limits.imm_max
                   for s in prog.steps if s.operand.__class__ is int):
            return None
        words = np.frombuffer(code, "<u8").reshape(-1, 2).copy()
        pcs = np.array([pc for pc, _ in imm_pcs], np.int64)
        insert(words, f, np.array([prog.steps[j].operand for _, j in imm_pcs], np.int64), pcs)
        code = words.tobytes()
    info = {**step.info, "counts": dict(step.info["counts"]), "tile": list(step.info["tile"])}
    return AccelStep(name, step.op, inputs, outputs, code, step.uop_words,
                     list(step.uop_load_pcs), info)


def build_plan(g: Graph, cfg: Config, double_buffer: bool = True, tune: int = 0) -> Plan:
    """The plan of a graph the lowering passes have prepared (see the module docstring);
    ``tune``: rank that many tilings per accelerator layer with the cycle model."""
    targets_assigned(g, "lowering")
    if g.memory is None:
        raise CompileError("lowering needs the graph's memory plan (run plan_memory last)")
    if isinstance(tune, bool) or not isinstance(tune, int) or tune < 0:
        raise CompileError(f"tune must be a non-negative integer, not {tune!r}")
    with _collector_paused():
        return _build(g, cfg, double_buffer, tune)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a plan is built: emission allocates
    hundreds of thousands of instruction records that live until the step is encoded, and
    the collections they trigger rescan every live object (a tenth to a fifth of
    ``build_plan``'s time); reference counting still frees everything acyclic. Restored on the
    way out (left off only if it was already off, e.g. by a caller doing the same)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _build(g: Graph, cfg: Config, double_buffer: bool, tune: int) -> Plan:
    b = _Builder(g, cfg, double_buffer, tune)
    steps: list[AccelStep | CpuStep] = []
    by_name = {n.name: n for n in g.nodes}
    done: set[str] = set()
    for n in g.nodes:
        if n.name in done:
            continue
        try:
            step = None
            if n.attrs["target"] == "accel" and "group" in n.attrs:
                step = b.accel_group([n, by_name[n.attrs["group"]]])
                if step is not None:
                    done.add(n.attrs["group"])
            if step is None:
                step = b.accel(n) if n.attrs["target"] == "accel" else b.cpu(n)
            steps.append(step)
        except ProgramError as exc:
            raise CompileError(f"node {n.name!r} ({n.op}): {exc}") from None
    if b.params_size > REGION_LIMIT:
        raise CompileError(f"the model needs {b.params_size} params bytes; at most "
                           f"{REGION_LIMIT} are supported")
    return Plan(cfg, b.slots, steps, {i: i for i in g.inputs}, {o: o for o in g.outputs},
                g.memory.arena_size, b.params, b.params_size)
