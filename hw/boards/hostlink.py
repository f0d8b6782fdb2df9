"""The board's host-link bridge: SLIP frames with CRC-32 from a byte stream, executed on the SoC.

The wire protocol is :mod:`tessera.hostlink` (constants) and ``docs/host-link.md`` (prose). The
bridge sits between the serial PHY's byte streams (``rx``, ``tx``) and two bus masters: a
LiteDRAM *native port* (``mem_*``: 32-bit words, word addresses) for device memory and an
AXI4-Lite master (``m_axil_*``) for the core's registers.

It is a stop-and-wait server. A request is decoded and checked (CRC residue, length, escapes) as
its bytes arrive; WRITE_MEM payloads are held in a one-frame buffer and committed only after the
CRC has matched, so a corrupt frame never reaches memory. Every CRC-valid request records its
``seq``; a write-type request (``WRITE_CMDS``) that repeats the last ``seq`` is a retry whose
response was lost, so it is acknowledged without being executed again (a RUN is never started
twice). Bytes that arrive while a request is executing are dropped, and the frame they belong
to is skipped silently up to its closing ``END`` (the host times out and resends). A frame that
fails its checks is answered with BAD_CRC or BAD_FRAME, so the host resends at once.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.errors import HwError
from tessera.hostlink import (
    CRC_BYTES,
    CRC_RESIDUE,
    END,
    ESC,
    ESC_END,
    ESC_ESC,
    MAX_PAYLOAD,
    MAX_REG_WORDS,
    REG_SPACE,
    REQ_HEADER_BYTES,
    RESET_CYCLES,
    Cmd,
    Status,
)
from tessera.hw.regfile import axil_slave_members
from tessera.regs import CONTROL_START, Reg

__all__ = ["HostLinkBridge", "axil_master_members", "crc32_byte_matrix", "BRIDGE_TOP"]

BRIDGE_TOP = "tessera_hostlink"
_POLY = 0xEDB88320  # CRC-32 (IEEE 802.3), reflected
_RESIDUE_RAW = ~CRC_RESIDUE & 0xFFFFFFFF  # the register before the final XOR


def axil_master_members(prefix: str) -> dict[str, wiring.Member]:
    """The flat AXI4-Lite master members (master's view) matching the core's slave port."""
    return {name: (Out(m.shape) if m.flow == In else In(m.shape))
            for name, m in axil_slave_members(prefix).items()}


def crc32_byte_matrix() -> list[int]:
    """For each bit of the next CRC register, the mask of inputs it XORs: bits 0..31 of the
    current register and bits 32..39 for the input byte (LSB first)."""
    state = [1 << i for i in range(32)]
    for i in range(8):
        fb = state[0] ^ (1 << (32 + i))
        state = [state[j + 1] if j < 31 else 0 for j in range(32)]
        state = [s ^ fb if (_POLY >> j) & 1 else s for j, s in enumerate(state)]
    return state


_MATRIX = crc32_byte_matrix()


def _crc_next(crc: Signal, byte) -> list:
    bits = [crc[i] for i in range(32)] + [byte[i] for i in range(8)]
    out = []
    for mask in _MATRIX:
        terms = [bits[k] for k in range(40) if (mask >> k) & 1]
        acc = terms[0]
        for t in terms[1:]:
            acc = acc ^ t
        out.append(acc)
    return out


class HostLinkBridge(wiring.Component):
    """Executes host-link requests (``tessera.hostlink.Cmd``) on device memory and registers.

    ``dram_bytes`` is the size of device memory (the native port's address space, in bytes);
    ``info`` the :data:`~tessera.hostlink.INFO_WORDS` words the INFO command returns;
    ``mem_addr_bits`` the width of the native port's word address.
    """

    def __init__(self, dram_bytes: int, info: tuple[int, ...], mem_addr_bits: int):
        if not isinstance(dram_bytes, int) or dram_bytes <= 0 or dram_bytes % 4096 \
                or dram_bytes > 1 << 32:
            raise HwError(f"dram_bytes must be a positive multiple of 4096 up to 4 GiB, not "
                          f"{dram_bytes!r}")
        if (dram_bytes // 4) > 1 << mem_addr_bits:
            raise HwError(f"mem_addr_bits must address {dram_bytes} bytes of 32-bit words, not "
                          f"{mem_addr_bits!r}")
        if not all(isinstance(w, int) and 0 <= w < 1 << 32 for w in info):
            raise HwError(f"info must be 32-bit words, not {info!r}")
        self.dram_bytes, self.info, self.mem_addr_bits = dram_bytes, tuple(info), mem_addr_bits
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "mem_cmd_valid": Out(1), "mem_cmd_ready": In(1), "mem_cmd_we": Out(1),
            "mem_cmd_addr": Out(mem_addr_bits),
            "mem_wdata_valid": Out(1), "mem_wdata_ready": In(1), "mem_wdata_data": Out(32),
            "mem_wdata_we": Out(4),
            "mem_rdata_valid": In(1), "mem_rdata_ready": Out(1), "mem_rdata_data": In(32),
            **axil_master_members("m_axil"),
            "core_rst": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        max_body = REQ_HEADER_BYTES + MAX_PAYLOAD + CRC_BYTES

        # --- receive: SLIP decoding, CRC, header, payload buffer --------------------------------
        m.submodules.buf = buf = memory.Memory(shape=32, depth=MAX_PAYLOAD // 4 + 1, init=[])
        wp = buf.write_port(granularity=8)
        rp = buf.read_port(transparent_for=())
        count = Signal(range(max_body + 2))
        esc, bad, skip = Signal(), Signal(), Signal()
        crc = Signal(32, init=0xFFFFFFFF)
        header = Array(Signal(8, name=f"hdr{i}") for i in range(REQ_HEADER_BYTES))
        cmd, seq = header[0], header[1]
        arg0 = Signal(32)
        arg1 = Signal(32)
        m.d.comb += [arg0.eq(Const(0, 32) | header[2] | (header[3] << 8) | (header[4] << 16)
                             | (header[5] << 24)),
                     arg1.eq(Const(0, 32) | header[6] | (header[7] << 8) | (header[8] << 16)
                             | (header[9] << 24))]
        last_seq, last_valid = Signal(8), Signal()

        rx_byte, rx_data, rx_take = Signal(8), Signal(8), Signal()
        m.d.comb += rx_byte.eq(self.rx.payload)
        with m.If(rx_byte == ESC_END):
            m.d.comb += rx_data.eq(END)
        with m.Elif(rx_byte == ESC_ESC):
            m.d.comb += rx_data.eq(ESC)
        with m.Else():
            m.d.comb += rx_data.eq(rx_byte)
        pay_idx = Signal(range(max_body + 2))
        m.d.comb += pay_idx.eq(count - REQ_HEADER_BYTES)
        dval = Signal(8)  # the data byte a received byte stands for
        m.d.comb += dval.eq(Mux(esc, rx_data, rx_byte))
        m.d.comb += [wp.addr.eq(pay_idx[2:]), wp.data.eq(dval.replicate(4))]
        with m.If(rx_take & (count >= REQ_HEADER_BYTES) & (count < max_body)):
            m.d.comb += wp.en.eq(1 << pay_idx[:2])

        # --- transmit: CRC and SLIP escaping of the response bytes -------------------------------
        tx_byte, tx_valid, tx_raw, tx_crc, tx_take = Signal(8), Signal(), Signal(), Signal(), \
            Signal()
        pend, pend_valid = Signal(8), Signal()
        ocrc = Signal(32, init=0xFFFFFFFF)
        special = (tx_byte == END) | (tx_byte == ESC)
        with m.If(pend_valid):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(pend)]
            with m.If(self.tx.ready):
                m.d.sync += pend_valid.eq(0)
        with m.Elif(tx_valid):
            m.d.comb += self.tx.valid.eq(1)
            with m.If(~tx_raw & special):
                m.d.comb += self.tx.payload.eq(ESC)
                with m.If(self.tx.ready):
                    m.d.sync += [pend_valid.eq(1),
                                 pend.eq((tx_byte == END).as_unsigned() * ESC_END
                                         | (tx_byte == ESC).as_unsigned() * ESC_ESC)]
            with m.Else():
                m.d.comb += self.tx.payload.eq(tx_byte)
            m.d.comb += tx_take.eq(self.tx.ready)
        with m.If(tx_take & tx_crc):
            m.d.sync += ocrc.eq(Cat(*_crc_next(ocrc, tx_byte)))

        # --- execution state ---------------------------------------------------------------------
        status = Signal(8)
        word = Signal(32)           # the payload word being sent
        widx = Signal(range(MAX_PAYLOAD // 4 + 2))  # payload word index
        nwords = Signal(range(MAX_PAYLOAD // 4 + 2))
        bidx = Signal(2)            # byte of `word` being sent
        crc_idx = Signal(2)
        step = Signal(2)            # RUN: which register write
        payload_len = Signal(range(max_body + 2))
        m.d.comb += payload_len.eq(count - REQ_HEADER_BYTES - CRC_BYTES)
        info = Array(Const(w, 32) for w in self.info)
        words = Signal(range(MAX_PAYLOAD // 4 + 2))
        m.d.comb += words.eq(arg1[2:])
        axw_addr, axw_data = Signal(8), Signal(32)
        aw_done, w_done = Signal(), Signal()
        mem_base = Signal(self.mem_addr_bits)
        m.d.comb += mem_base.eq(arg0[2:])
        range_ok = Signal()
        m.d.comb += range_ok.eq((arg0[:2] == 0) & (Const(0, 34) + arg0 + arg1 <= self.dram_bytes))
        len_ok = Signal()
        m.d.comb += len_ok.eq((arg1[:2] == 0) & (arg1 != 0) & (arg1 <= MAX_PAYLOAD))
        reg_ok = Signal()
        m.d.comb += reg_ok.eq((arg0[:2] == 0) & (arg0 < REG_SPACE))
        regs_ok = Signal()  # READ_REG's range: arg1 words from arg0
        m.d.comb += regs_ok.eq(reg_ok & (Const(0, 34) + arg0 + (arg1 << 2) <= REG_SPACE))
        count_ok = Signal()
        m.d.comb += count_ok.eq((arg1 != 0) & (arg1 <= MAX_REG_WORDS))
        reg_addr = Signal(8)
        m.d.comb += reg_addr.eq(arg0[:8] + (widx << 2))
        rst_count = Signal(range(RESET_CYCLES + 1))
        with m.If(rst_count != 0):
            m.d.sync += rst_count.eq(rst_count - 1)
        m.d.comb += self.core_rst.eq(rst_count != 0)
        is_dup = Signal()
        m.d.comb += is_dup.eq(last_valid & (last_seq == seq)
                              & ((cmd == Cmd.WRITE_MEM) | (cmd == Cmd.WRITE_REG)
                                 | (cmd == Cmd.RUN) | (cmd == Cmd.RESET)))
        ax = {k: getattr(self, k) for k in axil_master_members("m_axil")}

        m.d.comb += self.rx.ready.eq(1)  # the serial PHY cannot wait: every byte is taken
        with m.FSM() as fsm:
            with m.State("RECV"):
                with m.If(self.rx.valid):
                    with m.If(rx_byte == END):
                        with m.If((count != 0) & ~skip):
                            m.next = "CHECK"
                        with m.Else():
                            m.d.sync += [count.eq(0), crc.eq(0xFFFFFFFF), bad.eq(0), esc.eq(0)]
                        m.d.sync += skip.eq(0)
                    with m.Elif(skip):
                        pass
                    with m.Elif(~esc & (rx_byte == ESC)):
                        m.d.sync += esc.eq(1)
                    with m.Else():
                        with m.If(esc & (rx_byte != ESC_END) & (rx_byte != ESC_ESC)):
                            m.d.sync += bad.eq(1)
                        m.d.sync += esc.eq(0)
                        m.d.comb += rx_take.eq(1)
                        with m.If(count <= max_body):
                            m.d.sync += [count.eq(count + 1),
                                         crc.eq(Cat(*_crc_next(crc, dval)))]
                        with m.Else():
                            m.d.sync += bad.eq(1)
                        with m.Switch(count):
                            for i in range(REQ_HEADER_BYTES):
                                with m.Case(i):
                                    m.d.sync += header[i].eq(dval)

            with m.State("CHECK"):
                m.d.sync += [widx.eq(0), bidx.eq(0), crc_idx.eq(0), step.eq(0), nwords.eq(0),
                             aw_done.eq(0), w_done.eq(0), ocrc.eq(0xFFFFFFFF)]
                with m.If(bad | (count < REQ_HEADER_BYTES + CRC_BYTES)):
                    m.d.sync += status.eq(Status.BAD_FRAME)
                    m.next = "T_START"
                with m.Elif(crc != _RESIDUE_RAW):
                    m.d.sync += status.eq(Status.BAD_CRC)
                    m.next = "T_START"
                with m.Else():
                    m.d.sync += [last_seq.eq(seq), last_valid.eq(1), status.eq(Status.OK)]
                    with m.If(is_dup):
                        m.next = "T_START"
                    with m.Elif((cmd != Cmd.WRITE_MEM) & (payload_len != 0)):
                        m.d.sync += status.eq(Status.BAD_LEN)
                        m.next = "T_START"
                    with m.Else():
                        with m.Switch(cmd):
                            with m.Case(Cmd.INFO):
                                m.d.sync += nwords.eq(len(self.info))
                                m.next = "T_START"
                            with m.Case(Cmd.READ_MEM):
                                with m.If(~len_ok):
                                    m.d.sync += status.eq(Status.BAD_LEN)
                                with m.Elif(~range_ok):
                                    m.d.sync += status.eq(Status.BAD_ADDR)
                                with m.Else():
                                    m.d.sync += nwords.eq(words)
                                m.next = "T_START"
                            with m.Case(Cmd.WRITE_MEM):
                                with m.If(~len_ok | (payload_len != arg1)):
                                    m.d.sync += status.eq(Status.BAD_LEN)
                                    m.next = "T_START"
                                with m.Elif(~range_ok):
                                    m.d.sync += status.eq(Status.BAD_ADDR)
                                    m.next = "T_START"
                                with m.Else():
                                    m.next = "WM_CMD"
                            with m.Case(Cmd.READ_REG):
                                with m.If(~count_ok):
                                    m.d.sync += status.eq(Status.BAD_COUNT)
                                with m.Elif(~regs_ok):
                                    m.d.sync += status.eq(Status.BAD_ADDR)
                                with m.Else():
                                    m.d.sync += nwords.eq(arg1[:7])
                                m.next = "T_START"
                            with m.Case(Cmd.WRITE_REG):
                                with m.If(~reg_ok):
                                    m.d.sync += status.eq(Status.BAD_ADDR)
                                    m.next = "T_START"
                                with m.Else():
                                    m.d.sync += [axw_addr.eq(arg0[:8]), axw_data.eq(arg1)]
                                    m.next = "AXW"
                            with m.Case(Cmd.RUN):
                                m.d.sync += [axw_addr.eq(Reg.INSN_ADDR), axw_data.eq(arg0)]
                                m.next = "AXW"
                            with m.Case(Cmd.RESET):
                                m.d.sync += rst_count.eq(RESET_CYCLES)
                                m.next = "T_START"
                            with m.Default():
                                m.d.sync += status.eq(Status.BAD_CMD)
                                m.next = "T_START"

            # --- WRITE_MEM: commit the buffered payload, one word per command ------------------
            with m.State("WM_CMD"):
                m.d.comb += [rp.addr.eq(widx), self.mem_cmd_valid.eq(1), self.mem_cmd_we.eq(1),
                             self.mem_cmd_addr.eq(mem_base + widx)]
                with m.If(self.mem_cmd_ready):
                    m.next = "WM_DATA"
            with m.State("WM_DATA"):
                m.d.comb += [rp.addr.eq(widx), self.mem_wdata_valid.eq(1),
                             self.mem_wdata_data.eq(rp.data), self.mem_wdata_we.eq(0xF)]
                with m.If(self.mem_wdata_ready):
                    m.d.sync += widx.eq(widx + 1)
                    with m.If(widx + 1 == words):
                        m.d.sync += widx.eq(0)
                        m.next = "T_START"
                    with m.Else():
                        m.next = "WM_CMD"

            # --- register writes (AXI4-Lite) ------------------------------------------------------
            with m.State("AXW"):
                m.d.comb += [ax["m_axil_awaddr"].eq(axw_addr), ax["m_axil_awvalid"].eq(~aw_done),
                             ax["m_axil_wdata"].eq(axw_data), ax["m_axil_wstrb"].eq(0xF),
                             ax["m_axil_wvalid"].eq(~w_done)]
                aw_now = aw_done | ax["m_axil_awready"]
                w_now = w_done | ax["m_axil_wready"]
                m.d.sync += [aw_done.eq(aw_now), w_done.eq(w_now)]
                with m.If(aw_now & w_now):
                    m.next = "AXB"
            with m.State("AXB"):
                m.d.comb += ax["m_axil_bready"].eq(1)
                with m.If(ax["m_axil_bvalid"]):
                    m.d.sync += [aw_done.eq(0), w_done.eq(0), step.eq(step + 1)]
                    with m.If((cmd == Cmd.RUN) & (step == 0)):
                        m.d.sync += [axw_addr.eq(Reg.INSN_COUNT), axw_data.eq(arg1)]
                        m.next = "AXW"
                    with m.Elif((cmd == Cmd.RUN) & (step == 1)):
                        m.d.sync += [axw_addr.eq(Reg.CONTROL), axw_data.eq(CONTROL_START)]
                        m.next = "AXW"
                    with m.Else():
                        m.next = "T_START"

            # --- response ------------------------------------------------------------------------
            with m.State("T_START"):
                m.d.comb += [tx_valid.eq(1), tx_raw.eq(1), tx_byte.eq(END)]
                with m.If(tx_take):
                    m.next = "T_STATUS"
            with m.State("T_STATUS"):
                m.d.comb += [tx_valid.eq(1), tx_crc.eq(1), tx_byte.eq(status)]
                with m.If(tx_take):
                    m.next = "T_SEQ"
            with m.State("T_SEQ"):
                m.d.comb += [tx_valid.eq(1), tx_crc.eq(1), tx_byte.eq(seq)]
                with m.If(tx_take):
                    m.next = "T_FETCH"
            with m.State("T_FETCH"):
                with m.If(widx == nwords):
                    m.next = "T_CRC"
                with m.Elif(cmd == Cmd.INFO):
                    m.d.sync += word.eq(info[widx[:3]])
                    m.next = "T_BYTES"
                with m.Elif(cmd == Cmd.READ_MEM):
                    m.d.comb += [self.mem_cmd_valid.eq(1), self.mem_cmd_we.eq(0),
                                 self.mem_cmd_addr.eq(mem_base + widx)]
                    with m.If(self.mem_cmd_ready):
                        m.next = "T_RDATA"
                with m.Else():  # READ_REG
                    m.d.comb += [ax["m_axil_araddr"].eq(reg_addr), ax["m_axil_arvalid"].eq(1)]
                    with m.If(ax["m_axil_arready"]):
                        m.next = "T_RREG"
            with m.State("T_RREG"):
                m.d.comb += ax["m_axil_rready"].eq(1)
                with m.If(ax["m_axil_rvalid"]):
                    m.d.sync += word.eq(ax["m_axil_rdata"])
                    m.next = "T_BYTES"
            with m.State("T_RDATA"):
                m.d.comb += self.mem_rdata_ready.eq(1)
                with m.If(self.mem_rdata_valid):
                    m.d.sync += word.eq(self.mem_rdata_data)
                    m.next = "T_BYTES"
            with m.State("T_BYTES"):
                m.d.comb += [tx_valid.eq(1), tx_crc.eq(1), tx_byte.eq(word.word_select(bidx, 8))]
                with m.If(tx_take):
                    m.d.sync += bidx.eq(bidx + 1)
                    with m.If(bidx == 3):
                        m.d.sync += widx.eq(widx + 1)
                        m.next = "T_FETCH"
            with m.State("T_CRC"):
                m.d.comb += [tx_valid.eq(1), tx_byte.eq((~ocrc).word_select(crc_idx, 8))]
                with m.If(tx_take):
                    m.d.sync += crc_idx.eq(crc_idx + 1)
                    with m.If(crc_idx == 3):
                        m.next = "T_END"
            with m.State("T_END"):
                m.d.comb += [tx_valid.eq(1), tx_raw.eq(1), tx_byte.eq(END)]
                with m.If(tx_take):
                    m.d.sync += [count.eq(0), crc.eq(0xFFFFFFFF), bad.eq(0), esc.eq(0)]
                    m.next = "RECV"

        # While not receiving, incoming bytes are dropped and the rest of their frame skipped.
        with m.If(~fsm.ongoing("RECV") & self.rx.valid):
            m.d.sync += skip.eq(rx_byte != END)
        return m
