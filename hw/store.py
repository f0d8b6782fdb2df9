"""The store module (SPEC §5): STOREs of the out buffer to DRAM.

Per instruction: pop a C2S token if ``pop_prev``, write ``y_size`` rows of ``x_size`` out
elements, wait until every write is acknowledged (its writes are visible), then push an S2C token
if ``push_prev``. Padding fields are ignored (spec-notes §4); ``x_size == 0`` only synchronises.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.axi import write_client_signature
from tessera.hw.deadlock import ModuleStatusSignature
from tessera.hw.dma import RowStorer, sequence_dma_insns
from tessera.hw.insn import Cmd, bad_param, fields
from tessera.hw.queues import TokenSignature
from tessera.isa import layout

__all__ = ["StoreModule"]


class StoreModule(wiring.Component):
    """Executes the store command queue; reads the out buffer through ``out_r*``."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(Cmd)),
            "wr": Out(write_client_signature(cfg.mem_bus_bits)),
            "c2s": In(TokenSignature),
            "s2c": Out(TokenSignature),
            "out_raddr": Out(16), "out_ren": Out(1), "out_rdata": In(cfg.out_elem_bytes * 8),
            "busy": Out(1), "retire": Out(1), "write_bytes": Out(16),
            "status": Out(ModuleStatusSignature),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        e_out = cfg.out_elem_bytes * 8
        m.submodules.storer = storer = RowStorer(cfg, e_out)
        wiring.connect(m, wiring.flipped(self.wr), storer.wr)
        m.d.comb += [
            self.out_raddr.eq(storer.rd_addr), self.out_ren.eq(storer.rd_en),
            storer.rd_data.eq(self.out_rdata), self.write_bytes.eq(storer.write_bytes),
        ]
        insn = Signal(128)
        mf = fields(insn, layout(cfg).mem)
        shift = (cfg.out_elem_bytes).bit_length() - 1
        sc = storer.cmd.payload
        m.d.comb += [
            sc.sram_base.eq(mf.sram_base), sc.addr.eq(mf.dram_base << shift),
            sc.stride.eq(mf.x_stride << shift), sc.x_size.eq(mf.x_size),
            sc.y_size.eq(mf.y_size),
        ]
        sequence_dma_insns(m, cmd=self.cmd, insn=insn, x_size=mf.x_size, pop=mf.pop_prev,
                           pop_queue=self.c2s, push=mf.push_prev, push_queue=self.s2c,
                           engine=storer, busy=self.busy, retire=self.retire,
                           status=self.status)
        return m
