"""The DRAM port of the cycle model: the core's AXI4 master (``hw/axi.py``) in front of the
Verilator harness's DRAM model (``sim/native/harness.cpp``).

Read side. Three clients (0 fetch, 1 compute loader, 2 load loader) hand the master one request
at a time (``{addr, beats}``, one DRAM row or one instruction chunk). The master holds one
request: it takes a new one when idle or in the cycle it generates the last burst of the current
one, picking the lowest-numbered valid client. It cuts a request into INCR bursts of at most 256
beats that never cross 4 KiB, one burst per cycle, each needing a free entry in its 8-deep
``owners`` FIFO (an entry is freed the cycle after the burst's last beat). ``arvalid`` rises the
cycle after a burst is generated and the harness accepts it at once (it takes 16 bursts); the
first beat may come ``read_latency`` cycles after that handshake. Bursts return in order (ID 0):
the harness presents the head burst's next beat once the previous beat is ``period`` cycles old
(its token bucket, see :func:`credit_period`), and the beat's owner takes it. A consumer that
writes ``e`` buffer elements from one beat holds it for ``e`` cycles (``hw/dma.py``: one element
per cycle), so a beat costs ``period + e - 1`` cycles of the shared channel. Padding rows and
columns stall the channel while the writer fills them (it is not ready), which delays every
burst queued behind.

Write side. Only the store module writes; every STORE waits for its last write response before
it retires, so each one starts from an idle write channel and is computed in closed form by
:func:`store_engine`.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["credit_period", "ReadPort", "ReadRequest", "store_engine", "MAX_BURST", "PAGE",
           "OUTSTANDING", "FETCH", "COMPUTE_RD", "LOAD_RD"]

MAX_BURST = 256  # AXI4 INCR burst length limit (hw/axi.py MAX_BURST)
PAGE = 4096  # bursts never cross this boundary (hw/axi.py PAGE_BYTES)
OUTSTANDING = 8  # read bursts in flight; write bursts awaiting data (hw/axi.py OUTSTANDING)
B_OUTSTANDING = 2 * OUTSTANDING  # write responses outstanding (hw/axi.py b_out limit)
FETCH, COMPUTE_RD, LOAD_RD = 0, 1, 2  # read clients, in the master's priority order
NEVER = -(1 << 60)


def credit_period(beats_per_cycle: float) -> int:
    """Cycles from one data beat of a channel to the next when the consumer is always ready.

    The harness keeps one token bucket per direction: each cycle ``credit = min(credit + bpc,
    max(1, bpc))``, a beat needs ``credit >= 1`` and takes 1 from it. The credit is exactly 1
    when a beat goes (it is capped at 1), so the next beat waits for as many additions as the
    double-precision sum needs to reach 1 again, exactly as the C++ computes it.
    """
    if not 0 < beats_per_cycle <= 1:
        raise ValueError(f"beats_per_cycle must be in (0, 1], not {beats_per_cycle!r}")
    credit, cycles, cap = 0.0, 0, max(1.0, beats_per_cycle)
    while credit < 1.0:
        credit = min(credit + beats_per_cycle, cap)
        cycles += 1
    return cycles


def split_bursts(addr: int, beats: int, bus_bytes: int) -> list[tuple[int, int]]:
    """The ``(first beat, beats)`` of each burst the master cuts a request into."""
    out = []
    first = 0
    while first < beats:
        a = addr + first * bus_bytes
        page_beats = (PAGE - (a & (PAGE - 1))) // bus_bytes
        n = min(beats - first, MAX_BURST, page_beats)
        out.append((first, n))
        first += n
    return out


class ReadRequest:
    """One request of a read client: ``beats`` beats from bus-aligned ``addr``.

    ``extra(first, n)`` is the number of cycles the consumer holds the beats ``[first, first+n)``
    beyond one per beat (the ``e - 1`` of each beat); ``ready()`` the first cycle the consumer
    can take the request's first beat; ``done(first, n, h_first, h_last)`` is called for every
    burst with the handshake cycles of its first and last beat.
    """

    __slots__ = ("valid", "addr", "beats", "extra", "ready", "done")

    def __init__(self, valid: int, addr: int, beats: int, extra: Callable[[int, int], int],
                 ready: Callable[[], int], done: Callable[[int, int, int, int], None]):
        self.valid, self.addr, self.beats = valid, addr, beats
        self.extra, self.ready, self.done = extra, ready, done


class ReadPort:
    """The read half of the AXI master plus the harness's read channel, burst by burst.

    Grants are decided in time order by the engine (:meth:`next_grant`, :meth:`grant`); a
    granted request's bursts and their data beats are computed at once, since nothing can come
    between them in the read-address order.
    """

    def __init__(self, bus_bytes: int, latency: int, period: int):
        self.bus = bus_bytes
        self.latency = max(1, latency)
        self.period = period
        self.pending: list[ReadRequest | None] = [None, None, None]
        self.free_from = 0  # first cycle the master can take a new request
        self.last_gen = NEVER  # cycle the latest burst was generated
        self.last_beat = NEVER  # handshake cycle of the latest data beat
        self.owners = [NEVER] * OUTSTANDING  # last-beat cycles of the latest 8 bursts (ring)
        self.nbursts = 0
        self.beats = 0
        self.bursts_log: list[tuple[int, int, int, int]] | None = None

    def request(self, client: int, req: ReadRequest) -> None:
        assert self.pending[client] is None, "a client has one request at a time"
        self.pending[client] = req

    def next_grant(self) -> tuple[int, int] | None:
        """(cycle, client) of the next grant among the pending requests, or None."""
        earliest = None
        for r in self.pending:
            if r is not None and (earliest is None or r.valid < earliest):
                earliest = r.valid
        if earliest is None:
            return None
        t = max(self.free_from, earliest)
        for c, r in enumerate(self.pending):
            if r is not None and r.valid <= t:
                return t, c
        raise AssertionError("unreachable")

    def grant(self, t: int, client: int) -> None:
        """Take ``client``'s request at cycle ``t``; generate its bursts and their data."""
        req = self.pending[client]
        self.pending[client] = None
        bus, period, lat = self.bus, self.period, self.latency
        gen = max(self.last_gen + 1, t + 1)
        cursor = req.ready()
        owners = self.owners
        for first, n in split_bursts(req.addr, req.beats, bus):
            slot = self.nbursts % OUTSTANDING
            gen = max(gen, owners[slot] + 1)  # owners FIFO full until that burst's last beat
            ready = gen + 1 + lat  # arvalid the cycle after generation; accepted at once
            start = max(self.last_beat + period, ready, cursor)
            h_first = start + req.extra(first, 1)
            h_last = start + (n - 1) * period + req.extra(first, n)
            if self.bursts_log is not None:
                self.bursts_log.append((client, gen, start, h_last))
            owners[slot] = h_last
            self.nbursts += 1
            self.beats += n
            self.last_beat = h_last
            cursor = h_last + 1
            req.done(first, n, h_first, h_last)
            self.last_gen = gen
            gen += 1
        self.free_from = self.last_gen


