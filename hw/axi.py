"""AXI4 master for the core's DRAM port (SPEC §6) and the internal DMA client interfaces.

Clients (instruction fetch, the load module, the compute module, the store module) do not speak
AXI. A read client sends ``req`` records ``{addr, beats}`` (``addr`` aligned to the bus width,
``beats`` any count) and receives the data beats in order on ``data``; the write client sends
``req`` records and then exactly that many ``data`` beats ``{data, strb}``. :class:`AxiMaster`
splits every request into INCR bursts of at most 256 beats that never cross a 4 KiB boundary,
keeps several read bursts outstanding, routes read data back to the client that asked for it and
counts write responses. All transactions use ID 0, so the slave returns them in order.

``abort`` makes the master drop every request it has not yet issued, finish the address
handshakes in progress, swallow the read data of outstanding bursts and complete outstanding
write bursts with ``wstrb = 0``; ``idle`` then says when nothing is in flight any more.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.insn import bad_param

__all__ = [
    "axi4_master_members", "ReadReq", "read_client_signature", "write_client_signature",
    "AxiMaster", "MAX_BURST", "PAGE_BYTES",
]

MAX_BURST = 256  # AXI4 INCR burst length limit, in beats
PAGE_BYTES = 4096  # bursts never cross this boundary
OUTSTANDING = 8  # read bursts in flight, and write bursts awaiting data

ReadReq = data.StructLayout({"addr": 32, "beats": 32})


def axi4_master_members(prefix: str, bus_bits: int) -> dict[str, wiring.Member]:
    """The flat AXI4 master port members (master's view), named ``{prefix}_awid`` etc."""
    p = prefix
    return {
        f"{p}_awid": Out(4), f"{p}_awaddr": Out(32), f"{p}_awlen": Out(8),
        f"{p}_awsize": Out(3), f"{p}_awburst": Out(2), f"{p}_awvalid": Out(1),
        f"{p}_awready": In(1),
        f"{p}_wdata": Out(bus_bits), f"{p}_wstrb": Out(bus_bits // 8), f"{p}_wlast": Out(1),
        f"{p}_wvalid": Out(1), f"{p}_wready": In(1),
        f"{p}_bid": In(4), f"{p}_bresp": In(2), f"{p}_bvalid": In(1), f"{p}_bready": Out(1),
        f"{p}_arid": Out(4), f"{p}_araddr": Out(32), f"{p}_arlen": Out(8),
        f"{p}_arsize": Out(3), f"{p}_arburst": Out(2), f"{p}_arvalid": Out(1),
        f"{p}_arready": In(1),
        f"{p}_rid": In(4), f"{p}_rdata": In(bus_bits), f"{p}_rresp": In(2), f"{p}_rlast": In(1),
        f"{p}_rvalid": In(1), f"{p}_rready": Out(1),
    }


def read_client_signature(bus_bits: int) -> wiring.Signature:
    """A read DMA client's port (client's view)."""
    return wiring.Signature({
        "req": Out(stream.Signature(ReadReq)),
        "data": In(stream.Signature(bus_bits)),
    })


def write_client_signature(bus_bits: int) -> wiring.Signature:
    """The write DMA client's port (client's view); ``busy`` while writes are unacknowledged."""
    return wiring.Signature({
        "req": Out(stream.Signature(ReadReq)),
        "data": Out(stream.Signature(data.StructLayout({
            "data": bus_bits, "strb": bus_bits // 8}))),
        "busy": In(1),
    })


def _burst_len(m: Module, addr: Signal, left: Signal, log_bus_bytes: int) -> Signal:
    """Beats of the next burst: min(left, MAX_BURST, beats to the next 4 KiB boundary)."""
    page_beats = Signal(range(PAGE_BYTES + 1))
    m.d.comb += page_beats.eq((PAGE_BYTES - addr[:12]) >> log_bus_bytes)
    cap = Signal(range(PAGE_BYTES + 1))
    m.d.comb += cap.eq(Mux(page_beats < MAX_BURST, page_beats, MAX_BURST))
    length = Signal(range(PAGE_BYTES + 1))
    m.d.comb += length.eq(Mux(left < cap, left, cap))
    return length


class AxiMaster(wiring.Component):
    """AXI4 master shared by ``n_readers`` read clients (fixed priority, lowest index first)
    and one write client."""

    def __init__(self, cfg: Config, n_readers: int):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        if not isinstance(n_readers, int) or isinstance(n_readers, bool) or n_readers < 1:
            raise bad_param(self, f"n_readers must be a positive integer, not {n_readers!r}")
        self._cfg = cfg
        self._n = n_readers
        bus = cfg.mem_bus_bits
        members = axi4_master_members("m_axi", bus)
        members.update({f"rd{i}": In(read_client_signature(bus)) for i in range(n_readers)})
        members["wr"] = In(write_client_signature(bus))
        members["abort"] = In(1)
        members["idle"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        bus_bytes = cfg.mem_bus_bytes
        lbb = bus_bytes.bit_length() - 1
        clients = [getattr(self, f"rd{i}") for i in range(self._n)]

        # --- read address channel -------------------------------------------------------------
        m.submodules.owners = owners = fifo.SyncFIFO(
            width=max(1, (self._n - 1).bit_length()), depth=OUTSTANDING)
        rq_active = Signal()
        rq_addr = Signal(32)
        rq_left = Signal(32)
        rq_owner = Signal(range(self._n))
        arvalid = Signal()
        araddr = Signal(32)
        arlen = Signal(8)
        m.d.comb += [
            self.m_axi_arid.eq(0), self.m_axi_araddr.eq(araddr), self.m_axi_arlen.eq(arlen),
            self.m_axi_arsize.eq(lbb), self.m_axi_arburst.eq(1), self.m_axi_arvalid.eq(arvalid),
        ]
        with m.If(arvalid & self.m_axi_arready):
            m.d.sync += arvalid.eq(0)
        r_len = _burst_len(m, rq_addr, rq_left, lbb)
        r_gen = Signal()
        m.d.comb += r_gen.eq(rq_active & (~arvalid | self.m_axi_arready) & owners.w_rdy
                             & ~self.abort)
        r_last = Signal()
        m.d.comb += r_last.eq(rq_left == r_len)
        with m.If(r_gen):
            m.d.sync += [
                arvalid.eq(1), araddr.eq(rq_addr), arlen.eq(r_len - 1),
                rq_addr.eq(rq_addr + (r_len << lbb)), rq_left.eq(rq_left - r_len),
            ]
            m.d.comb += [owners.w_en.eq(1), owners.w_data.eq(rq_owner)]
            with m.If(r_last):
                m.d.sync += rq_active.eq(0)
        with m.If((~rq_active | (r_gen & r_last)) & ~self.abort):
            granted = Const(0)
            for i, c in enumerate(clients):  # fixed priority: the lowest index wins
                m.d.comb += c.req.ready.eq(~granted)
                with m.If(c.req.valid & ~granted):
                    m.d.sync += [
                        rq_addr.eq(c.req.payload.addr), rq_left.eq(c.req.payload.beats),
                        rq_owner.eq(i), rq_active.eq(c.req.payload.beats != 0),
                    ]
                granted = granted | c.req.valid
        with m.If(self.abort):
            m.d.sync += rq_active.eq(0)

        # --- read data channel ----------------------------------------------------------------
        head = owners.r_data
        rready = Signal()
        with m.If(owners.r_rdy):
            with m.If(self.abort):
                m.d.comb += rready.eq(1)
            with m.Else():
                for i, c in enumerate(clients):
                    m.d.comb += [c.data.payload.eq(self.m_axi_rdata)]
                    with m.If(head == i):
                        m.d.comb += [c.data.valid.eq(self.m_axi_rvalid),
                                     rready.eq(c.data.ready)]
        m.d.comb += [
            self.m_axi_rready.eq(rready),
            owners.r_en.eq(self.m_axi_rvalid & rready & self.m_axi_rlast),
        ]

        # --- write address channel ------------------------------------------------------------
        wr = self.wr
        m.submodules.wlens = wlens = fifo.SyncFIFO(width=9, depth=OUTSTANDING)
        wq_active = Signal()
        wq_addr = Signal(32)
        wq_left = Signal(32)
        awvalid = Signal()
        awaddr = Signal(32)
        awlen = Signal(8)
        b_out = Signal(range(2 * OUTSTANDING + 2))
        m.d.comb += [
            self.m_axi_awid.eq(0), self.m_axi_awaddr.eq(awaddr), self.m_axi_awlen.eq(awlen),
            self.m_axi_awsize.eq(lbb), self.m_axi_awburst.eq(1), self.m_axi_awvalid.eq(awvalid),
        ]
        with m.If(awvalid & self.m_axi_awready):
            m.d.sync += awvalid.eq(0)
        w_len = _burst_len(m, wq_addr, wq_left, lbb)
        w_gen = Signal()
        m.d.comb += w_gen.eq(wq_active & (~awvalid | self.m_axi_awready) & wlens.w_rdy
                             & (b_out < 2 * OUTSTANDING) & ~self.abort)
        w_last = Signal()
        m.d.comb += w_last.eq(wq_left == w_len)
        with m.If(w_gen):
            m.d.sync += [
                awvalid.eq(1), awaddr.eq(wq_addr), awlen.eq(w_len - 1),
                wq_addr.eq(wq_addr + (w_len << lbb)), wq_left.eq(wq_left - w_len),
            ]
            m.d.comb += [wlens.w_en.eq(1), wlens.w_data.eq(w_len - 1)]
            with m.If(w_last):
                m.d.sync += wq_active.eq(0)
        with m.If((~wq_active | (w_gen & w_last)) & ~self.abort):
            m.d.comb += wr.req.ready.eq(1)
            with m.If(wr.req.valid):
                m.d.sync += [
                    wq_addr.eq(wr.req.payload.addr), wq_left.eq(wr.req.payload.beats),
                    wq_active.eq(wr.req.payload.beats != 0),
                ]
        with m.If(self.abort):
            m.d.sync += wq_active.eq(0)

        # --- write data and response channels -------------------------------------------------
        wbeat = Signal(9)
        wlast = Signal()
        m.d.comb += wlast.eq(wbeat == wlens.r_data)
        with m.If(self.abort):
            m.d.comb += [self.m_axi_wvalid.eq(wlens.r_rdy), self.m_axi_wstrb.eq(0),
                         self.m_axi_wdata.eq(0)]
        with m.Else():
            m.d.comb += [
                self.m_axi_wvalid.eq(wlens.r_rdy & wr.data.valid),
                self.m_axi_wdata.eq(wr.data.payload.data),
                self.m_axi_wstrb.eq(wr.data.payload.strb),
                wr.data.ready.eq(wlens.r_rdy & self.m_axi_wready),
            ]
        m.d.comb += self.m_axi_wlast.eq(wlast)
        with m.If(self.m_axi_wvalid & self.m_axi_wready):
            m.d.sync += wbeat.eq(Mux(wlast, 0, wbeat + 1))
            m.d.comb += wlens.r_en.eq(wlast)
        m.d.comb += self.m_axi_bready.eq(1)
        b_done = self.m_axi_bvalid
        with m.If(w_gen & ~b_done):
            m.d.sync += b_out.eq(b_out + 1)
        with m.Elif(~w_gen & b_done & (b_out != 0)):
            m.d.sync += b_out.eq(b_out - 1)

        m.d.comb += [
            wr.busy.eq(wq_active | awvalid | wlens.r_rdy | (b_out != 0)),
            self.idle.eq(~rq_active & ~arvalid & ~owners.r_rdy & ~wq_active & ~awvalid
                         & ~wlens.r_rdy & (b_out == 0)),
        ]
        return m
