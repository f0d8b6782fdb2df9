"""The GEMM array: ``BATCH x BLOCK_OUT`` int8 dot products of length ``BLOCK_IN`` (SPEC §4)."""

from __future__ import annotations

from collections.abc import Callable

from amaranth import Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.insn import bad_param

__all__ = ["GemmArray", "adder_tree"]


def adder_tree(terms: list[Value], add: Callable[[Value, Value], Value] | None = None) -> Value:
    """The sum of ``terms`` as a balanced tree of two-input adders (``add(a, b)``, else ``+``)."""
    add = add or (lambda a, b: a + b)
    if not terms:
        raise HwError("adder_tree needs at least one term")
    while len(terms) > 1:
        nxt = [add(terms[i], terms[i + 1]) for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


class GemmArray(wiring.Component):
    """Combinational ``dot[b][o] = sum_k inp[b][k] * wgt[o][k]`` (signed int8 operands).

    ``inp`` is one input element ``[BATCH][BLOCK_IN]``, ``wgt`` one weight element
    ``[BLOCK_OUT][BLOCK_IN]``, both packed row-major from bit 0; ``dot`` holds
    ``BATCH*BLOCK_OUT`` accumulator-width lanes, lane ``b*BLOCK_OUT + o`` at bits
    ``[acc_bits*lane, acc_bits*(lane+1))``.
    """

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "inp": In(cfg.inp_elem_bytes * 8),
            "wgt": In(cfg.wgt_elem_bytes * 8),
            "dot": Out(cfg.batch * cfg.block_out * cfg.acc_bits),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        ib, wb, ab = cfg.inp_bits, cfg.wgt_bits, cfg.acc_bits
        bi, bo = cfg.block_in, cfg.block_out

        # Operands, products and every partial sum are accumulator-width signals: the sum is
        # taken modulo 2**acc_bits either way, so the lanes are bit-identical to a widening tree
        # truncated at the end, and Verilator then emits one word-size operation per node
        # instead of a sign extension and mask per tree level. Yosys narrows the operators back
        # (the ulx3s array synthesises to the same LUT4/CCU2C/MULT18X18D counts).
        def wide(v: Value, name: str | None = None) -> Signal:
            s = Signal(signed(ab), name=name)
            m.d.comb += s.eq(v)
            return s

        for b in range(cfg.batch):
            x = [wide(self.inp[(b * bi + k) * ib:(b * bi + k + 1) * ib].as_signed(), f"x_{b}_{k}")
                 for k in range(bi)]
            for o in range(bo):
                w = [wide(self.wgt[(o * bi + k) * wb:(o * bi + k + 1) * wb].as_signed(),
                          f"w_{o}_{k}") for k in range(bi)]
                lane = b * bo + o
                s = Signal(signed(ab), name=f"dot_{b}_{o}")
                m.d.comb += s.eq(adder_tree([wide(x[k] * w[k]) for k in range(bi)],
                                             lambda p, q: wide(p + q)))
                m.d.comb += self.dot[lane * ab:(lane + 1) * ab].eq(s)
        return m

