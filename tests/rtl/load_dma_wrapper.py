"""Test-only wrapper around the load path (SPEC §4 LOAD of INP / WGT) for tb_load_dma.py.

``LoadDmaWrapper`` holds the :class:`~tessera.hw.load.LoadModule` (and through it the
:class:`~tessera.hw.dma.RowLoader`), an :class:`~tessera.hw.axi.AxiMaster` with one read client,
and the input and weight buffers, with simple ports:

* ``insn`` / ``insn_valid`` / ``insn_ready``: one 128-bit LOAD word per handshake (no token
  pops: the C2L queue is never valid, so ``pop_next`` must be 0; L2C is always ready);
* ``retire``: one-cycle pulse when a LOAD has finished writing;
* ``m_axi_*``: the flat AXI4 master port (``AxiBus.from_prefix(dut, "m_axi")``);
* ``inp_raddr`` -> ``inp_rdata`` and ``wgt_raddr`` -> ``wgt_rdata``: asynchronous read ports.

Both buffers start with :func:`initial_word` (never zero), so untouched elements and padding
zeros can be told apart.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.axi import AxiMaster, axi4_master_members
from tessera.hw.load import LoadModule

__all__ = ["LoadDmaWrapper", "initial_word"]


def initial_word(i: int, bits: int) -> int:
    """Initial content of buffer element ``i`` (``bits`` wide): a non-zero pattern."""
    word = 0
    for b in range(bits // 8):
        word |= (((i * 37 + b * 11 + 0x5B) & 0xFF) | 0x80) << (8 * b)
    return word


class LoadDmaWrapper(wiring.Component):
    def __init__(self, cfg: Config):
        self._cfg = cfg
        bus = cfg.mem_bus_bits
        e_inp, e_wgt = cfg.inp_elem_bytes * 8, cfg.wgt_elem_bytes * 8
        members = {
            "insn": In(128), "insn_valid": In(1), "insn_ready": Out(1), "retire": Out(1),
            "inp_raddr": In(16), "inp_rdata": Out(e_inp),
            "wgt_raddr": In(16), "wgt_rdata": Out(e_wgt),
        }
        members.update(axi4_master_members("m_axi", bus))
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        bus = cfg.mem_bus_bits
        e_inp, e_wgt = cfg.inp_elem_bytes * 8, cfg.wgt_elem_bytes * 8
        m.submodules.load = load = LoadModule(cfg)
        m.submodules.axi = axi = AxiMaster(cfg, n_readers=1)
        wiring.connect(m, load.rd, axi.rd0)
        for name, member in axi4_master_members("m_axi", bus).items():
            ours, theirs = getattr(self, name), getattr(axi, name)
            if member.flow == wiring.In:  # slave -> master
                m.d.comb += theirs.eq(ours)
            else:
                m.d.comb += ours.eq(theirs)
        m.d.comb += [
            axi.wr.req.valid.eq(0), axi.wr.data.valid.eq(0), axi.abort.eq(0),
            load.cmd.payload.insn.eq(self.insn), load.cmd.payload.pc.eq(0),
            load.cmd.valid.eq(self.insn_valid), self.insn_ready.eq(load.cmd.ready),
            load.c2l.valid.eq(0), load.l2c.ready.eq(1), self.retire.eq(load.retire),
        ]

        def buf(name, width, depth, waddr, wdata, wen, raddr, rdata):
            g = min(width, bus)
            mem = Memory(shape=width, depth=depth,
                         init=[initial_word(i, width) for i in range(depth)])
            m.submodules[name] = mem
            w = mem.write_port(granularity=g if g < width else None)
            r = mem.read_port(domain="comb")
            m.d.comb += [w.addr.eq(waddr), w.data.eq(wdata), w.en.eq(wen),
                         r.addr.eq(raddr), rdata.eq(r.data)]

        buf("inp_buf", e_inp, cfg.inp_depth, load.inp_waddr, load.inp_wdata, load.inp_wen,
            self.inp_raddr, self.inp_rdata)
        buf("wgt_buf", e_wgt, cfg.wgt_depth, load.wgt_waddr, load.wgt_wdata, load.wgt_wen,
            self.wgt_raddr, self.wgt_rdata)
        return m
