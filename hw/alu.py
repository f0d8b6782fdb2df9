"""The vector ALU: MIN, MAX, ADD, SHR, MUL over ``BATCH*BLOCK_OUT`` int32 lanes (SPEC §4)."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.config import ALU_OPCODE_BITS, Config
from tessera.hw.insn import bad_param
from tessera.isa import AluOp

__all__ = ["AluLanes"]


class AluLanes(wiring.Component):
    """Combinational ``out = op(a, b)`` lane by lane, all lanes signed accumulator-width.

    MIN/MAX signed; ADD wraps; SHR shifts ``a`` right arithmetically by ``b`` when ``b >= 0``
    and left by ``-b`` otherwise, the amount clamped to ``acc_bits - 1``; MUL keeps the low
    ``acc_bits`` bits of the signed product. Opcodes beyond MUL give 0 (fetch rejects them).
    """

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg = cfg
        lanes = cfg.batch * cfg.block_out
        super().__init__({
            "op": In(ALU_OPCODE_BITS),
            "a": In(lanes * cfg.acc_bits),
            "b": In(lanes * cfg.acc_bits),
            "out": Out(lanes * cfg.acc_bits),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        w = cfg.acc_bits
        top = w - 1
        for lane in range(cfg.batch * cfg.block_out):
            a = self.a[lane * w:(lane + 1) * w].as_signed()
            b = self.b[lane * w:(lane + 1) * w].as_signed()
            res = Signal(signed(w), name=f"alu_{lane}")
            neg = b < 0
            mag = Signal(w + 1, name=f"shamt_full_{lane}")
            m.d.comb += mag.eq(Mux(neg, -b, b))
            sh = Signal(range(w), name=f"shamt_{lane}")
            m.d.comb += sh.eq(Mux(mag > top, top, mag))
            with m.Switch(self.op):
                with m.Case(AluOp.MIN):
                    m.d.comb += res.eq(Mux(a < b, a, b))
                with m.Case(AluOp.MAX):
                    m.d.comb += res.eq(Mux(a > b, a, b))
                with m.Case(AluOp.ADD):
                    m.d.comb += res.eq(a + b)
                with m.Case(AluOp.SHR):
                    m.d.comb += res.eq(Mux(neg, a << sh, a >> sh))
                with m.Case(AluOp.MUL):
                    m.d.comb += res.eq(a * b)
            m.d.comb += self.out[lane * w:(lane + 1) * w].eq(res)
        return m
