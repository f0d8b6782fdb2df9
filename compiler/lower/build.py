"""Partition a quantised graph between the accelerator and the CPU, and lower it to a plan.

A :class:`Plan` is what the runtime executes and what a compiled-model file stores: device
memory *slots* (tensors in a layout, placed in an arena with liveness-based reuse, or in the
params region), and a flat list of *steps* in graph order — accelerator layers (instruction and
micro-op streams, one run each) and CPU operators (LLVM kernels). Accelerator layers address
memory through virtual region bases that :func:`tessera.runtime.executor.relocate` maps onto the
device's real buffers.

Accelerator: ``qconv2d`` with ``groups == 1`` and no dilation, and ``qdense`` with constant
weights. Everything else runs on the CPU. Tensors crossing the boundary are packed to / unpacked
from the SPEC §2 blocked layout by CPU kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tessera.compiler.cpu_ops import make_cpu_op
from tessera.compiler.ir import Graph, Node
from tessera.compiler.lower_accel import ConvGeom, LayerAddrs, choose_tiles, emit_conv
from tessera.config import Config
from tessera.errors import CompileError
from tessera.isa import INSN_BYTES, to_bytes
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.layout import ceil_div, pack_weights

__all__ = ["Slot", "AccelStep", "CpuStep", "Plan", "lower", "REGION_BASES", "ALIGN"]

# Virtual base addresses of the regions accelerator code refers to; each region < 512 MiB.
REGION_BASES = {"arena": 0x2000_0000, "params": 0x4000_0000}
REGION_LIMIT = 0x2000_0000
ALIGN = 4096


@dataclass
class Slot:
    """A tensor in device memory: ``layout`` is ``"nchw"`` (plain, row-major) or ``"blocked"``."""

    name: str
    region: str
    offset: int
    nbytes: int
    shape: tuple[int, ...]  # logical shape (the plain tensor's)
    dtype: str
    layout: str = "nchw"

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return self.shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "offset": self.offset,
                "nbytes": self.nbytes, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Slot:
        return cls(d["name"], d["region"], int(d["offset"]), int(d["nbytes"]),
                   tuple(d["shape"]), d["dtype"], d["layout"])


@dataclass
class AccelStep:
    """One accelerator layer: a stream of its own (ends in FINISH) plus its micro-op area."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    code: bytes  # encoded instructions; DRAM addresses virtual (REGION_BASES)
    uop_words: bytes
    uop_load_pcs: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    kind = "accel"

    @property
    def insn_count(self) -> int:
        return len(self.code) // INSN_BYTES


@dataclass
class CpuStep:
    """One CPU operator: ``op`` is a serialisable CPU op (LLVM IR inside)."""

    name: str
    op: Any
    inputs: list[str]
    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    kind = "cpu"


@dataclass
class Plan:
    config: Config
    slots: dict[str, Slot]
    steps: list[AccelStep | CpuStep]
    inputs: dict[str, str]  # graph input name -> slot name
    outputs: dict[str, str]  # graph output name -> slot name
    arena_size: int
    params: dict[str, np.ndarray]  # slot name -> stored bytes (already in device layout)
    params_size: int


def _slot_key(tensor: str, layout: str) -> str:
    return tensor if layout == "nchw" else f"{tensor}@blocked"


def _blocked_nbytes(shape: tuple[int, ...], cfg: Config) -> int:
    n, c = shape[0], shape[1]
    hw = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return ceil_div(n, cfg.batch) * cfg.batch * ceil_div(c, cfg.block_in) * cfg.block_in * hw


def _blocked_shape(shape4: tuple[int, ...], cfg: Config) -> tuple[int, ...]:
    n, c, h, w = shape4
    return (ceil_div(n, cfg.batch), ceil_div(c, cfg.block_in), h, w, cfg.batch, cfg.block_in)


def _cpu_macs(g: Graph, n: Node) -> int:
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


def _accel_capable(g: Graph, n: Node) -> str | None:
    """None if ``n`` runs on the accelerator, else why not (for the partition report)."""
    if n.op == "qconv2d":
        if n.attrs.get("groups", 1) != 1:
            return "grouped/depthwise convolution"
        if tuple(n.attrs.get("dilations", (1, 1))) != (1, 1):
            return "dilated convolution"
        if n.inputs[1] not in g.constants:
            return "weights are not constant"
        if max(n.attrs.get("pads", (0, 0, 0, 0))) > 15:
            return "padding above 15"
        return None
    if n.op == "qdense":
        if n.inputs[1] not in g.constants:
            return "weights are not constant"
        return None
    return "no accelerator kernel for this op"


