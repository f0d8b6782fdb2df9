"""The board SoC (LiteX/Migen): the Tessera core, LiteDRAM's SDR SDRAM controller and the host link.

::

    serial pins -- RS232PHY -- HostLinkBridge --+-- native port (32 bit) ------------+
                   (bytes)     (sys domain)     +-- AXI4-Lite -- CDC --+             |
                                                                       |   LiteDRAM crossbar
                               TesseraCore (core domain) -- s_axil ----+   controller, SDR PHY
                                             `-- m_axi (64 bit) -- LiteDRAMAXI2Native -- CDC --+

``sim=True`` builds the *same* SoC for co-simulation: the SDRAM PHY becomes LiteDRAM's
``SDRAMPHYModel`` (the controller, crossbar and both frontends stay), the serial PHY becomes
a byte-level stream at the top (``serial_sink_*`` into the bridge, ``serial_source_*`` out of
it; with ``uart=True`` the real UART PHY stays, on pins ``serial_tx``/``serial_rx``), and the
clocks and reset are top-level inputs instead of a PLL.

LiteDRAM leaves SDRAM initialisation to a CPU's BIOS; this SoC has no CPU, so
:class:`SdramInit` plays LiteDRAM's own init sequence (``litedram.init``) into the DFI injector's
external port at power-up and holds the bridge in reset until it is done.
"""

from __future__ import annotations

from litedram import modules as litedram_modules
from litedram.core import LiteDRAMCore
from litedram.frontend.axi import LiteDRAMAXI2Native
from litedram.init import get_sdram_phy_init_sequence
from litedram.phy import GENSDRPHY
from litedram.phy.model import SDRAMPHYModel, get_sdram_phy_settings
from litex.build.generic_platform import Pins, Subsignal
from litex.build.io import DDROutput
from litex.gen import LiteXModule
from litex.soc.cores.clock import ECP5PLL
from litex.soc.cores.uart import RS232PHY, RS232PHYModel
from litex.soc.interconnect import stream
from litex.soc.interconnect.axi import (
    AXIInterface,
    AXILiteClockDomainCrossing,
    AXILiteInterface,
)
from migen import (
    ClockDomain,
    ClockDomainsRenamer,
    ClockSignal,
    If,
    Instance,
    ResetSignal,
    Signal,
)
from migen.genlib.fsm import FSM, NextState, NextValue
from migen.genlib.resetsync import AsyncResetSynchronizer

from tessera.config import Config
from tessera.hostlink import INFO_MAGIC, MAX_PAYLOAD, PROTOCOL_VERSION, config_hash
from tessera.hw.boards.board import Board
from tessera.hw.boards.hostlink import BRIDGE_TOP
from tessera.hw.core import TOP_NAME as CORE_TOP

__all__ = ["TesseraSoC", "SdramInit", "SIM_IO", "info_words"]

# The co-simulation top's pins: two clocks, a reset and the byte-level serial port.
SIM_IO = [
    ("sys_clk", 0, Pins(1)),
    ("core_clk", 0, Pins(1)),
    ("sys_rst", 0, Pins(1)),
    ("serial", 0,
        Subsignal("source_valid", Pins(1)), Subsignal("source_ready", Pins(1)),
        Subsignal("source_data", Pins(8)),
        Subsignal("sink_valid", Pins(1)), Subsignal("sink_ready", Pins(1)),
        Subsignal("sink_data", Pins(8))),
]
# The same with the board's bit-level UART pins (the real RS232PHY inside), for cocotb.
SIM_IO_UART = SIM_IO[:3] + [("serial", 0, Subsignal("tx", Pins(1)), Subsignal("rx", Pins(1)))]


