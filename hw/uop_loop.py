"""The micro-op loop nest of a GEMM or ALU instruction (SPEC §4), stages S0 and S1.

:class:`UopLoop` walks ``for i in iter_out: for j in iter_in: for u in [uop_bgn, uop_end)`` at
one step per cycle: S0 holds the loop counters and addresses the micro-op buffer (checking
``u < uop_depth``); S1 adds the loop offsets to the micro-op's indices. The compute module
instantiates one for its GEMM pipeline and one for its ALU engine; what happens from S1 on
(buffer reads, checks, arithmetic) is theirs.

Loop bounds and factors are registered when the loop starts, so the instruction register may
change while the loop runs (the ALU engine's instructions come from a queue).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.insn import bad_param, fields
from tessera.isa import layout

__all__ = ["UopLoop"]


class UopLoop(wiring.Component):
    """``start`` (one cycle, with ``insn`` valid) begins the loop of ``insn`` (a GEMM or ALU
    word); ``halt`` stops it. Each step appears at S1 as ``s1_valid`` with the accumulator
    index ``dst``, the source index ``src`` (input for GEMM, accumulator for ALU) and the weight
    index ``wgt``. ``uop_addr``/``uop_data`` drive a synchronous read port of the micro-op
    buffer. ``bad`` pulses when S0 would read beyond the buffer (the step is not issued);
    ``busy`` is high while steps remain to be issued."""

    def __init__(self, cfg: Config, alu: bool):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg, self._alu = cfg, alu
        super().__init__({
            "insn": In(128), "start": In(1), "halt": In(1),
            "uop_addr": Out(cfg.log_uop_depth + 1), "uop_data": In(32),
            "busy": Out(1), "bad": Out(1), "s1_valid": Out(1),
            "dst": Out(32), "src": Out(32), "wgt": Out(32),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        lay = layout(cfg)
        f = fields(self.insn, lay.alu if self._alu else lay.gemm)
        run = Signal()
        u = Signal(len(f.uop_end))
        i = Signal(len(f.iter_out))
        j = Signal(len(f.iter_in))
        od_o, od, os_o, os_, ow_o, ow = (Signal(32, name=n) for n in (
            "od_o", "od", "os_o", "os", "ow_o", "ow"))
        # loop bounds and factors, registered at the start (off the S0 path)
        bgn, u_last = Signal.like(u), Signal.like(u)
        j_last, i_last = Signal.like(j), Signal.like(i)
        dfo, dfi = Signal.like(f.dst_factor_out), Signal.like(f.dst_factor_in)
        sfo, sfi = Signal.like(f.src_factor_out), Signal.like(f.src_factor_in)
        wfo = Signal(1 if self._alu else len(f.wgt_factor_out))
        wfi = Signal(1 if self._alu else len(f.wgt_factor_in))
        with m.If(self.start):
            m.d.sync += [
                run.eq((f.iter_out != 0) & (f.iter_in != 0) & (f.uop_end > f.uop_bgn)),
                u.eq(f.uop_bgn), i.eq(0), j.eq(0),
                od_o.eq(0), od.eq(0), os_o.eq(0), os_.eq(0), ow_o.eq(0), ow.eq(0),
                bgn.eq(f.uop_bgn), u_last.eq(f.uop_end - 1), j_last.eq(f.iter_in - 1),
                i_last.eq(f.iter_out - 1), dfo.eq(f.dst_factor_out), dfi.eq(f.dst_factor_in),
                sfo.eq(f.src_factor_out), sfi.eq(f.src_factor_in),
            ]
            if not self._alu:
                m.d.sync += [wfo.eq(f.wgt_factor_out), wfi.eq(f.wgt_factor_in)]
        # S0
        fire = Signal()
        m.d.comb += [
            self.bad.eq(run & ~self.halt & (u >= cfg.uop_depth)),
            fire.eq(run & ~self.halt & ~self.bad),
            self.uop_addr.eq(u),
            self.busy.eq(run),
        ]
        s1_od, s1_os, s1_ow = Signal(32), Signal(32), Signal(32)
        m.d.sync += [self.s1_valid.eq(fire), s1_od.eq(od), s1_os.eq(os_), s1_ow.eq(ow)]
        with m.If(fire):
            with m.If(u != u_last):
                m.d.sync += u.eq(u + 1)
            with m.Else():
                m.d.sync += u.eq(bgn)
                with m.If(j != j_last):
                    m.d.sync += [j.eq(j + 1), od.eq(od + dfi), os_.eq(os_ + sfi),
                                 ow.eq(ow + wfi)]
                with m.Else():
                    m.d.sync += j.eq(0)
                    with m.If(i == i_last):
                        m.d.sync += run.eq(0)
                    with m.Else():
                        nd, ns, nw = od_o + dfo, os_o + sfo, ow_o + wfo
                        m.d.sync += [i.eq(i + 1), od_o.eq(nd), od.eq(nd), os_o.eq(ns),
                                     os_.eq(ns), ow_o.eq(nw), ow.eq(nw)]
        # S1
        uf = fields(self.uop_data, lay.uop)
        m.d.comb += [self.dst.eq(uf.dst_idx + s1_od), self.src.eq(uf.src_idx + s1_os),
                     self.wgt.eq(uf.wgt_idx + s1_ow)]
        return m
