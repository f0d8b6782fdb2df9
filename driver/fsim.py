"""The ``fsim`` device kind: the functional simulator behind the Device protocol."""

from __future__ import annotations

import time

import numpy as np

from tessera.config import Config
from tessera.driver.base import DEFAULT_MEM_BYTES, Device, RunStats
from tessera.errors import DeviceError, SimError
from tessera.regs import (
    CONTROL_START,
    COUNTER_BASE,
    COUNTERS,
    STATUS_DONE,
    STATUS_ERROR,
    Reg,
)
from tessera.sim import timing
from tessera.sim.fsim import FunctionalSimulator

__all__ = ["FsimDevice"]


class FsimDevice(Device):
    """The functional simulator, with the RTL's cycles from the cycle model.

    Runs complete synchronously. ``RunStats.cycles``, the CYCLES registers and the timing
    counters of ``regs.COUNTERS`` come from :func:`tessera.sim.timing.predict`, the cycle
    model of the RTL behind the verilator device's DRAM model; ``read_latency`` and
    ``beats_per_cycle`` are that model's knobs, with the verilator device's meaning and
    defaults. The prediction is made before anything executes, so ``timeout_cycles`` refuses a
    run that would take longer at once (spec-notes). A program whose deadlock-freedom depends on
    command-queue depth (spec-notes 2) completes on fsim's unbounded queues but deadlocks the
    RTL: it runs, with ``RunStats.cycles`` None; ``last_prediction.blocked`` says why.

    ``fast=False`` runs the simulator's plain loop nests instead of its cached plans (same
    results, much slower; for differential tests and debugging). ``blas_threads`` (default 1;
    None: as configured) limits BLAS threads while a program executes (see
    :class:`~tessera.sim.fsim.FunctionalSimulator`).
    """

    kind = "fsim"

    def __init__(self, config: Config, mem_bytes: int = DEFAULT_MEM_BYTES, *,
                 read_latency: int = 16, beats_per_cycle: float = 1.0, fast: bool = True,
                 blas_threads: int | None = 1):
        super().__init__(config, mem_bytes)
        if not isinstance(fast, bool):
            raise DeviceError(f"fast must be True or False, not {fast!r}")
        if blas_threads is not None and (isinstance(blas_threads, bool) or not isinstance(
                blas_threads, int) or blas_threads < 1):
            raise DeviceError(f"blas_threads must be a positive integer or None, not "
                              f"{blas_threads!r}")
        try:
            self.dram_timing = timing.DramTiming(read_latency, beats_per_cycle)
        except SimError as exc:
            raise DeviceError(str(exc)) from None
        self.read_latency, self.beats_per_cycle = read_latency, beats_per_cycle
        self._cycles = 0
        self.last_prediction: timing.Prediction | None = None
        # np.zeros maps untouched pages lazily, so a large device memory costs nothing up front.
        self._dram = np.zeros(self.mem_bytes, np.uint8)
        alloc = self.allocator
        self.sim = FunctionalSimulator(config, self._dram, alloc.check_rows, fast=fast,
                                       blas_threads=blas_threads,
                                       dma_generation=lambda: alloc.generation)
        self._regs = {Reg.INSN_COUNT: 0, Reg.INSN_ADDR: 0}
        self._status = 0
        self._error = (0, 0)
        self._counters: dict[str, int] = {}
        self.last_error: DeviceError | None = None

    def _mem_write(self, addr: int, data: bytes | np.ndarray) -> None:
        src = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
        self._dram[addr:addr + src.size] = src

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        return self._dram[addr:addr + nbytes].tobytes()

    def _host_memory(self) -> np.ndarray | None:
        return self._dram


    def _write_reg(self, offset: int, value: int) -> None:
        if offset in (Reg.INSN_COUNT, Reg.INSN_ADDR):
            self._regs[Reg(offset)] = int(value) & 0xFFFFFFFF
        elif offset == Reg.CONTROL:
            if value & CONTROL_START:
                try:
                    self.run(self._regs[Reg.INSN_ADDR], self._regs[Reg.INSN_COUNT])
                except DeviceError:
                    pass  # recorded in the status/error registers, as on hardware
        else:
            raise DeviceError(f"register {offset:#x} is not writable")

    def _read_reg(self, offset: int) -> int:
        if offset == Reg.CONTROL:
            return self._status
        if offset in (Reg.INSN_COUNT, Reg.INSN_ADDR):
            return self._regs[Reg(offset)]
        if offset == Reg.ERROR_CODE:
            return self._error[0]
        if offset == Reg.ERROR_PC:
            return self._error[1]
        if offset == Reg.CYCLES_LO:
            return self._cycles & 0xFFFFFFFF
        if offset == Reg.CYCLES_HI:
            return self._cycles >> 32
        index = (offset - COUNTER_BASE) // 4
        if offset % 4 == 0 and 0 <= index < len(COUNTERS):
            return self._counters.get(COUNTERS[index][0], 0) & 0xFFFFFFFF
        raise DeviceError(f"no register at offset {offset:#x}")

    def _run(self, insn_addr: int, insn_count: int, timeout_cycles: int | None) -> RunStats:
        self._regs[Reg.INSN_ADDR], self._regs[Reg.INSN_COUNT] = insn_addr, insn_count
        self._status, self._error = 0, (0, 0)
        t0 = time.perf_counter()
        self._cycles = 0
        prog = self._simulate(self.sim.prepare, insn_addr, insn_count)
        # the model's own cache: one digest per decoded program, a copy per run
        pred = timing.predict(prog, self.config, self.dram_timing, insn_addr=insn_addr,
                              insn_count=insn_count)
        # a deadlock is reported once it has arisen (cycles until then)
        need = pred.cycles if pred.cycles is not None else pred.blocked_at
        if timeout_cycles is not None and need > timeout_cycles:
            # like a timed-out core after its reset: no status bits
            self.last_error = DeviceError(
                f"run of {insn_count} instructions at {insn_addr:#x} timed out: it would "
                f"take {need} cycles > timeout_cycles={timeout_cycles} (the cycle model's "
                f"prediction); nothing was executed")
            raise self.last_error
        self.last_prediction = pred
        counters = self._simulate(self.sim.execute, prog)
        counters.update(pred.counters)
        self._status = STATUS_DONE
        self._counters = counters
        self._cycles = pred.cycles or 0
        stats = dict(counters)
        stats.update({f"bytes_{k}": v for k, v in self.sim.bytes_by_type.items()})
        return RunStats(cycles=pred.cycles, counters=stats,
                        wall_seconds=time.perf_counter() - t0)

    def _simulate(self, step, *args):
        """Call a simulator step; record its error in the registers and re-raise it as a
        DeviceError (SPEC §6 errors incl. code 7 deadlocks with code and pc; races by message)."""
        try:
            return step(*args)
        except SimError as exc:
            self._status = STATUS_DONE | STATUS_ERROR
            if exc.code is not None:
                self._error = (exc.code, exc.pc)
            self.last_error = DeviceError(str(exc), code=exc.code, pc=exc.pc)
            raise self.last_error from None
        except DeviceError as exc:  # DMA outside allocated memory
            self._status = STATUS_DONE | STATUS_ERROR
            self.last_error = exc
            raise
