"""Control registers, run control and event counters behind an AXI4-Lite slave (SPEC §6).

Register map and counter order come from :mod:`tessera.regs`. CONTROL write bit 0 starts a run
(ignored while busy); CONTROL reads bit 0 busy, bit 1 done, bit 2 error. When a run ends, done is
set; when it ended on an error, error is set too, in the same cycle (ERROR_CODE and ERROR_PC
hold the first error). Both stay set until the next start. ``irq`` is high while done or error
is set.

Run control: ``start`` pulses for one cycle when a run begins (the core resets its modules and
token queues with it); ``kill`` is high from the first error until the next start (the core holds
its modules in reset and aborts the bus). A run ends when ``finished`` (normal completion) or,
after an error, when ``quiesced`` (no bus transaction in flight).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.insn import CMD_PC_BITS, bad_param
from tessera.regs import COUNTER_BASE, COUNTERS, STATUS_BUSY, STATUS_DONE, STATUS_ERROR, Reg

__all__ = ["axil_slave_members", "RegFile", "EVENT_BITS"]

EVENT_BITS = 16  # width of a per-cycle counter increment


def axil_slave_members(prefix: str) -> dict[str, wiring.Member]:
    """The flat AXI4-Lite slave port members (slave's view), 8-bit addresses, 32-bit data."""
    p = prefix
    return {
        f"{p}_awaddr": In(8), f"{p}_awprot": In(3), f"{p}_awvalid": In(1),
        f"{p}_awready": Out(1),
        f"{p}_wdata": In(32), f"{p}_wstrb": In(4), f"{p}_wvalid": In(1), f"{p}_wready": Out(1),
        f"{p}_bresp": Out(2), f"{p}_bvalid": Out(1), f"{p}_bready": In(1),
        f"{p}_araddr": In(8), f"{p}_arprot": In(3), f"{p}_arvalid": In(1),
        f"{p}_arready": Out(1),
        f"{p}_rdata": Out(32), f"{p}_rresp": Out(2), f"{p}_rvalid": Out(1), f"{p}_rready": In(1),
    }


class RegFile(wiring.Component):
    """The register file; ``ev_<name>`` inputs add to the counters of :data:`regs.COUNTERS`."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        top = COUNTER_BASE + 4 * len(COUNTERS)
        if top > 256:
            raise bad_param(self, f"the counters must fit the 8-bit register space, not end at "
                                  f"{top:#x}")
        self._cfg = cfg
        members = axil_slave_members("s_axil")
        members.update({
            "start": Out(1), "busy": Out(1), "kill": Out(1), "irq": Out(1),
            "insn_addr": Out(32), "insn_count": Out(32),
            "finished": In(1), "quiesced": In(1),
            "err": In(1), "err_code": In(3), "err_pc": In(CMD_PC_BITS),
        })
        members.update({f"ev_{name}": In(EVENT_BITS) for name, _, _ in COUNTERS})
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        busy, done, error = Signal(), Signal(), Signal()
        failed = Signal()  # an error happened in this run; ``error`` shows it once the run ends
        code = Signal(3)
        epc = Signal(32)
        cycles = Signal(64)
        count_reg = Signal(32)
        addr_reg = Signal(32)
        run_count = Signal(32)
        run_addr = Signal(32)
        counters = [Signal(32, name=f"cnt_{name}") for name, _, _ in COUNTERS]
        start = Signal()
        m.d.comb += [
            self.start.eq(start), self.busy.eq(busy), self.kill.eq(failed),
            self.irq.eq(done | error), self.insn_addr.eq(run_addr),
            self.insn_count.eq(run_count),
        ]

        # --- AXI4-Lite write ------------------------------------------------------------------
        bvalid = Signal()
        do_write = Signal()
        m.d.comb += [
            do_write.eq(self.s_axil_awvalid & self.s_axil_wvalid & ~bvalid),
            self.s_axil_awready.eq(do_write), self.s_axil_wready.eq(do_write),
            self.s_axil_bvalid.eq(bvalid), self.s_axil_bresp.eq(0),
        ]
        with m.If(bvalid & self.s_axil_bready):
            m.d.sync += bvalid.eq(0)
        wstart = Signal()
        with m.If(do_write):
            m.d.sync += bvalid.eq(1)
            word = self.s_axil_awaddr[2:]
            for reg, target in ((Reg.INSN_COUNT, count_reg), (Reg.INSN_ADDR, addr_reg)):
                with m.If(word == reg >> 2):
                    for b in range(4):
                        with m.If(self.s_axil_wstrb[b]):
                            m.d.sync += target[8 * b:8 * b + 8].eq(
                                self.s_axil_wdata[8 * b:8 * b + 8])
            with m.If((word == Reg.CONTROL >> 2) & self.s_axil_wstrb[0] & self.s_axil_wdata[0]):
                m.d.comb += wstart.eq(1)
        m.d.sync += start.eq(wstart & ~busy)

        # --- run control --------------------------------------------------------------------------
        with m.If(start):
            m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), failed.eq(0), code.eq(0),
                         epc.eq(0), cycles.eq(0), run_count.eq(count_reg),
                         run_addr.eq(addr_reg)]
            m.d.sync += [c.eq(0) for c in counters]
        with m.Elif(busy):
            m.d.sync += cycles.eq(cycles + 1)
            for c, (name, _, _) in zip(counters, COUNTERS):
                m.d.sync += c.eq(c + getattr(self, f"ev_{name}"))
            with m.If(failed):
                with m.If(self.quiesced):
                    m.d.sync += [busy.eq(0), done.eq(1), error.eq(1)]
            with m.Elif(self.err):
                m.d.sync += [failed.eq(1), code.eq(self.err_code), epc.eq(self.err_pc)]
            with m.Elif(self.finished):
                m.d.sync += [busy.eq(0), done.eq(1)]

        # --- AXI4-Lite read -------------------------------------------------------------------
        rvalid = Signal()
        rdata = Signal(32)
        m.d.comb += [
            self.s_axil_arready.eq(~rvalid), self.s_axil_rvalid.eq(rvalid),
            self.s_axil_rdata.eq(rdata), self.s_axil_rresp.eq(0),
        ]
        with m.If(rvalid & self.s_axil_rready):
            m.d.sync += rvalid.eq(0)
        with m.If(self.s_axil_arvalid & ~rvalid):
            m.d.sync += [rvalid.eq(1), rdata.eq(0)]
            status = ((busy * STATUS_BUSY) | (done * STATUS_DONE) | (error * STATUS_ERROR))
            table = {
                Reg.CONTROL: status, Reg.INSN_COUNT: count_reg, Reg.INSN_ADDR: addr_reg,
                Reg.ERROR_CODE: code, Reg.ERROR_PC: epc, Reg.CYCLES_LO: cycles[:32],
                Reg.CYCLES_HI: cycles[32:],
            }
            for i, c in enumerate(counters):
                table[COUNTER_BASE + 4 * i] = c
            with m.Switch(self.s_axil_araddr[2:]):
                for off, value in table.items():
                    with m.Case(off >> 2):
                        m.d.sync += rdata.eq(value)
        return m
