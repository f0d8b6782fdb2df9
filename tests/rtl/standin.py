"""A small stand-in for ``tessera_core`` with the same ports (test-only).

It exercises the native harness without the real core: the register file of ``tessera/regs.py``
over AXI4-Lite, and on start a copy engine that moves ``INSN_COUNT * 16`` bytes from
``INSN_ADDR`` to the address in the extra register ``DST`` (0x1C) with AXI4 INCR bursts of up to
16 beats that never cross 4 KiB. ``DST == 0`` makes the engine wait forever (to test timeouts);
``INSN_COUNT == 0xDEAD`` ends with ERROR_CODE 1, ERROR_PC 7 (no copy). ``irq`` is the done flag.
"""

from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Signal
from amaranth.back import verilog
from amaranth.lib.memory import Memory

from tessera.regs import COUNTERS, Reg, counter_offset
from tessera.tools import amaranth_yosys

DST = 0x1C


class StandIn(Elaboratable):
    def __init__(self, bus_bits: int = 64, cross_4k: bool = False):
        self.bus_bits = bus_bits
        self.cross_4k = cross_4k
        bb = bus_bits // 8
        p = "m_axi"
        self.ports = {}

        def sig(name, width):
            s = Signal(width, name=name)
            self.ports[name] = s
            return s

        for n, w in [("awid", 4), ("awaddr", 32), ("awlen", 8), ("awsize", 3), ("awburst", 2),
                     ("awvalid", 1), ("awready", 1), ("wdata", bus_bits), ("wstrb", bb),
                     ("wlast", 1), ("wvalid", 1), ("wready", 1), ("bid", 4), ("bresp", 2),
                     ("bvalid", 1), ("bready", 1), ("arid", 4), ("araddr", 32), ("arlen", 8),
                     ("arsize", 3), ("arburst", 2), ("arvalid", 1), ("arready", 1), ("rid", 4),
                     ("rdata", bus_bits), ("rresp", 2), ("rlast", 1), ("rvalid", 1),
                     ("rready", 1)]:
            setattr(self, n, sig(f"{p}_{n}", w))
        for n, w in [("awaddr", 8), ("awprot", 3), ("awvalid", 1), ("awready", 1), ("wdata", 32),
                     ("wstrb", 4), ("wvalid", 1), ("wready", 1), ("bresp", 2), ("bvalid", 1),
                     ("bready", 1), ("araddr", 8), ("arprot", 3), ("arvalid", 1),
                     ("arready", 1), ("rdata", 32), ("rresp", 2), ("rvalid", 1), ("rready", 1)]:
            setattr(self, "l_" + n, sig(f"s_axil_{n}", w))
        self.irq = sig("irq", 1)

    def elaborate(self, platform):
        m = Module()
        bb = self.bus_bits // 8
        log_bb = bb.bit_length() - 1
        count, addr, dst = Signal(32), Signal(32), Signal(32)
        busy, done, error = Signal(), Signal(), Signal()
        err_code, err_pc = Signal(32), Signal(32)
        cycles = Signal(64)
        rd_bytes, wr_bytes = Signal(32), Signal(32)
        m.d.comb += self.irq.eq(done)

        # ---- AXI-Lite: one write and one read at a time ----
        wr_addr, have_aw, have_w, wr_data = Signal(8), Signal(), Signal(), Signal(32)
        start = Signal()
        m.d.comb += [self.l_awready.eq(~have_aw & ~self.l_bvalid),
                     self.l_wready.eq(~have_w & ~self.l_bvalid)]
        with m.If(self.l_awvalid & self.l_awready):
            m.d.sync += [have_aw.eq(1), wr_addr.eq(self.l_awaddr)]
        with m.If(self.l_wvalid & self.l_wready):
            m.d.sync += [have_w.eq(1), wr_data.eq(self.l_wdata)]
        with m.If(have_aw & have_w):
            m.d.sync += [have_aw.eq(0), have_w.eq(0), self.l_bvalid.eq(1)]
            with m.Switch(wr_addr):
                with m.Case(Reg.CONTROL):
                    m.d.comb += start.eq(wr_data[0])
                with m.Case(Reg.INSN_COUNT):
                    m.d.sync += count.eq(wr_data)
                with m.Case(Reg.INSN_ADDR):
                    m.d.sync += addr.eq(wr_data)
                with m.Case(DST):
                    m.d.sync += dst.eq(wr_data)
        with m.If(self.l_bvalid & self.l_bready):
            m.d.sync += self.l_bvalid.eq(0)

        m.d.comb += self.l_arready.eq(~self.l_rvalid)
        with m.If(self.l_arvalid & self.l_arready):
            m.d.sync += self.l_rvalid.eq(1)
            regs = {Reg.CONTROL: Cat(busy, done, error), Reg.INSN_COUNT: count,
                    Reg.INSN_ADDR: addr, Reg.ERROR_CODE: err_code, Reg.ERROR_PC: err_pc,
                    Reg.CYCLES_LO: cycles[:32], Reg.CYCLES_HI: cycles[32:], DST: dst,
                    counter_offset("dram_read_bytes"): rd_bytes,
                    counter_offset("dram_write_bytes"): wr_bytes}
            with m.Switch(self.l_araddr):
                for off, val in regs.items():
                    with m.Case(int(off)):
                        m.d.sync += self.l_rdata.eq(val)
                with m.Default():
                    m.d.sync += self.l_rdata.eq(0)
        with m.If(self.l_rvalid & self.l_rready):
            m.d.sync += self.l_rvalid.eq(0)
        assert len(COUNTERS) * 4 + 0x20 < 256

        # ---- copy engine ----
        buf = m.submodules.buf = Memory(shape=self.bus_bits, depth=16, init=[])
        wp, rp = buf.write_port(), buf.read_port(domain="comb")
        src, dptr, left = Signal(32), Signal(32), Signal(32)  # left: beats remaining
        n, k = Signal(5), Signal(5)
        m_src_room = (4096 - src[:12]) >> log_bb
        m_dst_room = (4096 - dptr[:12]) >> log_bb
        chunk = Signal(32)
        m.d.comb += chunk.eq(left)
        with m.If(left > 16):
            m.d.comb += chunk.eq(16)
        c2, c3 = Signal(32), Signal(32)
        m.d.comb += [c2.eq(chunk), c3.eq(c2)]
        with m.If((m_src_room < chunk) & (not self.cross_4k)):
            m.d.comb += c2.eq(m_src_room)
        with m.If(m_dst_room < c2):
            m.d.comb += c3.eq(m_dst_room)
        m.d.comb += [self.arid.eq(1), self.arsize.eq(log_bb), self.arburst.eq(1),
                     self.awid.eq(2), self.awsize.eq(log_bb), self.awburst.eq(1),
                     self.wstrb.eq(Const(-1, bb)), self.bready.eq(1),
                     self.araddr.eq(src), self.awaddr.eq(dptr),
                     self.arlen.eq(n - 1), self.awlen.eq(n - 1),
                     wp.addr.eq(k), wp.data.eq(self.rdata), rp.addr.eq(k),
                     self.wdata.eq(rp.data), self.wlast.eq(k == n - 1)]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), err_code.eq(0),
                                 err_pc.eq(0), cycles.eq(0), rd_bytes.eq(0), wr_bytes.eq(0),
                                 src.eq(addr), dptr.eq(dst), left.eq(count << (4 - log_bb))]
                    with m.If(count == 0xDEAD):
                        m.next = "ERROR"
                    with m.Elif(dst == 0):
                        m.next = "HANG"
                    with m.Else():
                        m.next = "NEXT"
            with m.State("NEXT"):
                with m.If(left == 0):
                    m.d.sync += [busy.eq(0), done.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [n.eq(c3), k.eq(0)]
                    m.next = "AR"
            with m.State("AR"):
                m.d.comb += self.arvalid.eq(1)
                with m.If(self.arready):
                    m.next = "R"
            with m.State("R"):
                m.d.comb += [self.rready.eq(1), wp.en.eq(self.rvalid)]
                with m.If(self.rvalid):
                    m.d.sync += [k.eq(k + 1), rd_bytes.eq(rd_bytes + bb)]
                    with m.If(self.rlast):
                        m.d.sync += k.eq(0)
                        m.next = "AW"
            with m.State("AW"):
                m.d.comb += self.awvalid.eq(1)
                with m.If(self.awready):
                    m.next = "W"
            with m.State("W"):
                m.d.comb += self.wvalid.eq(1)
                with m.If(self.wready):
                    m.d.sync += [k.eq(k + 1), wr_bytes.eq(wr_bytes + bb)]
                    with m.If(k == n - 1):
                        m.next = "B"
            with m.State("B"):
                with m.If(self.bvalid):
                    m.d.sync += [src.eq(src + (n << log_bb)), dptr.eq(dptr + (n << log_bb)),
                                 left.eq(left - n)]
                    m.next = "NEXT"
            with m.State("ERROR"):
                m.d.sync += [busy.eq(0), done.eq(1), error.eq(1), err_code.eq(1),
                             err_pc.eq(7)]
                m.next = "IDLE"
            with m.State("HANG"):
                pass
        return m


def standin_verilog(bus_bits: int = 64, cross_4k: bool = False) -> str:
    """Verilog of the stand-in; ``cross_4k`` makes its read bursts ignore the 4 KiB rule."""
    top = StandIn(bus_bits, cross_4k)
    with amaranth_yosys():
        return verilog.convert(top, name="tessera_core", ports=list(top.ports.values()))
