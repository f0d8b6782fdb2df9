"""Dependency-token queues (SPEC §5): L2C, C2L, C2S and S2C.

Tokens carry no data, so a queue is a counter of capacity ``depth``. The core clears every queue
at each start (spec-notes §2) by resetting it.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.hw.insn import bad_param

__all__ = ["TokenQueue", "TokenSignature"]

# A ready/valid handshake without payload (what ``stream.Signature(0)`` would be, minus the
# zero-width payload port that generated Verilog cannot declare cleanly).
TokenSignature = wiring.Signature({"valid": Out(1), "ready": In(1)})


class TokenQueue(wiring.Component):
    """A queue of ``depth`` tokens: ``push`` is ready while not full, ``pop`` valid while not
    empty. A push and a pop in the same cycle are both accepted when their conditions hold."""

    def __init__(self, depth: int):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise bad_param(self, f"depth must be a positive integer, not {depth!r}")
        self._depth = depth
        super().__init__({"push": In(TokenSignature), "pop": Out(TokenSignature)})
        self.count = Signal(range(depth + 1))

    def elaborate(self, platform) -> Module:
        m = Module()
        do_push = self.push.valid & self.push.ready
        do_pop = self.pop.valid & self.pop.ready
        m.d.comb += [
            self.push.ready.eq(self.count != self._depth),
            self.pop.valid.eq(self.count != 0),
        ]
        with m.If(do_push & ~do_pop):
            m.d.sync += self.count.eq(self.count + 1)
        with m.Elif(do_pop & ~do_push):
            m.d.sync += self.count.eq(self.count - 1)
        return m
