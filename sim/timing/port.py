"""The DRAM port of the cycle model: the core's AXI4 master (``hw/axi.py``) in front of the
Verilator harness's DRAM model (``sim/native/harness.cpp``).

Read side (computed by :mod:`tessera.sim.timing.engine`): three clients (0 fetch, 1 compute
loader, 2 load loader) hand the master one request at a time. The master holds one request; it
takes a new one when idle or in the cycle it generates the last burst of the current one, picking
the lowest-numbered valid client. It cuts a request into INCR bursts of at most 256 beats that
never cross 4 KiB, one per cycle, each needing a free entry of its 8-entry ``owners`` FIFO (freed
the cycle after the burst's last beat). ``arvalid`` rises the cycle after generation and the
harness takes it at once (it holds 16); the first beat may come ``read_latency`` cycles after
that. Bursts return in order (ID 0): the harness presents the head burst's next beat once the
credit period (:func:`credit_period`) has passed since the previous beat, and the owner takes it.

Write side (:func:`store_engine`): only the store module writes, and every STORE waits for its
last write response before it retires, so each one starts from an idle write channel.
"""

from __future__ import annotations

__all__ = ["credit_period", "split_bursts", "store_engine", "MAX_BURST", "PAGE", "OUTSTANDING",
           "B_OUTSTANDING", "FETCH", "COMPUTE_RD", "LOAD_RD", "NEVER"]

MAX_BURST = 256  # hw/axi.py MAX_BURST: AXI4 INCR burst length limit, in beats
PAGE = 4096  # hw/axi.py PAGE_BYTES: bursts never cross this boundary
OUTSTANDING = 8  # hw/axi.py OUTSTANDING: read bursts in flight; write bursts awaiting data
B_OUTSTANDING = 2 * OUTSTANDING  # hw/axi.py: write responses outstanding (b_out limit)
FETCH, COMPUTE_RD, LOAD_RD = 0, 1, 2  # hw/core.py read clients rd0..rd2, in priority order
NEVER = -(1 << 60)  # the cycle of an event that has not happened


def credit_period(beats_per_cycle: float) -> int:
    """Cycles from one data beat of a channel to the next when the consumer is always ready.

    The harness keeps one token bucket per direction: every cycle ``credit = min(credit + bpc,
    max(1, bpc))``; a beat needs ``credit >= 1`` and takes 1. The credit is exactly 1 when a beat
    goes (the cap is 1), so the next beat waits for as many additions as the double-precision sum
    needs to reach 1 again, computed here exactly as the C++ does.
    """
    if not 0 < beats_per_cycle <= 1:
        raise ValueError(f"beats_per_cycle must be in (0, 1], not {beats_per_cycle!r}")
    credit, cycles, cap = 0.0, 0, max(1.0, beats_per_cycle)
    while credit < 1.0:
        credit = min(credit + beats_per_cycle, cap)
        cycles += 1
    return cycles


def split_bursts(addr: int, beats: int, bus_bytes: int) -> list[tuple[int, int]]:
    """The ``(first beat, beats)`` of each burst a request of ``beats`` beats from bus-aligned
    ``addr`` is cut into (hw/axi.py ``_burst_len``)."""
    out = []
    first = 0
    while first < beats:
        a = addr + first * bus_bytes
        n = min(beats - first, MAX_BURST, (PAGE - (a & (PAGE - 1))) // bus_bytes)
        out.append((first, n))
        first += n
    return out


def store_engine(x: int, addr: int, stride: int, xs: int, ys: int, eb: int, bus: int,
                 period: int, last_w: int) -> tuple[int, int]:
    """Cycles of one STORE's DMA (``hw/dma.py`` RowStorer, the write half of ``hw/axi.py``, the
    harness's write channel), for ``ys >= 1`` rows of ``xs >= 1`` elements of ``eb`` bytes.

    ``x`` is the cycle the storer takes the command; ``addr``/``stride`` are byte addresses;
    ``last_w`` is the cycle of the latest write beat (the write token bucket). Returns
    ``(done, last_w)``: ``done`` is the first cycle the storer is idle again.

    The issuer's first row request is taken at ``x+1`` and bursts are generated one per cycle
    from ``x+2`` (a row's last burst and the next row's request share a cycle), each needing a
    free entry of the 8-entry ``wlens`` FIFO (freed after the burst's last W beat) and fewer than
    16 unacknowledged bursts. The element reader has its first element at ``x+2``. A beat goes
    when its burst was generated (``wlens`` has it the next cycle) and the credit period has
    passed: an element at least as wide as the bus streams one beat per cycle; narrower ones
    are packed one per cycle, and the packed beat is sent in the cycle after its last element,
    which blocks packing for that cycle. A write response comes two cycles after a burst's last
    beat (one per cycle, in order); the storer is idle two cycles after the last one.
    """
    lbb = bus.bit_length() - 1
    narrow = eb < bus
    epb = bus // eb if narrow else 1
    wlast: list[int] = []  # last W beat per burst
    bresp: list[int] = []  # write response per burst
    gen = x + 2
    u = x + 2  # first cycle the packer can take its next element
    w = last_w
    for y in range(ys):
        a = (addr + y * stride) & 0xFFFFFFFF
        end = a + xs * eb
        base = (a >> lbb) << lbb
        beats = ((end + bus - 1) >> lbb) - (a >> lbb)
        for first, n in split_bursts(base, beats, bus):
            b = len(wlast)
            if b >= OUTSTANDING and wlast[b - OUTSTANDING] >= gen:
                gen = wlast[b - OUTSTANDING] + 1
            if b >= B_OUTSTANDING and bresp[b - B_OUTSTANDING] >= gen:
                gen = bresp[b - B_OUTSTANDING] + 1
            avail = gen + 1  # wlens holds the burst the cycle after its generation
            if narrow:
                lo = base + first * bus
                e_first = (min(end, lo + bus) - max(a, lo)) // eb
                w = max(u + e_first, w + period, avail)
                if n > 1:
                    hi = lo + (n - 1) * bus
                    e_last = (min(end, hi + bus) - hi) // eb
                    w += (n - 2) * max(1 + epb, period) + max(1 + e_last, period)
            else:
                w = max(u, w + period, avail) + (n - 1) * period
            u = w + 1
            wlast.append(w)
            bresp.append(max(w + 2, bresp[-1] + 1) if bresp else w + 2)
            gen += 1
    return bresp[-1] + 2, w