def fold_narrow_input(g: Graph, cfg: Config) -> Graph:
    """Fold the kernel's width into the channels of convolutions with few input channels.

    A first layer (3 input channels, 7x7 kernel) pads its channels to one BLOCK_IN and wastes
    most of every GEMM step. When it saves steps, the input is rearranged on the CPU so that
    ``x'[n, kw*C + c, h, ow] = pad(x)[n, c, h, ow*sw + kw]`` (pad, strided slices, concat) and
    the layer becomes a ``KH x 1`` convolution with ``C*KW`` channels and weights
    ``w'[o, kw*C + c, kh, 0] = w[o, c, kh, kw]``: the same integer sums, far fewer steps.
    """
    blk = cfg.block_in
    nodes: list[Node] = []
    consts = dict(g.constants)
    changed = False
    for n in g.nodes:
        if n.op != "qconv2d" or _accel_capable(g, n) is not None:
            nodes.append(n)
            continue
        x = n.inputs[0]
        nb, c, h, w = g.tensors[x].shape
        wt = consts[n.inputs[1]]
        o, _, kh, kw = wt.shape
        sh, sw = n.attrs["strides"]
        pt, pl, pb, pr = n.attrs["pads"]
        if kw == 1 or ceil_div(c * kw, blk) * kh >= ceil_div(c, blk) * kh * kw:
            nodes.append(n)
            continue
        ow = (w + pl + pr - kw) // sw + 1
        padded = f"{x}:wpad:{n.name}"
        nodes.append(Node("pad", (x,), (padded,), {"pads": (0, 0, 0, pl, 0, 0, 0, pr),
                                                    "value": 0.0}, name=f"{n.name}:wpad"))
        cols = []
        for k in range(kw):
            col = f"{x}:col{k}:{n.name}"
            nodes.append(Node("slice", (padded,), (col,),
                              {"starts": (k,), "ends": (k + (ow - 1) * sw + 1,), "axes": (3,),
                               "steps": (sw,)}, name=f"{n.name}:col{k}"))
            cols.append(col)
        folded = f"{x}:fold:{n.name}"
        nodes.append(Node("concat", tuple(cols), (folded,), {"axis": 1},
                          name=f"{n.name}:fold"))
        wname = f"{n.inputs[1]}:fold"
        consts[wname] = np.ascontiguousarray(wt.transpose(0, 3, 1, 2).reshape(o, kw * c, kh, 1))
        nodes.append(replace(n, inputs=(folded, wname) + tuple(n.inputs[2:]))
                     .with_attrs(strides=(sh, 1), pads=(pt, 0, pb, 0)))
        changed = True
    return g.replace(nodes=nodes, constants=consts) if changed else g