def info_words(cfg: Config, board: Board, dram_bytes: int, byte_model: bool,
               ) -> tuple[int, ...]:
    """The INFO block (``tessera.hostlink.Info``) this SoC answers with (baud 0: the serial
    port is the co-simulation's byte model)."""
    return (INFO_MAGIC, PROTOCOL_VERSION, MAX_PAYLOAD, dram_bytes, config_hash(cfg),
            int(board.sys_clk_hz), int(board.core_clk_hz), 0 if byte_model else board.baud)


class SdramInit(LiteXModule):
    """Plays ``litedram.init``'s SDRAM initialisation sequence into ``dfii.ext_dfi``.

    Each step's delay (LiteDRAM's BIOS units, CPU loop iterations) is waited as
    ``4 * delay`` cycles, at least 16; ``done`` rises when the controller has the PHY.
    """

    def __init__(self, dfii, phy_settings, timing_settings):
        self.done = Signal()
        steps, _ = get_sdram_phy_init_sequence(phy_settings, timing_settings)
        longest = max(max(4 * d, 16) for *_, d in steps)
        wait = Signal(max=longest + 1)
        cke, cs, ras, cas, we = (Signal() for _ in range(5))
        phase = dfii.ext_dfi.phases[0]
        address, bank = Signal(len(phase.address)), Signal(len(phase.bank))
        self.comb += [dfii.ext_dfi_sel.eq(~self.done), phase.address.eq(address),
                      phase.bank.eq(bank)]
        for i, p in enumerate(dfii.ext_dfi.phases):
            first = i == 0
            self.comb += [p.cke.eq(cke), p.cs_n.eq(~(cs & first)), p.ras_n.eq(~(ras & first)),
                          p.cas_n.eq(~(cas & first)), p.we_n.eq(~(we & first)),
                          p.rddata_en.eq(0), p.wrdata_en.eq(0)]
            if hasattr(p, "reset_n"):
                self.comb += p.reset_n.eq(1)
        self.fsm = fsm = FSM(reset_state="STEP0")
        for i, (_, addr, ba, cmd, delay) in enumerate(steps):
            flags = set(cmd.split("|"))
            after = f"STEP{i + 1}" if i + 1 < len(steps) else "DONE"
            actions = [address.eq(addr), bank.eq(ba), NextValue(wait, max(4 * delay, 16)),
                       NextState(f"WAIT{i}")]
            if "DFII_CONTROL_CKE" in flags:
                actions.append(NextValue(cke, 1))
            if "DFII_COMMAND_CS" in flags:
                actions += [cs.eq(1), ras.eq("DFII_COMMAND_RAS" in flags),
                            cas.eq("DFII_COMMAND_CAS" in flags), we.eq("DFII_COMMAND_WE" in flags)]
            fsm.act(f"STEP{i}", *actions)
            fsm.act(f"WAIT{i}", If(wait == 0, NextState(after)).Else(NextValue(wait, wait - 1)))
        fsm.act("DONE", self.done.eq(1))


class AXIClockDomainCrossing(LiteXModule):
    """An AXI4 link between two clock domains: one asynchronous FIFO per channel (LiteX has this
    only for AXI4-Lite). LiteDRAM's native-port CDC is not used on the core's path because it
    lets a write command reach the controller ahead of its data (measured: long write bursts
    hang), so the AXI front end runs in the controller's domain and the crossing is here."""

    def __init__(self, master, slave, cd_from: str, cd_to: str, depth: int = 16):
        for name, forward in (("aw", True), ("w", True), ("b", False), ("ar", True),
                              ("r", False)):
            src, dst = getattr(master, name), getattr(slave, name)
            if not forward:
                src, dst = dst, src
            cdc = stream.ClockDomainCrossing(src.description, cd_from if forward else cd_to,
                                             cd_to if forward else cd_from, depth=depth)
            self.add_module(name=f"{name}_cdc", module=cdc)
            self.comb += [src.connect(cdc.sink), cdc.source.connect(dst)]


