"""The load module (SPEC §5): LOADs of INP and WGT from DRAM into the compute module's buffers.

Per instruction: pop a C2L token if ``pop_next``, run the 2-D padded DMA, push an L2C token if
``push_next`` (stalling while L2C is full). A LOAD with ``x_size == 0`` only synchronises.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.axi import read_client_signature
from tessera.hw.deadlock import ModuleStatusSignature
from tessera.hw.dma import RowLoader, Target, sequence_dma_insns
from tessera.hw.insn import Cmd, bad_param, fields
from tessera.hw.queues import TokenSignature
from tessera.isa import MemType, layout

__all__ = ["LoadModule"]


def _log2(x: int) -> int:
    return x.bit_length() - 1


class LoadModule(wiring.Component):
    """Executes the load command queue; writes the input and weight buffers."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg = cfg
        bus = cfg.mem_bus_bits
        e_inp, e_wgt = cfg.inp_elem_bytes * 8, cfg.wgt_elem_bytes * 8
        super().__init__({
            "cmd": In(stream.Signature(Cmd)),
            "rd": Out(read_client_signature(bus)),
            "c2l": In(TokenSignature),
            "l2c": Out(TokenSignature),
            "inp_waddr": Out(16), "inp_wdata": Out(e_inp), "inp_wen": Out(e_inp // min(e_inp, bus)),
            "wgt_waddr": Out(16), "wgt_wdata": Out(e_wgt), "wgt_wen": Out(e_wgt // min(e_wgt, bus)),
            "busy": Out(1), "retire": Out(1), "read_bytes": Out(16),
            "status": Out(ModuleStatusSignature),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        bus = cfg.mem_bus_bits
        e_inp, e_wgt = cfg.inp_elem_bytes * 8, cfg.wgt_elem_bytes * 8
        m.submodules.loader = loader = RowLoader(cfg, [
            Target(e_inp, e_inp, min(e_inp, bus)), Target(e_wgt, e_wgt, min(e_wgt, bus))])
        wiring.connect(m, wiring.flipped(self.rd), loader.rd)
        m.d.comb += [
            self.inp_waddr.eq(loader.wr_addr), self.inp_wdata.eq(loader.wr0_data),
            self.inp_wen.eq(loader.wr0_en),
            self.wgt_waddr.eq(loader.wr_addr), self.wgt_wdata.eq(loader.wr1_data),
            self.wgt_wen.eq(loader.wr1_en), self.read_bytes.eq(loader.read_bytes),
        ]

        insn = Signal(128)
        mf = fields(insn, layout(cfg).mem)
        is_wgt = mf.memory_type == MemType.WGT
        shift = Signal(4)
        m.d.comb += shift.eq(Mux(is_wgt, _log2(cfg.wgt_elem_bytes), _log2(cfg.inp_elem_bytes)))
        lc = loader.cmd.payload
        m.d.comb += [
            lc.target.eq(is_wgt), lc.sram_base.eq(mf.sram_base),
            lc.addr.eq(mf.dram_base << shift), lc.stride.eq(mf.x_stride << shift),
            lc.x_size.eq(mf.x_size), lc.y_size.eq(mf.y_size),
            lc.y_pad_0.eq(mf.y_pad_0), lc.y_pad_1.eq(mf.y_pad_1),
            lc.x_pad_0.eq(mf.x_pad_0), lc.x_pad_1.eq(mf.x_pad_1),
        ]
        sequence_dma_insns(m, cmd=self.cmd, insn=insn, x_size=mf.x_size, pop=mf.pop_next,
                           pop_queue=self.c2l, push=mf.push_next, push_queue=self.l2c,
                           engine=loader, busy=self.busy, retire=self.retire,
                           status=self.status)
        return m