class _Lowering:
    def __init__(self, g: Graph, cfg: Config, double_buffer: bool):
        self.g, self.cfg = g, cfg
        self.double_buffer = double_buffer
        self.slots: dict[str, Slot] = {}
        self.steps: list[AccelStep | CpuStep] = []
        self.params: dict[str, np.ndarray] = {}
        self.params_size = 0
        self.layouts: dict[str, set[str]] = {}

    # -- slots -----------------------------------------------------------------------------

    def _add_slot(self, tensor: str, layout: str) -> Slot:
        info = self.g.tensors[tensor]
        key = _slot_key(tensor, layout)
        if layout == "blocked":
            shape = info.shape if len(info.shape) >= 2 else (1,) + tuple(info.shape)
            nbytes = _blocked_nbytes(shape, self.cfg)
        else:
            nbytes = info.nbytes
        slot = Slot(key, "arena", -1, max(int(nbytes), 1), tuple(info.shape), info.dtype, layout)
        self.slots[key] = slot
        self.layouts.setdefault(tensor, set()).add(layout)
        return slot

    def _param(self, name: str, data: np.ndarray) -> int:
        """Place constant ``data`` in the params region; returns its virtual byte address."""
        data = np.ascontiguousarray(data)
        offset = ceil_div(self.params_size, 256) * 256
        self.params[name] = data
        self.slots[name] = Slot(name, "params", offset, data.nbytes, tuple(data.shape),
                                data.dtype.name, "raw")
        self.params_size = offset + data.nbytes
        return REGION_BASES["params"] + offset

    def ensure(self, tensor: str, layout: str) -> str:
        """The slot holding ``tensor`` in ``layout``, converting on the CPU if needed."""
        have = self.layouts.get(tensor, set())
        key = _slot_key(tensor, layout)
        if layout in have:
            return key
        if not have:
            raise CompileError(f"tensor {tensor!r} is used before it is produced")
        src_layout = next(iter(have))
        info = self.g.tensors[tensor]
        shape4 = tuple(info.shape) + (1,) * (4 - len(info.shape))
        if info.dtype != "int8" or len(info.shape) not in (2, 4):
            raise CompileError(f"tensor {tensor!r} ({info}) cannot move between the CPU and the "
                               f"accelerator layouts")
        src_key = _slot_key(tensor, src_layout)
        self._add_slot(tensor, layout)
        cfg = self.cfg
        if layout == "blocked":
            node = Node("pack", (tensor,), (key,), {"block": cfg.block_in, "batch": cfg.batch},
                        name=f"pack:{tensor}")
            spec = (tuple(info.shape), "int8")
        else:
            node = Node("unpack", (tensor,), (key,), {"shape": shape4}, name=f"unpack:{tensor}")
            spec = (_blocked_shape(shape4, cfg), "int8")
        op = make_cpu_op(node, [spec])
        self.steps.append(CpuStep(node.name, op, [src_key], [key], {"op": node.op}))
        return key

    # -- nodes -----------------------------------------------------------------------------

    def run(self) -> Plan:
        g = self.g
        for name in g.inputs:
            self._add_slot(name, "nchw")
        for node in g.nodes:
            if _accel_capable(g, node) is None:
                self.accel(node)
            else:
                self.cpu(node)
        outputs = {o: self.ensure(o, "nchw") for o in g.outputs}
        inputs = {i: _slot_key(i, "nchw") for i in g.inputs}
        arena = self._plan_arena(set(outputs.values()) | set(inputs.values()))
        return Plan(self.cfg, self.slots, self.steps, inputs, outputs, arena, self.params,
                    self.params_size)

    def cpu(self, node: Node) -> None:
        g = self.g
        in_slots = []
        for i in node.inputs:
            if not i:
                in_slots.append("")
            elif i in g.constants:
                if i not in self.slots:
                    self._param(i, g.constants[i])
                in_slots.append(i)
            else:
                in_slots.append(self.ensure(i, "nchw"))
        op = make_cpu_op(node, [g.tensors[i] if i else None for i in node.inputs])
        out_slots = [self._add_slot(o, "nchw").name for o in node.outputs]
        self.steps.append(CpuStep(node.name, op, in_slots, out_slots,
                                  {"op": node.op, "macs": _cpu_macs(g, node)}))

    def accel(self, node: Node) -> None:
        g, cfg = self.g, self.cfg
        blk, bat = cfg.block_in, cfg.batch
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        res = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
        xi, yi = g.tensors[x], g.tensors[node.outputs[0]]
        wt = g.constants[w]
        if node.op == "qdense":
            n, c = xi.shape
            o = wt.shape[0]
            wt4 = wt.reshape(o, c, 1, 1)
            geom = ConvGeom(ceil_div(n, bat), ceil_div(c, blk), 1, 1, ceil_div(o, blk), 1, 1,
                            1, 1, 0, 0, 0, 0)
        else:
            n, c, h, wd = xi.shape
            o = wt.shape[0]
            wt4 = wt
            pt, pl, pb, pr = node.attrs["pads"]
            sh, sw = node.attrs["strides"]
            geom = ConvGeom(ceil_div(n, bat), ceil_div(c, blk), h, wd, ceil_div(o, blk),
                            wt.shape[2], wt.shape[3], sh, sw, pt, pl, pb, pr)
        epi = node.attrs["epilogue"]
        steps = [(s.opcode, "vec" if isinstance(s.operand, np.ndarray) else int(s.operand),
                  s.branch) for s in epi.alu_steps()]
        ob = geom.ob
        w_addr = self._param(f"{node.name}:w", pack_weights(wt4, cfg))
        bias_v = np.zeros(ob * blk, np.int64)
        if bias is not None:
            bias_v[:o] = g.constants[bias].reshape(-1)
        rows = np.broadcast_to(bias_v.reshape(ob, 1, blk), (ob, bat, blk)).astype(np.int32)
        bias_addr = self._param(f"{node.name}:bias", rows)
        mult_addr = None
        if any(op == "vec" for _, op, _ in steps):
            mv = np.zeros(ob * blk, np.int64)
            mv[:o] = epi.mult
            mrows = np.broadcast_to(mv.reshape(ob, 1, blk), (ob, bat, blk)).astype(np.int32)
            mult_addr = self._param(f"{node.name}:mult", mrows)
        in_slot = self.ensure(x, "blocked")
        in_slots = [in_slot]
        res_slot = None
        if res is not None:
            res_slot = self.ensure(res, "blocked")
            in_slots.append(res_slot)
        out_slot = self._add_slot(node.outputs[0], "blocked").name
        # The arena is not placed yet: emit against slot *keys*, fixed up after planning.
        tiles = choose_tiles(cfg, geom, res is not None, mult_addr is not None, len(steps),
                             self.double_buffer)
        step = AccelStep(node.name, node.op, in_slots, [out_slot], b"", b"", [],
                         {"geom": geom, "tiles": tiles, "steps": steps, "w": w_addr,
                          "bias": bias_addr, "mult": mult_addr,
                          "macs": int(n * o * c * int(np.prod(wt.shape[2:])) *
                                      (int(np.prod(yi.shape[2:])) if node.op == "qconv2d"
                                       else 1)),
                          "gemm_steps": geom.gemm_steps()})
        self.steps.append(step)

    # -- memory planning and code generation -------------------------------------------------

    def _plan_arena(self, pinned: set[str]) -> int:
        """Offsets for every arena slot, reusing the space of slots whose last use is past."""
        first: dict[str, int] = {}  # step that produces the slot (-1: before the first)
        last: dict[str, int] = {}  # last step that reads it
        for k, step in enumerate(self.steps):
            for s in step.outputs:
                first.setdefault(s, k)
                last[s] = max(last.get(s, k), k)
            for s in step.inputs:
                last[s] = k
        arena = [s for s in self.slots.values() if s.region == "arena"]
        for s in arena:
            first.setdefault(s.name, -1)
            last.setdefault(s.name, first[s.name])
            if s.name in pinned:
                last[s.name] = len(self.steps)
        placed: list[Slot] = []
        top = 0
        for s in sorted(arena, key=lambda s: (first[s.name], s.name)):
            size = ceil_div(s.nbytes, ALIGN) * ALIGN
            live = [p for p in placed if not (last[p.name] < first[s.name] or
                                              last[s.name] < first[p.name])]
            pos = 0
            for p in sorted(live, key=lambda p: p.offset):
                if pos + size <= p.offset:
                    break
                pos = max(pos, p.offset + ceil_div(p.nbytes, ALIGN) * ALIGN)
            s.offset = pos
            placed.append(s)
            top = max(top, pos + size)
        if top > REGION_LIMIT or self.params_size > REGION_LIMIT:
            raise CompileError(f"the model needs {top} arena and {self.params_size} params "
                               f"bytes; at most {REGION_LIMIT} each are supported")
        for step in self.steps:
            if isinstance(step, AccelStep):
                self._codegen(step)
        return top

    def _codegen(self, step: AccelStep) -> None:
        info = step.info
        addr = {s: REGION_BASES["arena"] + self.slots[s].offset
                for s in step.inputs + step.outputs}
        b = CommandBuilder(self.cfg)
        emit_conv(b, info["geom"], info["tiles"],
                  LayerAddrs(addr[step.inputs[0]], info["w"], info["bias"], info["mult"],
                             addr[step.outputs[0]],
                             addr[step.inputs[1]] if len(step.inputs) > 1 else None),
                  info["steps"])
        prog = b.finish()
        step.code = to_bytes(prog.insns, self.cfg)
        step.uop_words = prog.uop_words
        step.uop_load_pcs = list(prog.uop_load_pcs)
        counts = prog.counts()
        t = info.pop("tiles")
        info.pop("geom")
        info.pop("steps")
        for k in ("w", "bias", "mult"):
            info.pop(k)
        info.update({"insns": len(prog.insns), "tile": [t.to, t.th, t.kc],
                     "double_buffer": t.double_buffer, "loop_form": t.loop_form,
                     "est_cycles": t.est_cycles, "counts": dict(counts)})


def lower(g: Graph, cfg: Config, double_buffer: bool = True) -> Plan:
    """Partition and lower a quantised graph to a :class:`Plan`."""
    return _Lowering(fold_narrow_input(g, cfg), cfg, double_buffer).run()


def partition_report(g: Graph) -> list[tuple[str, str, str]]:
    """(node name, op, where it runs / why not on the accelerator) for every node."""
    out = []
    for n in g.nodes:
        why = _accel_capable(g, n)
        out.append((n.name, n.op, "accelerator" if why is None else f"cpu ({why})"))
    return out
