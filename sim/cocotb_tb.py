"""Reusable cocotb testbench for the whole core: driver, monitor, model and checker.

* driver — :class:`CoreTb` clocks and resets ``tessera_core``, serves its memory from
  cocotbext-axi's ``AxiRam`` and drives its registers with ``AxiLiteMaster``;
* monitor — :class:`~tessera.sim.cocotb_axi.BurstMonitor` on the AXI4 master;
* model — the functional simulator (:class:`~tessera.sim.fsim.FunctionalSimulator`) runs the
  same program on its own memory image;
* checker — :func:`check_against_fsim` compares every segment and the architectural counters.

Imported only inside a cocotb simulation.
"""

from __future__ import annotations

import logging

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from tessera.config import Config
from tessera.regs import COUNTER_BASE, COUNTERS, STATUS_DONE, STATUS_ERROR, Reg
from tessera.sim.cocotb_axi import BurstMonitor
from tessera.sim.fsim import FunctionalSimulator

__all__ = ["CoreTb", "RunResult", "FsimModel", "check_against_fsim"]


class RunResult:
    def __init__(self, status: int, error_code: int, error_pc: int, cycles: int,
                 counters: dict[str, int]):
        self.status, self.error_code, self.error_pc = status, error_code, error_pc
        self.cycles, self.counters = cycles, counters

    @property
    def error(self) -> bool:
        return bool(self.status & STATUS_ERROR)


class CoreTb:
    """Driver for ``tessera_core``: clock, reset, AXI RAM, AXI-Lite master, burst monitor."""

    def __init__(self, dut, cfg: Config, mem_bytes: int = 1 << 22, period_ns: int = 10):
        self.dut, self.cfg = dut, cfg
        cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
        for bus in ("m_axi", "s_axil"):  # per-transaction INFO logs would drown the results
            logging.getLogger(f"cocotb.{dut._name}.{bus}").setLevel(logging.WARNING)
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=mem_bytes)
        self.lite = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        self.monitor = BurstMonitor(dut, dut.clk, cfg.mem_bus_bytes)

    async def reset(self, cycles: int = 4) -> None:
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def write_reg(self, offset: int, value: int) -> None:
        await self.lite.write_dword(offset, value)

    async def read_reg(self, offset: int) -> int:
        return await self.lite.read_dword(offset)

    def load_image(self, image: dict[int, bytes]) -> None:
        for addr, data in image.items():
            self.ram.write(addr, data)

    async def run(self, insn_addr: int, insn_count: int, timeout_cycles: int = 200_000,
                  poll: int = 32) -> RunResult:
        await self.write_reg(Reg.INSN_ADDR, insn_addr)
        await self.write_reg(Reg.INSN_COUNT, insn_count)
        await self.write_reg(Reg.CONTROL, 1)
        waited = 0
        while True:
            status = await self.read_reg(Reg.CONTROL)
            if status & STATUS_DONE:
                break
            if waited > timeout_cycles:
                raise AssertionError(f"run did not finish within {timeout_cycles} cycles "
                                     f"(CONTROL={status:#x})")
            await ClockCycles(self.dut.clk, poll)
            waited += poll
        counters = {name: await self.read_reg(COUNTER_BASE + 4 * i)
                    for i, (name, _, _) in enumerate(COUNTERS)}
        cycles = await self.read_reg(Reg.CYCLES_LO) | (await self.read_reg(Reg.CYCLES_HI) << 32)
        return RunResult(status, await self.read_reg(Reg.ERROR_CODE),
                         await self.read_reg(Reg.ERROR_PC), cycles, counters)


class FsimModel:
    """The reference model: one functional simulator kept for the whole testbench, so that its
    SRAMs persist across runs exactly as the RTL's do (SPEC §4). Its memory is a plain array of
    ``mem_bytes`` (the same size as the testbench's AXI RAM); a program's image is written into
    it before each run."""

    def __init__(self, cfg: Config, mem_bytes: int):
        self.dram = np.zeros(mem_bytes, np.uint8)
        self.sim = FunctionalSimulator(cfg, self.dram)

    def read(self, addr: int, nbytes: int) -> bytes:
        return self.dram[addr:addr + nbytes].tobytes()

    def run(self, program) -> dict[str, int]:
        """Run ``program`` (a placed :class:`tessera.sim.progen.Program`); return the
        architectural event counters."""
        for addr, data in sorted(program.memory_image().items()):
            if addr + len(data) > self.dram.size:
                raise ValueError(f"program segment at {addr:#x} ({len(data)} bytes) is beyond "
                                 f"the model's memory ({self.dram.size:#x} bytes)")
            self.dram[addr:addr + len(data)] = np.frombuffer(data, np.uint8)
        return self.sim.run(program.insn_addr, program.insn_count)


def check_against_fsim(tb: CoreTb, model: FsimModel, program, result: RunResult) -> None:
    """Run ``program`` (a :class:`tessera.sim.progen.Program`, already placed at its addresses)
    on the model and compare every segment's bytes and the architectural counters."""
    assert not result.error, (f"RTL error {result.error_code} at pc {result.error_pc} on a "
                              f"well-synchronised program")
    counters = model.run(program)
    for seg in program.segments:
        want = model.read(seg.addr, seg.size)
        got = tb.ram.read(seg.addr, seg.size)
        if got != want:
            first = next(i for i in range(seg.size) if got[i] != want[i])
            raise AssertionError(f"segment {seg.name} differs at {seg.addr + first:#x}: "
                                 f"RTL {got[first]:#04x}, fsim {want[first]:#04x}")
    for name, timing, _ in COUNTERS:
        if not timing:
            assert result.counters[name] == counters[name], (
                f"counter {name}: RTL {result.counters[name]}, fsim {counters[name]}")