def store_engine(x: int, addr: int, stride: int, xs: int, ys: int, eb: int, bus: int,
                 period: int, last_w: int) -> tuple[int, int, int]:
    """Cycles of one STORE's DMA (``hw/dma.py`` RowStorer + the write half of the master).

    ``x`` is the cycle the storer takes the command, ``addr``/``stride`` byte addresses, ``eb``
    the out element's bytes, ``last_w`` the cycle of the latest write beat (for the harness's
    write token bucket). Returns ``(done, last_w, first_w)``: ``done`` is the first cycle the
    storer is idle again (after the last write response), ``first_w`` the first beat's cycle.
    """
    lbb = bus.bit_length() - 1
    narrow = eb < bus
    epb = bus // eb if narrow else 1
    gens: list[int] = []  # generation cycle per burst
    wlast: list[int] = []  # last W beat per burst
    bresp: list[int] = []  # write response per burst
    gen = x + 2  # request accepted at x+1, first burst generated at x+2
    u = x + 2  # first cycle the packer has an element (read issued at x+1)
    w = last_w
    first_w = None
    for y in range(ys):
        a = (addr + y * stride) & 0xFFFFFFFF
        nbytes = xs * eb
        beats = ((a + nbytes + bus - 1) >> lbb) - (a >> lbb)
        base = (a >> lbb) << lbb
        for first, n in split_bursts(base, beats, bus):
            b = len(gens)
            if b >= OUTSTANDING:
                gen = max(gen, wlast[b - OUTSTANDING] + 1)
            if b >= B_OUTSTANDING:
                gen = max(gen, bresp[b - B_OUTSTANDING] + 1)
            gens.append(gen)
            avail = gen + 1  # wlens has the burst the cycle after generation
            if narrow:
                lo = base + first * bus
                hi = lo + n * bus
                for i in range(n):
                    blo, bhi = lo + i * bus, lo + (i + 1) * bus
                    e = (min(a + nbytes, bhi) - max(a, blo)) // eb
                    w = max(u + e, w + period, avail)
                    if first_w is None:
                        first_w = w
                    u = w + 1
                del hi
            else:
                w = max(u, w + period, avail)
                if first_w is None:
                    first_w = w
                w += (n - 1) * period
                u = w + 1
            wlast.append(w)
            bresp.append(max(w + 2, bresp[-1] + 1) if bresp else w + 2)
            gen += 1
    assert bresp, "store_engine needs at least one row"
    del epb
    return bresp[-1] + 2, w, first_w
