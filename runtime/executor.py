"""The graph executor: runs a lowered plan's accelerator layers and CPU operators on any device.

At construction it lays the plan out in the device's memory (one arena for activations, one
params region), relocates every accelerator layer's instruction stream from the plan's virtual
region bases to those buffers, and writes code, micro-ops and parameters once. ``run`` then
writes the inputs, executes the steps in order — ``Device.run`` per accelerator layer, an LLVM
kernel per CPU operator reading and writing device memory — and reads the outputs back.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device
from tessera.errors import DeviceError
from tessera.isa import INSN_BYTES, Opcode, elem_bytes, layout
from tessera.runtime.layout import ceil_div

__all__ = ["Executor", "relocate", "LayerProfile", "Profile"]


def relocate(code: bytes, cfg: Config, regions: dict[int, tuple[int, int]], uop_pcs: list[int],
             uop_addr: int) -> bytes:
    """Rewrite the DRAM addresses of a stream.

    ``regions`` maps a virtual base to ``(size, real base)``; every LOAD/STORE that moves data
    must fall inside one region. Micro-op loads (``uop_pcs``) address the micro-op area from
    element 0 and are moved to ``uop_addr``.
    """
    words = np.frombuffer(code, dtype="<u8").reshape(-1, 2).copy()
    lay = layout(cfg)
    f = {fl.name: fl for fl in lay.mem}
    lo = words[:, 0]
    op = (lo & np.uint64(7)).astype(np.int64)
    mt = ((lo >> np.uint64(f["memory_type"].lo)) & np.uint64(7)).astype(np.int64)
    base = ((lo >> np.uint64(f["dram_base"].lo)) & np.uint64(f["dram_base"].mask)).astype(
        np.int64)
    x_size = ((words[:, 1] >> np.uint64(f["x_size"].lo - 64)) & np.uint64(0xFFFF)).astype(
        np.int64)
    is_mem = (op == Opcode.LOAD) | (op == Opcode.STORE)
    new = base.copy()
    uop_mask = np.zeros(len(base), bool)
    uop_mask[list(uop_pcs)] = True
    new[uop_mask] += uop_addr // cfg.uop_elem_bytes
    data = is_mem & ~uop_mask & (x_size > 0)
    for pc in np.flatnonzero(data):
        eb = elem_bytes(cfg, int(mt[pc]))
        byte = int(base[pc]) * eb
        for vbase, (size, real) in regions.items():
            if vbase <= byte < vbase + size:
                new[pc] = (byte - vbase + real) // eb
                break
        else:
            raise DeviceError(f"instruction {pc} addresses {byte:#x}, outside every region of "
                              f"the plan")
    mask = np.uint64(f["dram_base"].mask << f["dram_base"].lo)
    lo = (lo & ~mask) | (new.astype(np.uint64) << np.uint64(f["dram_base"].lo))
    words[:, 0] = lo
    return words.tobytes()


@dataclass
class LayerProfile:
    name: str
    kind: str  # "accel" or "cpu"
    op: str
    wall_ms: float
    cycles: int | None = None
    macs: int = 0
    gemm_steps: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def utilisation(self, cfg: Config) -> float | None:
        """GEMM utilisation: useful MACs / (cycles x MACs per cycle), on kinds with timing."""
        if not self.cycles:
            return None
        return self.macs / (self.cycles * cfg.macs_per_gemm_step)


@dataclass
class Profile:
    device: str
    config: Config
    layers: list[LayerProfile]

    def totals(self) -> dict[str, Any]:
        acc = [p for p in self.layers if p.kind == "accel"]
        cpu = [p for p in self.layers if p.kind == "cpu"]
        cycles = [p.cycles for p in acc if p.cycles is not None]
        macs_acc = sum(p.macs for p in acc)
        out = {"accel_layers": len(acc), "cpu_ops": len(cpu),
               "accel_wall_ms": sum(p.wall_ms for p in acc),
               "cpu_wall_ms": sum(p.wall_ms for p in cpu), "accel_macs": macs_acc,
               "cpu_macs": sum(p.macs for p in cpu),
               "cycles": sum(cycles) if len(cycles) == len(acc) and acc else None}
        if out["cycles"]:
            out["utilisation"] = macs_acc / (out["cycles"] * self.config.macs_per_gemm_step)
        return out

    def table(self) -> str:
        cfg = self.config
        lines = [f"{'layer':<28} {'where':<6} {'op':<16} {'cycles':>10} {'util':>6} "
                 f"{'MMACs':>8} {'insns':>6} {'KB in':>8} {'KB out':>7} {'ms':>8}"]
        for p in self.layers:
            util = p.utilisation(cfg)
            c = p.counters
            insns = c.get("insns_retired")
            kb_in = c.get("dram_read_bytes")
            kb_out = c.get("dram_write_bytes")
            lines.append(
                f"{p.name[:28]:<28} {p.kind:<6} {p.op[:16]:<16} "
                f"{p.cycles if p.cycles is not None else '-':>10} "
                f"{f'{util:.0%}' if util is not None else '-':>6} {p.macs / 1e6:>8.2f} "
                f"{insns if insns is not None else '-':>6} "
                f"{f'{kb_in / 1024:.1f}' if kb_in is not None else '-':>8} "
                f"{f'{kb_out / 1024:.1f}' if kb_out is not None else '-':>7} "
                f"{p.wall_ms:>8.2f}")
        t = self.totals()
        util = t.get("utilisation")
        lines.append(
            f"{'total':<28} {'':<6} {'':<16} {t['cycles'] if t['cycles'] else '-':>10} "
            f"{f'{util:.0%}' if util is not None else '-':>6} "
            f"{(t['accel_macs'] + t['cpu_macs']) / 1e6:>8.2f} {'':>6} {'':>8} {'':>7} "
            f"{t['accel_wall_ms'] + t['cpu_wall_ms']:>8.2f}")
        share = t["accel_macs"] / max(t["accel_macs"] + t["cpu_macs"], 1)
        lines.append(f"accelerator share of MACs: {share:.1%}; accelerator wall "
                     f"{t['accel_wall_ms']:.1f} ms, CPU wall {t['cpu_wall_ms']:.1f} ms "
                     f"({self.device})")
        return "\n".join(lines)


class Executor:
    """A plan laid out on one device, ready to run any number of times."""

    def __init__(self, plan, device: Device):
        from tessera.compiler.lower import REGION_BASES, REGION_LIMIT

        if device.config != plan.config:
            raise DeviceError(f"the model was compiled for {plan.config.summary()}, but the "
                              f"device is {device.config.summary()}")
        self.plan, self.dev = plan, device
        self.cfg = plan.config
        self._bufs = []
        self.arena = self._alloc(max(plan.arena_size, 1))
        self.params = self._alloc(max(plan.params_size, 1))
        bases = {"arena": self.arena.addr, "params": self.params.addr}
        regions = {REGION_BASES["arena"]: (REGION_LIMIT, self.arena.addr),
                   REGION_BASES["params"]: (REGION_LIMIT, self.params.addr)}
        self.addr = {name: bases[s.region] + s.offset for name, s in plan.slots.items()}
        for name, data in plan.params.items():
            device.write(self.addr[name], data)
        self.code: dict[int, tuple[int, int]] = {}
        for k, step in enumerate(plan.steps):
            if step.kind != "accel":
                continue
            uop = self._alloc(max(len(step.uop_words), 4))
            if step.uop_words:
                device.write(uop.addr, step.uop_words)
            code = relocate(step.code, self.cfg, regions, step.uop_load_pcs, uop.addr)
            cbuf = self._alloc(len(code))
            device.write(cbuf.addr, code)
            self.code[k] = (cbuf.addr, len(code) // INSN_BYTES)

    def _alloc(self, n: int):
        buf = self.dev.alloc(n)
        self._bufs.append(buf)
        return buf

    def close(self) -> None:
        for buf in self._bufs:
            self.dev.free(buf)
        self._bufs.clear()

    def _stored(self, slot) -> tuple[tuple[int, ...], str]:
        if slot.layout != "blocked":
            return tuple(slot.shape), slot.dtype
        shape = tuple(slot.shape) + (1,) * (4 - len(slot.shape))
        n, c, h, w = shape
        cfg = self.cfg
        return ((ceil_div(n, cfg.batch), ceil_div(c, cfg.block_in), h, w, cfg.batch,
                 cfg.block_in), "int8")

    def read_slot(self, name: str) -> np.ndarray:
        shape, dtype = self._stored(self.plan.slots[name])
        return self.dev.read_array(self.addr[name], shape, dtype)

    def write_slot(self, name: str, value: np.ndarray) -> None:
        shape, dtype = self._stored(self.plan.slots[name])
        arr = np.asarray(value)
        if arr.shape != shape and arr.size == int(np.prod(shape, dtype=np.int64)):
            arr = arr.reshape(shape)  # the same tensor seen with unit dimensions dropped/added
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise DeviceError(f"tensor {name!r} must be {dtype}{list(shape)}, not "
                              f"{arr.dtype}{list(arr.shape)}")
        self.dev.write(self.addr[name], np.ascontiguousarray(arr))

    def run(self, feeds: dict[str, np.ndarray], profile: bool = False,
            progress: bool = False, timeout_cycles: int | None = None
            ) -> tuple[list[np.ndarray], Profile | None]:
        plan = self.plan
        for name, slot in plan.inputs.items():
            self.write_slot(slot, feeds[name])
        layers: list[LayerProfile] = []
        n = len(plan.steps)
        for k, step in enumerate(plan.steps):
            t0 = time.perf_counter()
            if step.kind == "accel":
                addr, count = self.code[k]
                stats = self.dev.run(addr, count, timeout_cycles)
                rec = LayerProfile(step.name, "accel", step.op, 0.0, stats.cycles,
                                   step.info.get("macs", 0), step.info.get("gemm_steps", 0),
                                   dict(stats.counters), dict(step.info))
            else:
                args = [self.read_slot(s) if s else None for s in step.inputs]
                outs = step.op(*args)
                for s, v in zip(step.outputs, outs):
                    self.write_slot(s, v)
                rec = LayerProfile(step.name, "cpu", step.info.get("op", "?"), 0.0,
                                   macs=step.info.get("macs", 0), info=dict(step.info))
            rec.wall_ms = (time.perf_counter() - t0) * 1e3
            if profile:
                layers.append(rec)
            if progress:
                _progress(k + 1, n, step.name)
        if progress:
            print(file=sys.stderr)
        outputs = [self.read_slot(plan.outputs[o]) for o in plan.outputs]
        return outputs, (Profile(self.dev.kind, self.cfg, layers) if profile else None)


def _progress(done: int, total: int, what: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what[:30]:<30}")
    sys.stderr.flush()


