"""Token-deadlock detection (SPEC §6 v1.1, error 7; reading: ``docs/spec-notes.md``).

The core is deadlocked when every module with work left is *blocked* on a token queue (waiting
to pop an empty queue, or, its instruction completed, to push into a full one), no memory
transaction is outstanding and fetch cannot dispatch anything more. Nothing can then change, so
the state is final; the detector still requires it to hold for :data:`DEADLOCK_WINDOW`
consecutive cycles before it reports, so that a state that only looks final for a cycle or two
(an entry in flight between a command queue and its module) is never reported.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.hw.insn import CMD_PC_BITS, bad_param

__all__ = ["DeadlockDetector", "DEADLOCK_WINDOW", "ModuleStatusSignature"]

DEADLOCK_WINDOW = 128
"""Consecutive deadlocked cycles before error 7 is raised (SPEC: within 256 cycles)."""

ModuleStatusSignature = wiring.Signature({
    "busy": Out(1),      # has a dispatched, unretired instruction (taken or still queued)
    "blocked": Out(1),   # its current instruction waits on a token queue
    "pc": Out(CMD_PC_BITS),  # that instruction's index (valid while blocked)
})
"""What a module reports to the detector (module's view)."""


class DeadlockDetector(wiring.Component):
    """``err`` pulses (with ``err_pc``, the lowest blocked pc) one cycle after the
    :data:`DEADLOCK_WINDOW`-th consecutive cycle in which the modules of ``names`` that are
    ``busy`` are all ``blocked``, at least one is, ``quiet`` holds (no memory transaction
    outstanding) and ``fetch_stuck`` (fetch has dispatched everything it will, or waits on a
    full command queue). ``deadlocked`` is that condition, registered."""

    def __init__(self, names: tuple[str, ...], window: int = DEADLOCK_WINDOW):
        if not names:
            raise bad_param(self, f"names must list the modules, not {names!r}")
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 255:
            raise bad_param(self, f"window must be an integer in [1, 255], not {window!r}")
        self._names, self._window = tuple(names), window
        members = {n: In(ModuleStatusSignature) for n in names}
        members.update({"fetch_stuck": In(1), "quiet": In(1), "err": Out(1),
                        "err_pc": Out(CMD_PC_BITS), "deadlocked": Out(1)})
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        mods = [getattr(self, n) for n in self._names]
        # The condition and the lowest blocked pc are registered (one cycle late, off the
        # modules' timing paths); the window count runs on the registered condition.
        all_blocked = Cat(*(~s.busy | s.blocked for s in mods)).all()
        any_blocked = Cat(*(s.busy & s.blocked for s in mods)).any()
        m.d.sync += self.deadlocked.eq(all_blocked & any_blocked & self.quiet
                                       & self.fetch_stuck)
        low = Signal(CMD_PC_BITS + 1)
        cands = [Mux(s.busy & s.blocked, s.pc, (1 << CMD_PC_BITS)) for s in mods]
        acc = cands[0]
        for c in cands[1:]:
            acc = Mux(c < acc, c, acc)
        m.d.sync += low.eq(acc)

        count = Signal(range(self._window + 1))
        with m.If(~self.deadlocked):
            m.d.sync += count.eq(0)
        with m.Elif(count != self._window):
            m.d.sync += count.eq(count + 1)
        m.d.comb += [
            self.err.eq(self.deadlocked & (count == self._window - 1)),
            self.err_pc.eq(low[:CMD_PC_BITS]),
        ]
        return m
