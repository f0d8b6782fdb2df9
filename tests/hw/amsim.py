"""Test support: the whole core in Amaranth's simulator behind the SPEC §7 Device protocol.

:class:`AxiDram` is a Python AXI4 slave (in-order, seeded random ready/valid stalls) that checks
the protocol rules the core promises: INCR bursts, at most 256 beats, never crossing 4 KiB,
``wlast`` on the last beat, ID 0. :class:`AmaranthDevice` runs programs on
:class:`~tessera.hw.core.TesseraCore` with it, so the differential tests can use the same
``dev.alloc/write/run/read`` calls as for fsim. Each run builds a fresh simulation, so on-chip
buffers do not persist between runs of this test device.
"""

from __future__ import annotations

import random
from collections import deque

from amaranth.sim import Simulator

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.errors import DeviceError
from tessera.hw.core import TesseraCore
from tessera.regs import COUNTER_BASE, COUNTERS, STATUS_BUSY, STATUS_DONE, STATUS_ERROR, Reg


class AxiDram:
    """AXI4 slave memory model driven from an Amaranth async testbench."""

    def __init__(self, dut: TesseraCore, mem: bytearray, seed: int = 0, stall: float = 0.0):
        self.dut, self.mem = dut, mem
        self.rng = random.Random(seed)
        self.stall = stall
        self.bus_bytes = dut.cfg.mem_bus_bytes
        self.errors: list[str] = []
        self.ar: deque[tuple[int, int]] = deque()
        self.aw: deque[tuple[int, int]] = deque()
        self.wbeats: list[tuple[int, int, int]] = []
        self.b_pending = 0
        self.r_burst: list[int] | None = None  # [addr, beats left]
        self.read_bursts: list[tuple[int, int]] = []
        self.write_bursts: list[tuple[int, int]] = []

    def _check_burst(self, kind: str, addr: int, length: int, size: int, burst: int) -> None:
        if burst != 1:
            self.errors.append(f"{kind} burst type {burst} is not INCR")
        if 1 << size != self.bus_bytes:
            self.errors.append(f"{kind} size {size} is not the bus width")
        if addr % self.bus_bytes:
            self.errors.append(f"{kind} address {addr:#x} is not bus-aligned")
        if addr // 4096 != (addr + length * self.bus_bytes - 1) // 4096:
            self.errors.append(f"{kind} burst {addr:#x}+{length} beats crosses 4 KiB")
        if addr + length * self.bus_bytes > len(self.mem):
            self.errors.append(f"{kind} burst {addr:#x}+{length} beats is outside memory")

    def _go(self) -> bool:
        return self.rng.random() >= self.stall

    async def process(self, ctx) -> None:
        d = self.dut
        bb = self.bus_bytes
        while True:
            rvalid = self.r_burst is not None and self._go()
            if rvalid:
                a = self.r_burst[0]
                ctx.set(d.m_axi_rdata, int.from_bytes(self.mem[a:a + bb], "little"))
                ctx.set(d.m_axi_rlast, self.r_burst[1] == 1)
            ctx.set(d.m_axi_rvalid, rvalid)
            ctx.set(d.m_axi_arready, self._go())
            ctx.set(d.m_axi_awready, self._go())
            ctx.set(d.m_axi_wready, self._go())
            ctx.set(d.m_axi_bvalid, self.b_pending > 0)
            (_, _, arv, arr, ara, arl, ars, arb, rr, awv, awr, awa, awl, aws, awb,
             wv, wr, wd, ws, wl, bv, br) = await ctx.tick().sample(
                d.m_axi_arvalid, d.m_axi_arready, d.m_axi_araddr, d.m_axi_arlen,
                d.m_axi_arsize, d.m_axi_arburst, d.m_axi_rready,
                d.m_axi_awvalid, d.m_axi_awready, d.m_axi_awaddr, d.m_axi_awlen,
                d.m_axi_awsize, d.m_axi_awburst,
                d.m_axi_wvalid, d.m_axi_wready, d.m_axi_wdata, d.m_axi_wstrb, d.m_axi_wlast,
                d.m_axi_bvalid, d.m_axi_bready)
            if arv and arr:
                self._check_burst("read", ara, arl + 1, ars, arb)
                self.ar.append((ara, arl + 1))
                self.read_bursts.append((ara, arl + 1))
            if rvalid and rr:
                self.r_burst[0] += bb
                self.r_burst[1] -= 1
                if self.r_burst[1] == 0:
                    self.r_burst = None
            if self.r_burst is None and self.ar:
                a, n = self.ar.popleft()
                self.r_burst = [a, n]
            if awv and awr:
                self._check_burst("write", awa, awl + 1, aws, awb)
                self.aw.append((awa, awl + 1))
                self.write_bursts.append((awa, awl + 1))
            if wv and wr:
                self.wbeats.append((wd, ws, wl))
            if bv and br:
                self.b_pending -= 1
            self._commit_writes()

    def _commit_writes(self) -> None:
        bb = self.bus_bytes
        while self.aw and self.wbeats:
            addr, n = self.aw[0]
            if len(self.wbeats) < n and not any(b[2] for b in self.wbeats):
                return
            beats, self.wbeats = self.wbeats[:n], self.wbeats[n:]
            if len(beats) < n or not beats[-1][2] or any(b[2] for b in beats[:-1]):
                self.errors.append(f"write burst {addr:#x}: wlast not on beat {n}")
            self.aw.popleft()
            for i, (data, strb, _) in enumerate(beats):
                raw = data.to_bytes(bb, "little")
                for k in range(bb):
                    if strb >> k & 1:
                        self.mem[addr + i * bb + k] = raw[k]
            self.b_pending += 1


