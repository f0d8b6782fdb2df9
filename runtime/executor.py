"""The graph executor: runs a lowered plan's accelerator layers and CPU operators on any device.

At construction it lays the plan out in the device's memory (one arena for activations, one
params region), relocates every accelerator layer's instruction stream from the plan's virtual
region bases to those buffers, and writes code, micro-ops and parameters once. ``run`` then
writes the inputs, executes the steps in order — ``Device.run`` per accelerator layer, an LLVM
kernel per CPU operator reading and writing device memory — and reads the outputs back.

CPU operators are bound at construction (:meth:`~tessera.runtime.cpu.op.CpuOp.bind`): their
kernels are compiled and fixed to their slots' buffers, every shape/dtype/overlap check done
once. On a device whose memory is host-addressable (fsim, verilator:
:meth:`~tessera.driver.base.Device.host_view`) those buffers are views of the arena, so a CPU
step is just its kernels' raw calls; otherwise each slot has one persistent host buffer that
the step fills from, and writes back to, device memory.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np

from tessera.driver.base import Device, RunStats
from tessera.errors import DeviceError, KernelError, ProgramError
from tessera.isa import INSN_BYTES
from tessera.runtime.builder import relocate
from tessera.runtime.plan import REGION_BASES, CpuStep, Plan, Slot
from tessera.runtime.profile import LayerProfile, Profile

__all__ = ["Executor"]


class Executor:
    """A plan laid out on one device, ready to run any number of times."""

    def __init__(self, plan: Plan, device: Device):
        if device.config != plan.config:
            raise DeviceError(f"the model was compiled for {plan.config.summary()}, but the "
                              f"device is {device.config.summary()}")
        self.plan, self.dev = plan, device
        self.cfg = plan.config
        self._bufs = []
        try:
            self._lay_out(plan, device)
        except BaseException:
            self.close()  # nothing of a failed layout stays allocated on the device
            raise

    def _lay_out(self, plan: Plan, device: Device) -> None:
        self.arena = self._alloc(max(plan.arena_size, 1))
        self.params = self._alloc(max(plan.params_size, 1))
        bases = {"arena": self.arena.addr, "params": self.params.addr}
        # The regions are exactly the buffers allocated here: nothing relocates outside them.
        regions = {REGION_BASES["arena"]: (plan.arena_size, self.arena.addr),
                   REGION_BASES["params"]: (plan.params_size, self.params.addr)}
        self.addr = {name: bases[s.region] + s.offset for name, s in plan.slots.items()}
        for name, data in plan.params.items():
            device.write(self.addr[name], data)
        self.code: dict[int, tuple[int, int]] = {}
        self.code_bytes: dict[int, bytes] = {}
        self.uop_addr: dict[int, int] = {}
        for k, step in enumerate(plan.steps):
            if step.kind != "accel":
                continue
            uop = self._alloc(max(len(step.uop_words), 4))
            self.uop_addr[k] = uop.addr
            if step.uop_words:
                device.write(uop.addr, step.uop_words)
            try:
                code = relocate(step.code, self.cfg, step.uop_load_pcs, uop.addr, regions)
            except ProgramError as exc:
                raise DeviceError(f"step {step.name!r}: {exc}") from None
            cbuf = self._alloc(len(code))
            device.write(cbuf.addr, code)
            self.code[k] = (cbuf.addr, len(code) // INSN_BYTES)
            self.code_bytes[k] = code
        self._views = {region: device.host_view(buf)
                       for region, buf in (("arena", self.arena), ("params", self.params))}
        self._host: dict[str, np.ndarray] = {}  # slot -> its persistent host buffer (no views)
        self.cpu: dict[int, Callable[[], None]] = {}
        for k, step in enumerate(plan.steps):
            if step.kind == "cpu":
                self.cpu[k] = self._bind(step)

    def _slot_buffer(self, name: str) -> np.ndarray:
        """The host array a CPU kernel reads or writes slot ``name`` through: a view of device
        memory when it is host-addressable, else a persistent host buffer (params read once)."""
        slot = self.plan.slots[name]
        shape, dtype = self._stored(slot)
        view = self._views.get(slot.region)
        if view is not None:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            base = self.addr[name] - (self.arena if slot.region == "arena" else self.params).addr
            return view[base:base + nbytes].view(dtype).reshape(shape)
        buf = self._host.get(name)
        if buf is None:
            buf = self._host[name] = (self.read_slot(name) if slot.region == "params"
                                      else np.empty(shape, dtype))
        return buf

    def _bind(self, step: CpuStep) -> Callable[[], None]:
        try:
            bound = step.op.bind([self._slot_buffer(s) if s else None for s in step.inputs],
                                 [self._slot_buffer(s) for s in step.outputs])
        except KernelError as exc:
            raise DeviceError(f"step {step.name!r}: {exc}") from None
        if all(v is not None for v in self._views.values()):
            return bound
        # Device memory is not host-addressable: copy the arena inputs in, the outputs out.
        loads = [(self._host[s], self.addr[s]) for s in step.inputs
                 if s and self.plan.slots[s].region == "arena"]
        stores = [(self._host[s], self.addr[s]) for s in step.outputs]
        dev = self.dev

        def run() -> None:
            for buf, addr in loads:
                raw = np.frombuffer(dev.read(addr, buf.nbytes), np.uint8)
                buf.reshape(-1).view(np.uint8)[:] = raw
            bound()
            for buf, addr in stores:
                dev.write(addr, buf)
        return run

    def _alloc(self, n: int):
        buf = self.dev.alloc(n, align=self.cfg.dram_align)
        self._bufs.append(buf)
        return buf

    @property
    def buffers(self) -> tuple:
        """Every device buffer this executor allocated (arena, params, each accelerator step's
        micro-ops and code), in allocation order: all the device memory a run can touch."""
        return tuple(self._bufs)

    def close(self) -> None:
        for buf in self._bufs:
            self.dev.free(buf)
        self._bufs.clear()

    @staticmethod
    def _stored(slot: Slot) -> tuple[tuple[int, ...], str]:
        return tuple(slot.shape), slot.dtype

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
        self.write_inputs(feeds)
        layers = self.run_steps(0, len(self.plan.steps), profile=profile, progress=progress,
                                timeout_cycles=timeout_cycles)
        return self.read_outputs(), (self.profile_of(layers) if profile else None)

    def write_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Write the graph inputs (checked feeds, by graph input name) into their slots."""
        if self.dev.closed:
            raise DeviceError(f"the {self.dev.kind} device of this executor is closed")
        for name, slot in self.plan.inputs.items():
            self.write_slot(slot, feeds[name])

    def read_outputs(self) -> list[np.ndarray]:
        """The graph outputs, in graph order, read from their slots."""
        return [self.read_slot(self.plan.outputs[o]) for o in self.plan.outputs]

    def profile_of(self, layers: list[LayerProfile]) -> Profile:
        return Profile(self.dev.kind, self.cfg, layers, self._dram_timing())

    def run_steps(self, start: int, stop: int, profile: bool = False, progress: bool = False,
                  timeout_cycles: int | None = None,
                  stats: dict[int, RunStats] | None = None,
                  predicted: dict[int, int | None] | None = None) -> list[LayerProfile]:
        """Run steps ``start .. stop-1`` on the device as it is; return their profile records
        (empty unless ``profile``). ``stats``, when given, receives every accelerator step's
        :class:`~tessera.driver.base.RunStats` by step index; ``predicted`` gives the cycle
        model's cycles per accelerator step for the profile (else computed here)."""
        plan = self.plan
        if self.dev.closed:
            raise DeviceError(f"the {self.dev.kind} device of this executor is closed")
        layers: list[LayerProfile] = []
        cpu = self.cpu
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=stop - start, desc="run", unit="step", file=sys.stderr,
                       leave=False)
        for k in range(start, stop):
            step = plan.steps[k]
            if not (profile or progress):  # the hot path
                if k in cpu:
                    cpu[k]()
                else:
                    addr, count = self.code[k]
                    st = self.dev.run(addr, count, timeout_cycles)
                    if stats is not None:
                        stats[k] = st
                continue
            t0 = time.perf_counter()
            if step.kind == "accel":
                addr, count = self.code[k]
                st = self.dev.run(addr, count, timeout_cycles)
                if stats is not None:
                    stats[k] = st
                rec = LayerProfile(step.name, "accel", step.op, 0.0, st.cycles,
                                   step.info.get("macs", 0), step.info.get("gemm_steps", 0),
                                   dict(st.counters), dict(step.info))
                if profile:
                    rec.program = (self.code_bytes[k], addr, count)
                    rec.predicted = (predicted[k] if predicted is not None
                                     else self._predict(rec.program, st.cycles))
            else:
                cpu[k]()
                rec = LayerProfile(step.name, "cpu", step.info.get("op", "?"), 0.0,
                                   macs=step.info.get("macs", 0), info=dict(step.info))
            rec.wall_ms = (time.perf_counter() - t0) * 1e3
            if profile:
                layers.append(rec)
            if bar is not None:
                bar.set_postfix_str(step.name[:30], refresh=False)
                bar.update()
        if bar is not None:
            bar.close()
        return layers

    def _dram_timing(self):
        """The device's DRAM knobs (fsim and verilator have them), else None."""
        from tessera.sim.timing import DramTiming

        lat, bpc = (getattr(self.dev, n, None) for n in ("read_latency", "beats_per_cycle"))
        return DramTiming(lat, bpc) if lat is not None and bpc is not None else None

    def _predict(self, program: tuple[bytes, int, int], cycles: int | None) -> int | None:
        """The cycle model's cycles for a layer: fsim's own, else predicted for the device's
        DRAM knobs (None on a device without them)."""
        if self.dev.kind == "fsim":
            return cycles
        dram = self._dram_timing()
        if dram is None:
            return None
        from tessera.sim import timing

        code, addr, count = program
        return timing.predict(timing.decode_stream(code, self.cfg), self.cfg, dram,
                              insn_addr=addr, insn_count=count).cycles