class _CRG(LiteXModule):
    """Clocks and resets: a PLL from the board's oscillator, or top-level pins in simulation.

    ``link`` (the serial PHY and the bridge) runs on the sys clock and is reset only at power-up;
    ``sys`` (SDRAM PHY, controller, crossbar, init) and ``core`` are also reset by ``soc_rst``
    (the host link's RESET command). ``core`` is a separate clock only when the board's core
    clock differs from its sys clock; otherwise the core runs in ``sys``.
    """

    def __init__(self, platform, board: Board, sim: bool):
        self.cd_sys = ClockDomain()
        self.cd_link = ClockDomain()
        self.soc_rst = Signal()
        self.core_domain = "core" if board.core_clk_hz != board.sys_clk_hz else "sys"
        if self.core_domain == "core":
            self.cd_core = ClockDomain()
        if sim:
            self.comb += self.cd_sys.clk.eq(platform.request("sys_clk"))
            core_pin = platform.request("core_clk")
            if self.core_domain == "core":
                self.comb += self.cd_core.clk.eq(core_pin)
            power_on = platform.request("sys_rst")
        else:
            self.cd_sys_ps = ClockDomain()
            self.pll = pll = ECP5PLL()
            if board.rst_pin is not None:
                self.comb += pll.reset.eq(platform.request(board.rst_pin))
            pll.register_clkin(platform.request(board.clk_pin), board.clk_hz)
            pll.create_clkout(self.cd_sys, board.sys_clk_hz)
            pll.create_clkout(self.cd_sys_ps, board.sys_clk_hz, phase=90)  # the SDRAM's clock
            if self.core_domain == "core":
                pll.create_clkout(self.cd_core, board.core_clk_hz)
            power_on = ~pll.locked
            self.specials += DDROutput(1, 0, platform.request(board.sdram_clock_pin),
                                       ClockSignal("sys_ps"))
            for pad, value in board.extra_outputs:
                self.comb += platform.request(pad).eq(value)
        self.comb += self.cd_link.clk.eq(self.cd_sys.clk)
        self.specials += AsyncResetSynchronizer(self.cd_link, power_on)
        self.specials += AsyncResetSynchronizer(self.cd_sys, power_on | self.soc_rst)
        if self.core_domain == "core":
            self.specials += AsyncResetSynchronizer(self.cd_core, power_on | self.soc_rst)