class AmaranthDevice(Device):
    """The RTL in Amaranth's Python simulator, as a Device (tests only; slow)."""

    kind = "amaranth"

    def __init__(self, config: Config, mem_bytes: int = 1 << 20, seed: int = 0,
                 stall: float = 0.0):
        super().__init__(config, mem_bytes)
        self.mem = bytearray(mem_bytes)
        self.seed, self.stall = seed, stall
        self.regs: dict[int, int] = {}
        self.dram: AxiDram | None = None

    def _mem_write(self, addr: int, data) -> None:
        self.mem[addr:addr + len(data)] = bytes(data)

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        return bytes(self.mem[addr:addr + nbytes])

    def _write_reg(self, offset: int, value: int) -> None:
        self.regs[offset] = value

    def _read_reg(self, offset: int) -> int:
        return self.regs.get(offset, 0)

    def _run(self, insn_addr: int, insn_count: int, timeout_cycles: int | None) -> RunStats:
        dut = TesseraCore(self.config)
        dram = self.dram = AxiDram(dut, self.mem, self.seed, self.stall)
        limit = timeout_cycles or 200_000
        result: dict = {}

        async def axil_write(ctx, addr, value):
            ctx.set(dut.s_axil_awaddr, addr)
            ctx.set(dut.s_axil_wdata, value)
            ctx.set(dut.s_axil_wstrb, 0xF)
            ctx.set(dut.s_axil_awvalid, 1)
            ctx.set(dut.s_axil_wvalid, 1)
            ctx.set(dut.s_axil_bready, 1)
            await ctx.tick().until(dut.s_axil_awready)
            ctx.set(dut.s_axil_awvalid, 0)
            ctx.set(dut.s_axil_wvalid, 0)
            await ctx.tick().until(dut.s_axil_bvalid)
            ctx.set(dut.s_axil_bready, 0)

        async def axil_read(ctx, addr):
            ctx.set(dut.s_axil_araddr, addr)
            ctx.set(dut.s_axil_arvalid, 1)
            ctx.set(dut.s_axil_rready, 1)
            await ctx.tick().until(dut.s_axil_arready)
            ctx.set(dut.s_axil_arvalid, 0)
            *_, value = await ctx.tick().sample(dut.s_axil_rdata).until(dut.s_axil_rvalid)
            ctx.set(dut.s_axil_rready, 0)
            return value

        async def main(ctx):
            await axil_write(ctx, Reg.INSN_ADDR, insn_addr)
            await axil_write(ctx, Reg.INSN_COUNT, insn_count)
            await axil_write(ctx, Reg.CONTROL, 1)
            status = 0
            for _ in range(limit // 8 + 2):
                await ctx.tick().repeat(8)
                if ctx.get(dut.irq):
                    status = await axil_read(ctx, Reg.CONTROL)
                    break
            result["status"] = status
            for off in (Reg.ERROR_CODE, Reg.ERROR_PC, Reg.CYCLES_LO, Reg.CYCLES_HI):
                result[int(off)] = await axil_read(ctx, off)
            result["counters"] = {
                name: await axil_read(ctx, COUNTER_BASE + 4 * i)
                for i, (name, _, _) in enumerate(COUNTERS)}

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(dram.process, background=True)
        sim.add_testbench(main)
        sim.run()
        if dram.errors:
            raise AssertionError("AXI protocol violations: " + "; ".join(dram.errors[:5]))
        status = result["status"]
        self.regs.update({k: v for k, v in result.items() if isinstance(k, int)})
        if not status & STATUS_DONE:
            raise DeviceError(f"timeout after {limit} cycles (status {status:#x})")
        if status & STATUS_BUSY:
            raise DeviceError(f"CONTROL reads busy together with done ({status:#x})")
        cycles = result[Reg.CYCLES_LO] | result[Reg.CYCLES_HI] << 32
        if status & STATUS_ERROR:
            raise DeviceError(f"error {result[Reg.ERROR_CODE]} at pc {result[Reg.ERROR_PC]}",
                              code=result[Reg.ERROR_CODE], pc=result[Reg.ERROR_PC])
        return RunStats(cycles=cycles, counters=result["counters"])
