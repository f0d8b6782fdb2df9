"""cocotb monitor of the core's AXI4 master: records every burst and checks the AXI rules the
SPEC asks for (INCR bursts, full-width beats at most, never across a 4 KiB boundary).

Imported only inside a cocotb simulation (it needs a running simulator).
"""

from __future__ import annotations

from dataclasses import dataclass

import cocotb
from cocotb.triggers import RisingEdge

__all__ = ["Burst", "BurstMonitor"]


@dataclass(frozen=True)
class Burst:
    write: bool
    addr: int
    beats: int
    size: int  # bytes per beat

    @property
    def last_byte(self) -> int:
        return (self.addr & ~(self.size - 1)) + self.beats * self.size - 1


class BurstMonitor:
    """Watches the AR and AW channels of ``prefix`` on every rising edge of ``clock``.

    ``violations`` lists what broke the rules; :meth:`check` raises if it is not empty.
    """

    def __init__(self, dut, clock, bus_bytes: int, prefix: str = "m_axi"):
        self.dut, self.clock, self.bus_bytes, self.prefix = dut, clock, bus_bytes, prefix
        self.bursts: list[Burst] = []
        self.violations: list[str] = []
        self._task = cocotb.start_soon(self._watch())

    def _sig(self, name: str):
        return getattr(self.dut, f"{self.prefix}_{name}")

    def _record(self, ch: str) -> None:
        addr = int(self._sig(f"{ch}addr").value)
        beats = int(self._sig(f"{ch}len").value) + 1
        size = 1 << int(self._sig(f"{ch}size").value)
        burst_type = int(self._sig(f"{ch}burst").value)
        b = Burst(ch == "aw", addr, beats, size)
        self.bursts.append(b)
        kind = "write" if b.write else "read"
        if burst_type != 1:
            self.violations.append(f"{kind} burst at {addr:#x}: type {burst_type}, not INCR")
        if size > self.bus_bytes:
            self.violations.append(f"{kind} burst at {addr:#x}: {size}-byte beats on a "
                                   f"{self.bus_bytes}-byte bus")
        if addr // 4096 != b.last_byte // 4096:
            self.violations.append(f"{kind} burst [{addr:#x}, {b.last_byte + 1:#x}) crosses "
                                   f"a 4 KiB boundary")

    async def _watch(self) -> None:
        while True:
            await RisingEdge(self.clock)
            for ch in ("ar", "aw"):
                if self._sig(f"{ch}valid").value == 1 and self._sig(f"{ch}ready").value == 1:
                    self._record(ch)

    def check(self) -> None:
        if self.violations:
            raise AssertionError("AXI rule violations:\n" + "\n".join(self.violations[:20]))

    def stop(self) -> None:
        self._task.cancel()