class TesseraSoC(LiteXModule):
    """The SoC for ``cfg`` on ``board``; ``sim`` selects the co-simulation variant.

    It instantiates the Amaranth-generated modules ``tessera_core`` and ``tessera_hostlink``;
    their Verilog is the caller's to add to the platform (``tessera.hw.boards.build``), the
    bridge's generated from :attr:`bridge_params` (``dram_bytes``, ``info``, ``mem_addr_bits``).
    """

    def __init__(self, platform, cfg: Config, board: Board, *, sim: bool, uart: bool = False):
        self.crg = _CRG(platform, board, sim)
        sys_hz = board.sys_clk_hz

        # --- SDRAM: PHY (or its model), controller, crossbar ----------------------------------
        module = getattr(litedram_modules, board.sdram_module)(sys_hz, "1:1")
        if sim:
            settings = get_sdram_phy_settings(memtype=module.memtype, data_width=16,
                                              clk_freq=sys_hz)
            self.sdrphy = SDRAMPHYModel(module=module, settings=settings, clk_freq=sys_hz)
        else:
            self.sdrphy = GENSDRPHY(platform.request(board.sdram_pins), sys_hz)
        self.sdram = LiteDRAMCore(phy=self.sdrphy, geom_settings=module.geom_settings,
                                  timing_settings=module.timing_settings, clk_freq=sys_hz)
        self.sdram_init = SdramInit(self.sdram.dfii, self.sdrphy.settings,
                                    module.timing_settings)
        geom = module.geom_settings
        self.dram_bytes = dram_bytes = (
            (1 << (geom.bankbits + geom.rowbits + geom.colbits)) * self.sdrphy.settings.databits
            // 8)

        # --- host link: serial PHY and bridge (reset only at power-up) --------------------------
        if sim and not uart:
            uart_phy = RS232PHYModel(platform.request("serial"))
        elif sim:
            uart_phy = RS232PHY(platform.request("serial"), sys_hz, board.baud)
        else:
            uart_phy = RS232PHY(platform.request(board.serial_pins), sys_hz, board.baud)
        self.uart_phy = ClockDomainsRenamer("link")(uart_phy)
        port = self.sdram.crossbar.get_port(data_width=32)
        # The bridge reaches memory only while the SDRAM is initialised (after power-up and
        # after every RESET, which re-runs the init sequence).
        bridge_port = port.__class__(mode=port.mode, address_width=port.address_width,
                                     data_width=port.data_width)
        ok = self.sdram_init.done
        self.comb += [
            port.cmd.valid.eq(bridge_port.cmd.valid & ok), port.cmd.we.eq(bridge_port.cmd.we),
            port.cmd.addr.eq(bridge_port.cmd.addr), port.cmd.last.eq(1),
            bridge_port.cmd.ready.eq(port.cmd.ready & ok),
            port.wdata.valid.eq(bridge_port.wdata.valid & ok),
            port.wdata.data.eq(bridge_port.wdata.data), port.wdata.we.eq(bridge_port.wdata.we),
            bridge_port.wdata.ready.eq(port.wdata.ready & ok),
            bridge_port.rdata.valid.eq(port.rdata.valid), bridge_port.rdata.data.eq(
                port.rdata.data), port.rdata.ready.eq(bridge_port.rdata.ready),
        ]
        axil = AXILiteInterface(data_width=32, address_width=8, clock_domain="link")
        rx, tx = self.uart_phy.source, self.uart_phy.sink
        self.specials += Instance(
            BRIDGE_TOP,
            i_clk=ClockSignal("link"), i_rst=ResetSignal("link"),
            i_rx__valid=rx.valid, o_rx__ready=rx.ready, i_rx__payload=rx.data,
            o_tx__valid=tx.valid, i_tx__ready=tx.ready, o_tx__payload=tx.data,
            o_mem_cmd_valid=bridge_port.cmd.valid, i_mem_cmd_ready=bridge_port.cmd.ready,
            o_mem_cmd_we=bridge_port.cmd.we, o_mem_cmd_addr=bridge_port.cmd.addr,
            o_mem_wdata_valid=bridge_port.wdata.valid, i_mem_wdata_ready=bridge_port.wdata.ready,
            o_mem_wdata_data=bridge_port.wdata.data, o_mem_wdata_we=bridge_port.wdata.we,
            i_mem_rdata_valid=bridge_port.rdata.valid, o_mem_rdata_ready=bridge_port.rdata.ready,
            i_mem_rdata_data=bridge_port.rdata.data,
            o_m_axil_awaddr=axil.aw.addr, o_m_axil_awprot=axil.aw.prot,
            o_m_axil_awvalid=axil.aw.valid, i_m_axil_awready=axil.aw.ready,
            o_m_axil_wdata=axil.w.data, o_m_axil_wstrb=axil.w.strb,
            o_m_axil_wvalid=axil.w.valid, i_m_axil_wready=axil.w.ready,
            i_m_axil_bresp=axil.b.resp, i_m_axil_bvalid=axil.b.valid,
            o_m_axil_bready=axil.b.ready,
            o_m_axil_araddr=axil.ar.addr, o_m_axil_arprot=axil.ar.prot,
            o_m_axil_arvalid=axil.ar.valid, i_m_axil_arready=axil.ar.ready,
            i_m_axil_rdata=axil.r.data, i_m_axil_rresp=axil.r.resp,
            i_m_axil_rvalid=axil.r.valid, o_m_axil_rready=axil.r.ready,
            o_core_rst=self.crg.soc_rst,
        )

        # --- the core (its own clock domain only if the board gives it another clock) -----------
        cd = self.crg.core_domain
        core_axil = AXILiteInterface(data_width=32, address_width=8, clock_domain=cd)
        # Same clock: plain wires (the link and sys domains differ only in their reset).
        self.axil_cdc = AXILiteClockDomainCrossing(
            axil, core_axil, cd_from="link" if cd == "core" else cd, cd_to=cd)
        bus_bits = cfg.mem_bus_bits
        axi = AXIInterface(data_width=bus_bits, address_width=32, id_width=4, clock_domain=cd)
        axi_sys = axi
        if cd != "sys":
            axi_sys = AXIInterface(data_width=bus_bits, address_width=32, id_width=4)
            self.axi_cdc = AXIClockDomainCrossing(axi, axi_sys, cd_from=cd, cd_to="sys")
        core_port = self.sdram.crossbar.get_port(data_width=bus_bits)
        self.axi2native = LiteDRAMAXI2Native(axi_sys, core_port, base_address=0)
        self.specials += Instance(
            CORE_TOP,
            i_clk=ClockSignal(cd), i_rst=ResetSignal(cd),
            o_m_axi_awid=axi.aw.id, o_m_axi_awaddr=axi.aw.addr, o_m_axi_awlen=axi.aw.len,
            o_m_axi_awsize=axi.aw.size, o_m_axi_awburst=axi.aw.burst,
            o_m_axi_awvalid=axi.aw.valid, i_m_axi_awready=axi.aw.ready,
            o_m_axi_wdata=axi.w.data, o_m_axi_wstrb=axi.w.strb, o_m_axi_wlast=axi.w.last,
            o_m_axi_wvalid=axi.w.valid, i_m_axi_wready=axi.w.ready,
            i_m_axi_bid=axi.b.id, i_m_axi_bresp=axi.b.resp, i_m_axi_bvalid=axi.b.valid,
            o_m_axi_bready=axi.b.ready,
            o_m_axi_arid=axi.ar.id, o_m_axi_araddr=axi.ar.addr, o_m_axi_arlen=axi.ar.len,
            o_m_axi_arsize=axi.ar.size, o_m_axi_arburst=axi.ar.burst,
            o_m_axi_arvalid=axi.ar.valid, i_m_axi_arready=axi.ar.ready,
            i_m_axi_rid=axi.r.id, i_m_axi_rdata=axi.r.data, i_m_axi_rresp=axi.r.resp,
            i_m_axi_rlast=axi.r.last, i_m_axi_rvalid=axi.r.valid, o_m_axi_rready=axi.r.ready,
            i_s_axil_awaddr=core_axil.aw.addr, i_s_axil_awprot=core_axil.aw.prot,
            i_s_axil_awvalid=core_axil.aw.valid, o_s_axil_awready=core_axil.aw.ready,
            i_s_axil_wdata=core_axil.w.data, i_s_axil_wstrb=core_axil.w.strb,
            i_s_axil_wvalid=core_axil.w.valid, o_s_axil_wready=core_axil.w.ready,
            o_s_axil_bresp=core_axil.b.resp, o_s_axil_bvalid=core_axil.b.valid,
            i_s_axil_bready=core_axil.b.ready,
            i_s_axil_araddr=core_axil.ar.addr, i_s_axil_arprot=core_axil.ar.prot,
            i_s_axil_arvalid=core_axil.ar.valid, o_s_axil_arready=core_axil.ar.ready,
            o_s_axil_rdata=core_axil.r.data, o_s_axil_rresp=core_axil.r.resp,
            o_s_axil_rvalid=core_axil.r.valid, i_s_axil_rready=core_axil.r.ready,
            o_irq=Signal(name="core_irq"),
        )
        self.bridge_params = dict(dram_bytes=dram_bytes,
                                  info=info_words(cfg, board, dram_bytes, sim and not uart),
                                  mem_addr_bits=len(bridge_port.cmd.addr))
