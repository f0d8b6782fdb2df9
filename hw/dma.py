"""2-D DMA engines between DRAM (through :class:`~tessera.hw.axi.AxiMaster` clients) and SRAM.

:class:`RowLoader` runs the LOAD loop of SPEC §4 for one of several target buffers: it requests
every DRAM row (``y_size`` rows of ``x_size`` elements, ``stride`` bytes apart) ahead of time and
writes the dense padded region ``(y_pad_0 + y_size + y_pad_1) x (x_pad_0 + x_size + x_pad_1)``
from ``sram_base`` on, one element (or one bus-wide lane of a wide element) per cycle, with
zero elements for the padding. :class:`RowStorer` runs the STORE loop: ``y_size`` rows of
``x_size`` consecutive out-buffer elements to DRAM rows ``stride`` bytes apart.

Elements narrower than the bus share beats (the first element of a row may sit in the middle of
a beat, and strobes cover only the written bytes); elements at least as wide as the bus take
``elem_bits / bus_bits`` beats each.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.axi import read_client_signature, write_client_signature
from tessera.hw.insn import bad_param

__all__ = ["Target", "LoadCmd", "StoreCmd", "RowLoader", "RowStorer"]

LoadCmd = data.StructLayout({
    "target": 3, "sram_base": 16, "addr": 32, "stride": 32, "x_size": 16, "y_size": 16,
    "y_pad_0": 4, "y_pad_1": 4, "x_pad_0": 4, "x_pad_1": 4,
})
StoreCmd = data.StructLayout({
    "sram_base": 16, "addr": 32, "stride": 32, "x_size": 16, "y_size": 16,
})


@dataclass(frozen=True)
class Target:
    """One buffer a :class:`RowLoader` can fill.

    ``dram_bits``: bits of one element in DRAM; ``sram_bits``: bits of one buffer element;
    ``gran``: write granularity of the buffer's write port; ``sext``: each 8-bit DRAM lane is
    sign-extended to ``sram_bits / dram_bits * 8`` bits (ACC_8BIT), otherwise the widths match.
    """

    dram_bits: int
    sram_bits: int
    gran: int
    sext: bool = False

    def check(self, bus_bits: int) -> None:
        for name in ("dram_bits", "sram_bits", "gran"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 8 or v & (v - 1):
                raise HwError(f"Target.{name} must be a power of two >= 8, not {v!r}")
        ratio = self.sram_bits // self.dram_bits
        if self.sram_bits % self.dram_bits or (ratio != 1) != self.sext:
            raise HwError(f"Target.sram_bits must equal dram_bits unless sext, not {self!r}")
        if self.chunk_sram_bits(bus_bits) % self.gran:
            raise HwError(f"Target.gran must divide the per-beat write width, not {self.gran}")

    def chunk_dram_bits(self, bus_bits: int) -> int:
        return min(self.dram_bits, bus_bits)

    def chunk_sram_bits(self, bus_bits: int) -> int:
        return self.chunk_dram_bits(bus_bits) * (self.sram_bits // self.dram_bits)


def _log2(x: int) -> int:
    return x.bit_length() - 1


class RowLoader(wiring.Component):
    """LOAD DMA into one of ``targets``; ``cmd.payload.target`` selects it.

    Per target ``i`` the buffer write port is ``wr_addr`` / ``wr{i}_data`` / ``wr{i}_en``
    (``en`` has one bit per ``gran`` bits; all zero when nothing is written). ``read_bytes`` is
    the number of DRAM payload bytes consumed this cycle.
    """

    def __init__(self, cfg: Config, targets: list[Target]):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        if not targets or len(targets) > 8:
            raise bad_param(self, f"targets must hold 1 to 8 Target records, not {targets!r}")
        for t in targets:
            t.check(cfg.mem_bus_bits)
        self._cfg = cfg
        self._targets = list(targets)
        members = {
            "cmd": In(stream.Signature(LoadCmd)),
            "rd": Out(read_client_signature(cfg.mem_bus_bits)),
            "busy": Out(1),
            "wr_addr": Out(16),
            "read_bytes": Out(16),
        }
        for i, t in enumerate(targets):
            members[f"wr{i}_data"] = Out(t.sram_bits)
            members[f"wr{i}_en"] = Out(t.sram_bits // t.gran)
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        bus = self._cfg.mem_bus_bits
        lbb = _log2(bus // 8)
        cmd = self.cmd.payload

        tgt = Signal(3)
        stride = Signal(32)
        row_bytes = Signal(33)
        xs, ys = Signal(16), Signal(16)
        yp0, xp0 = Signal(4), Signal(4)
        n_rows = Signal(17)  # y_pad_0 + y_size + y_pad_1
        n_cols = Signal(17)  # x_pad_0 + x_size + x_pad_1

        # --- request issuer: one read request per DRAM row -----------------------------------
        i_active = Signal()
        i_addr = Signal(32)
        i_left = Signal(16)
        i_end = Signal(33)
        m.d.comb += i_end.eq(i_addr + row_bytes + (bus // 8 - 1))
        m.d.comb += [
            self.rd.req.valid.eq(i_active),
            self.rd.req.payload.addr.eq(Cat(Signal(lbb), i_addr[lbb:])),
            self.rd.req.payload.beats.eq((i_end >> lbb) - (i_addr >> lbb)),
        ]
        with m.If(self.rd.req.valid & self.rd.req.ready):
            m.d.sync += [i_addr.eq(i_addr + stride), i_left.eq(i_left - 1)]
            with m.If(i_left == 1):
                m.d.sync += i_active.eq(0)

        # --- writer: walks the dense padded region -------------------------------------------
        w_active = Signal()
        r = Signal(17)
        c = Signal(17)
        lane = Signal(range(max(2, max(t.dram_bits // bus for t in self._targets))))
        k = Signal(range(max(2, max(bus // t.dram_bits for t in self._targets))))
        waddr = Signal(16)
        row_addr = Signal(32)  # DRAM byte address of the current data row (for its offset)

        row_is_data = Signal()
        col_is_data = Signal()
        last_data_col = Signal()
        m.d.comb += [
            row_is_data.eq((r >= yp0) & (r < yp0 + ys)),
            col_is_data.eq((c >= xp0) & (c < xp0 + xs)),
            last_data_col.eq(c == xp0 + xs - 1),
        ]
        is_data = row_is_data & col_is_data
        elem_done = Signal()
        beat = self.rd.data.payload
        m.d.comb += self.wr_addr.eq(waddr)

        with m.If(w_active):
            with m.If(~is_data):
                m.d.comb += elem_done.eq(1)
                for i in range(len(self._targets)):
                    with m.If(tgt == i):
                        m.d.comb += [getattr(self, f"wr{i}_en").eq(-1),
                                     getattr(self, f"wr{i}_data").eq(0)]
            with m.Else():
                for i, t in enumerate(self._targets):
                    with m.If(tgt == i):
                        self._data_write(m, i, t, beat, lane, k, c, xp0, row_addr,
                                         last_data_col, elem_done)

        with m.If(elem_done):
            m.d.sync += waddr.eq(waddr + 1)
            with m.If(c == n_cols - 1):
                m.d.sync += [c.eq(0), r.eq(r + 1)]
                with m.If(row_is_data):
                    m.d.sync += row_addr.eq(row_addr + stride)
                with m.If(r == n_rows - 1):
                    m.d.sync += w_active.eq(0)
            with m.Else():
                m.d.sync += c.eq(c + 1)

        # --- command intake -------------------------------------------------------------------
        m.d.comb += [
            self.busy.eq(i_active | w_active),
            self.cmd.ready.eq(~i_active & ~w_active),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            rows = cmd.y_pad_0 + cmd.y_size + cmd.y_pad_1
            rb = Signal(33)
            for i, t in enumerate(self._targets):
                with m.If(cmd.target == i):
                    m.d.comb += rb.eq(cmd.x_size << _log2(t.dram_bits // 8))
            m.d.sync += [
                tgt.eq(cmd.target), stride.eq(cmd.stride), row_bytes.eq(rb),
                xs.eq(cmd.x_size), ys.eq(cmd.y_size), yp0.eq(cmd.y_pad_0),
                xp0.eq(cmd.x_pad_0), n_rows.eq(rows),
                n_cols.eq(cmd.x_pad_0 + cmd.x_size + cmd.x_pad_1),
                i_addr.eq(cmd.addr), i_left.eq(cmd.y_size),
                i_active.eq((cmd.y_size != 0) & (cmd.x_size != 0)),
                r.eq(0), c.eq(0), lane.eq(0), k.eq(0), waddr.eq(cmd.sram_base),
                row_addr.eq(cmd.addr), w_active.eq((rows != 0) & (cmd.x_size != 0)),
            ]
        return m

    def _data_write(self, m, i, t, beat, lane, k, c, xp0, row_addr, last_data_col,
                    elem_done) -> None:
        bus = self._cfg.mem_bus_bits
        en = getattr(self, f"wr{i}_en")
        dat = getattr(self, f"wr{i}_data")
        c_d = t.chunk_dram_bits(bus)
        c_s = t.chunk_sram_bits(bus)
        if t.dram_bits >= bus:
            chunk = beat
            chunk_idx = lane
            last_chunk = lane == t.dram_bits // bus - 1
            m.d.comb += [self.rd.data.ready.eq(1), elem_done.eq(self.rd.data.valid & last_chunk)]
            with m.If(self.rd.data.valid):
                m.d.sync += lane.eq(Mux(last_chunk, 0, lane + 1))
        else:
            epb = bus // t.dram_bits
            k0 = row_addr[:_log2(bus // 8)] >> _log2(t.dram_bits // 8)
            k_eff = Signal(range(epb), name=f"k_eff{i}")
            m.d.comb += k_eff.eq(Mux(c == xp0, k0, k))
            chunk = beat.word_select(k_eff, t.dram_bits)
            chunk_idx = 0
            m.d.comb += [self.rd.data.ready.eq((k_eff == epb - 1) | last_data_col),
                         elem_done.eq(self.rd.data.valid)]
            with m.If(self.rd.data.valid):
                m.d.sync += k.eq(k_eff + 1)
        if t.sext:
            lane_in = self._cfg.inp_bits
            lane_out = lane_in * (t.sram_bits // t.dram_bits)
            chunk = Cat(*[Cat(chunk[j:j + lane_in], chunk[j + lane_in - 1].replicate(
                lane_out - lane_in)) for j in range(0, c_d, lane_in)])
        per = c_s // t.gran
        m.d.comb += dat.eq(chunk.replicate(t.sram_bits // c_s))
        with m.If(self.rd.data.valid):
            m.d.comb += [en.eq(((1 << per) - 1) << (chunk_idx * per)),
                         self.read_bytes.eq(c_d // 8)]


class RowStorer(wiring.Component):
    """STORE DMA from a buffer with ``elem_bits`` elements: ``rd_addr``/``rd_en`` drive the
    buffer's synchronous read port, ``rd_data`` is its output. ``busy`` stays high until every
    write of the command has been acknowledged. ``write_bytes`` counts payload bytes."""

    def __init__(self, cfg: Config, elem_bits: int):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        if not isinstance(elem_bits, int) or elem_bits < 8 or elem_bits & (elem_bits - 1):
            raise bad_param(self, f"elem_bits must be a power of two >= 8, not {elem_bits!r}")
        self._cfg = cfg
        self._e = elem_bits
        super().__init__({
            "cmd": In(stream.Signature(StoreCmd)),
            "wr": Out(write_client_signature(cfg.mem_bus_bits)),
            "busy": Out(1),
            "rd_addr": Out(16),
            "rd_en": Out(1),
            "rd_data": In(elem_bits),
            "write_bytes": Out(16),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        bus = self._cfg.mem_bus_bits
        e = self._e
        lbb = _log2(bus // 8)
        leb = _log2(e // 8)
        cmd = self.cmd.payload

        stride = Signal(32)
        xs = Signal(16)
        # request issuer
        i_active = Signal()
        i_addr = Signal(32)
        i_left = Signal(16)
        i_end = Signal(33)
        m.d.comb += i_end.eq(i_addr + (xs << leb) + (bus // 8 - 1))
        m.d.comb += [
            self.wr.req.valid.eq(i_active),
            self.wr.req.payload.addr.eq(Cat(Signal(lbb), i_addr[lbb:])),
            self.wr.req.payload.beats.eq((i_end >> lbb) - (i_addr >> lbb)),
        ]
        with m.If(self.wr.req.valid & self.wr.req.ready):
            m.d.sync += [i_addr.eq(i_addr + stride), i_left.eq(i_left - 1)]
            with m.If(i_left == 1):
                m.d.sync += i_active.eq(0)

        # element reader: one synchronous SRAM read ahead of the packer
        rd_left = Signal(32)  # elements still to read
        rd_c = Signal(16)
        rd_addr = Signal(16)
        el_valid = Signal()
        el_first = Signal()  # first element of its row
        el_last = Signal()  # last element of its row
        consume = Signal()
        issue = Signal()
        m.d.comb += [issue.eq((~el_valid | consume) & (rd_left != 0)),
                     self.rd_en.eq(issue), self.rd_addr.eq(rd_addr)]
        with m.If(issue):
            m.d.sync += [rd_addr.eq(rd_addr + 1), rd_left.eq(rd_left - 1),
                         el_valid.eq(1), el_first.eq(rd_c == 0), el_last.eq(rd_c == xs - 1),
                         rd_c.eq(Mux(rd_c == xs - 1, 0, rd_c + 1))]
        with m.Elif(consume):
            m.d.sync += el_valid.eq(0)

        # packer
        row_addr = Signal(32)
        with m.If(consume & el_last):
            m.d.sync += row_addr.eq(row_addr + stride)
        out = self.wr.data
        pending = Signal()
        if e >= bus:
            lane = Signal(range(max(2, e // bus)))
            last_lane = lane == e // bus - 1
            m.d.comb += [
                out.valid.eq(el_valid),
                out.payload.data.eq(self.rd_data.word_select(lane, bus)),
                out.payload.strb.eq(-1),
                consume.eq(out.valid & out.ready & last_lane),
            ]
            with m.If(out.valid & out.ready):
                m.d.sync += lane.eq(Mux(last_lane, 0, lane + 1))
        else:
            epb = bus // e
            beat = Signal(bus)
            strb = Signal(bus // 8)
            k = Signal(range(epb))
            k0 = row_addr[:lbb] >> leb
            k_eff = Signal(range(epb))
            m.d.comb += [
                k_eff.eq(Mux(el_first, k0, k)),
                consume.eq(el_valid & ~pending),
                out.valid.eq(pending),
                out.payload.data.eq(beat),
                out.payload.strb.eq(strb),
            ]
            with m.If(consume):
                m.d.sync += [
                    beat.word_select(k_eff, e).eq(self.rd_data),
                    strb.word_select(k_eff, e // 8).eq(-1),
                    k.eq(k_eff + 1),
                ]
                with m.If((k_eff == epb - 1) | el_last):
                    m.d.sync += pending.eq(1)
            with m.If(out.valid & out.ready):
                m.d.sync += [pending.eq(0), strb.eq(0)]
        with m.If(consume):
            m.d.comb += self.write_bytes.eq(e // 8)

        active = Signal()
        m.d.comb += [
            self.busy.eq(active),
            self.cmd.ready.eq(~active),
        ]
        with m.If(active & ~i_active & (rd_left == 0) & ~el_valid & ~pending & ~self.wr.busy
                  & ~self.wr.req.valid):
            m.d.sync += active.eq(0)
        with m.If(self.cmd.valid & self.cmd.ready):
            n = cmd.x_size * cmd.y_size
            m.d.sync += [
                stride.eq(cmd.stride), xs.eq(cmd.x_size), i_addr.eq(cmd.addr),
                i_left.eq(cmd.y_size), i_active.eq((cmd.y_size != 0) & (cmd.x_size != 0)),
                rd_left.eq(n), rd_c.eq(0), rd_addr.eq(cmd.sram_base), row_addr.eq(cmd.addr),
                active.eq(1),
            ]
        return m


def sequence_dma_insns(m: Module, *, cmd, insn: Signal, x_size, pop, pop_queue, push,
                       push_queue, engine, busy: Signal, retire: Signal, status) -> None:
    """The instruction loop of the load and store modules: take a command, pop its token (if
    flagged), run the DMA engine unless ``x_size == 0``, wait for it, push its token (if
    flagged) and retire. A push to a full queue stalls here (SPEC §5). ``status`` (a
    :data:`~tessera.hw.deadlock.ModuleStatusSignature` port) tells the deadlock detector
    whether an instruction is in progress, whether it waits on a token queue, and its pc."""
    pc = Signal.like(status.pc)
    m.d.comb += status.pc.eq(pc)
    with m.FSM():
        with m.State("IDLE"):
            m.d.comb += cmd.ready.eq(1)
            with m.If(cmd.valid):
                m.d.sync += [insn.eq(cmd.payload.insn), pc.eq(cmd.payload.pc)]
                m.next = "POP"
        with m.State("POP"):
            m.d.comb += [status.busy.eq(1), status.blocked.eq(pop & ~pop_queue.valid)]
            with m.If(~pop | pop_queue.valid):
                m.d.comb += pop_queue.ready.eq(pop)
                m.next = "EXEC"
        with m.State("EXEC"):
            m.d.comb += [busy.eq(1), status.busy.eq(1)]
            with m.If(x_size == 0):
                m.next = "PUSH"
            with m.Else():
                m.d.comb += engine.cmd.valid.eq(1)
                with m.If(engine.cmd.ready):
                    m.next = "WAIT"
        with m.State("WAIT"):
            m.d.comb += [busy.eq(1), status.busy.eq(1)]
            with m.If(~engine.busy):
                m.next = "PUSH"
        with m.State("PUSH"):
            m.d.comb += [status.busy.eq(1), status.blocked.eq(push & ~push_queue.ready)]
            with m.If(~push | push_queue.ready):
                m.d.comb += [push_queue.valid.eq(push), retire.eq(1)]
                m.next = "IDLE"
