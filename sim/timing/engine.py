"""The cycle model's engine: fetch, decode/dispatch, the three modules, token queues, read port.

Every process computes the cycle of each of its events as the maximum of the cycles of the
events it depends on plus the RTL's fixed delays (dataflow), and blocks while one of them is not
known yet. The one decision that needs global time order is the read master's arbitration among
its clients; the engine takes it when every process is blocked. That is safe: an event not
known at that point depends on a later grant, so it lies after the grant being decided, and no
request it leads to could have competed for it.

Cycle 0 is the start pulse (the modules are held in reset); the result is the first cycle the
core's ``finished`` is high, which is what the CYCLES register counts (``hw/regfile.py``).
The RTL facts each step relies on are named where they are used; docs/cycle-model.md lists them.
"""

from __future__ import annotations

from bisect import bisect_right

from tessera.sim.timing.port import (
    COMPUTE_RD,
    FETCH,
    LOAD_RD,
    MAX_BURST,
    NEVER,
    OUTSTANDING,
    PAGE,
    split_bursts,
    store_engine,
)
from tessera.sim.timing.program import (
    COMPUTE,
    K_ALU,
    K_LOAD,
    K_NONE,
    K_RUN,
    K_STORE,
    K_SYNC,
    LOAD,
    STORE,
    TOKEN_QUEUES,
    StaticProgram,
)

__all__ = ["Engine", "Blocked", "IQ_DEPTH", "CMDQ_DEPTH", "ALU_QUEUE_DEPTH", "INSN_BYTES",
           "RUN_FILL"]

IQ_DEPTH = 16  # hw/fetch.py IQ_DEPTH: fetched, not yet decoded instructions
CMDQ_DEPTH = 8  # hw/fetch.py CMDQ_DEPTH: per-module command queue
ALU_QUEUE_DEPTH = 16  # hw/compute.py ALU_QUEUE_DEPTH: the ALU engine's instruction queue
INSN_BYTES = 16
RUN_FILL = 4  # hw/compute.py: RUN lasts steps + 4 cycles (S0..S3 fill and drain, then drained)

# process ids
_DECODER, _FETCH = 3, 4
_CONSUMER = (COMPUTE, LOAD, STORE, COMPUTE)  # of L2C, C2L, C2S, S2C
_PRODUCER = (LOAD, COMPUTE, COMPUTE, STORE)


class Blocked(Exception):
    """The model ran out of events before every instruction retired (a token deadlock, or a
    command-queue deadlock that only the RTL's finite queues have). ``cycle``: from when on
    nothing moves; ``pc``: the lowest pc among the blocked modules' current instructions."""

    def __init__(self, message: str, cycle: int, pc: int | None):
        super().__init__(message)
        self.cycle, self.pc = cycle, pc


class _Loader:
    """State of a RowLoader (``hw/dma.py``): the current instruction, row and writer cursor."""

    __slots__ = ("ins", "row", "cursor", "done_at", "first_beat", "valid")

    def __init__(self) -> None:
        self.ins: tuple | None = None
        self.row = 0
        self.cursor = 0
        self.done_at: int | None = None
        self.first_beat: int | None = None
        self.valid: int | None = None  # cycle the issuer's pending request is valid from


class Engine:
    """One run of a prepared program. ``run()`` returns the predicted CYCLES."""

    def __init__(self, sp: StaticProgram, bus_bytes: int, dep_queue_depth: int,
                 insn_addr: int, insn_count: int, read_latency: int, period: int,
                 trace: bool = False):
        self.sp = sp
        self.bus, self.lbb = bus_bytes, bus_bytes.bit_length() - 1
        self.depth = dep_queue_depth
        self.insn_addr, self.insn_count = insn_addr, insn_count
        self.latency, self.period = max(1, read_latency), period
        # read port (hw/axi.py AxiMaster + harness read channel)
        self.free_from = 0
        self.last_gen = NEVER
        self.last_beat = NEVER
        self.owners = [NEVER] * OUTSTANDING
        self.nbursts = 0
        self.loaders = {COMPUTE_RD: _Loader(), LOAD_RD: _Loader()}
        self.last_w = NEVER
        # facts
        self.iq_push: list[int] = []
        self.iq_read: list[int] = []
        self.disp: list[int] = []
        self.mdisp: tuple[list[int], ...] = ([], [], [])
        self.take: tuple[list[int], ...] = ([], [], [])
        self.retired: list[int] = [0, 0, 0]  # cycle of each module's latest retire
        self.tpush: tuple[list[int], ...] = ([], [], [], [])
        self.tpop: tuple[list[int], ...] = ([], [], [], [])
        self.d_fin: int | None = None
        self.fin_pc = sp.finish_pc
        # module state
        self.q = [0, 0, 0]
        self.phase = [0, 0, 0]
        self.t = [0, 0, 0]  # cycle the current phase can start
        self.t_pop = [0, 0, 0]
        self.x = [0, 0, 0]
        self.idle_from = [1, 1, 1]
        self.busy = [0, 0, 0]
        self.wait = [0, 0, 0]
        # the compute module's ALU engine (hw/compute.py): per ALU instruction the cycle it was
        # written to the engine's queue and the cycle the engine took it; when the engine may
        # take the next one (the last one has drained); from when it is idle (quiet)
        self.alu_enq: list[int] = []
        self.alu_take: list[int] = []
        self.alu_next = 0
        self.engine_idle = 0
        # fetch state
        self.requested = 0
        self.f_last_push = 0
        self.f_valid: int | None = None
        self.f_need: int | None = None  # reads the fetch waits for
        self.f_stopped = False
        self.dec_wait: int | None = None  # what the decoder waits for: _FETCH or a module
        self.dec_wait_j = 0
        self.work: list[int] = []
        self.dirty = [False] * 5
        self.trace: list[tuple] | None = [] if trace else None

    # -- scheduling -----------------------------------------------------------------------------

    def _wake(self, p: int) -> None:
        if not self.dirty[p]:
            self.dirty[p] = True
            self.work.append(p)

    def run(self) -> int:
        for p in range(5):
            self._wake(p)
        work, dirty = self.work, self.dirty
        while True:
            while work:
                p = work.pop()
                dirty[p] = False
                if p < 3:
                    self._module(p)
                elif p == _DECODER:
                    self._decoder()
                else:
                    self._fetch()
            nxt = self._next_grant()
            if nxt is None:
                break
            t, client = nxt
            if client == FETCH:
                self._fetch_grant(t)
            else:
                self._loader_grant(client, t)
        return self._finish()

    def _next_grant(self) -> tuple[int, int] | None:
        """(cycle, client) of the master's next grant: the lowest-numbered client valid in the
        first cycle the master is free and some client is valid (hw/axi.py)."""
        valid = (self.f_valid, self.loaders[COMPUTE_RD].valid, self.loaders[LOAD_RD].valid)
        earliest = min((v for v in valid if v is not None), default=None)
        if earliest is None:
            return None
        t = max(self.free_from, earliest)
        for c in (FETCH, COMPUTE_RD, LOAD_RD):
            if valid[c] is not None and valid[c] <= t:
                return t, c
        raise AssertionError("unreachable")

    def _finish(self) -> int:
        sp = self.sp
        left = [m for m in range(3) if self.q[m] < len(sp.insns[m])]
        if left or len(self.disp) < sp.n:
            pcs = [sp.insns[m][self.q[m]][0] for m in left
                   if self.q[m] < len(self.mdisp[m])]  # instructions a module holds
            raise Blocked(self._describe_block(left), self._last_event(),
                          min(pcs) if pcs else None)
        ends = [1, self.last_beat + 1]  # the read channel is idle (owners FIFO empty)
        ends.append(self.engine_idle)  # the ALU engine is quiet
        ends += [r + 1 for m, r in enumerate(self.retired) if sp.insns[m]]
        if self.disp:
            ends.append(self.disp[-1] + 1)  # fetch done: FINISH seen, or all dispatched
        return max(ends)

    def _last_event(self) -> int:
        times = [self.last_beat, *self.retired, *(self.disp[-1:])]
        times += [self.t[m] for m in range(3) if self.q[m] < len(self.sp.insns[m])]
        return max(1, *times)

    def _describe_block(self, left: list[int]) -> str:
        names = ("load", "compute", "store")
        phases = ("waiting for its command", "waiting to pop a token", "in DMA",
                  "waiting to push a token")
        parts = [f"{names[m]} instruction {self.sp.insns[m][self.q[m]][0]} "
                 f"{phases[self.phase[m]]}" for m in left]
        if len(self.disp) < self.sp.n:
            k = len(self.disp)
            parts.append(f"dispatch of instruction {k} waiting for room in the "
                         f"{names[self.sp.module[k]]} command queue")
        return "; ".join(parts)

    # -- fetch (hw/fetch.py) ----------------------------------------------------------------

    def _fetch(self) -> None:
        if self.f_valid is not None or self.f_stopped:
            return
        remaining = self.insn_count - self.requested
        if remaining == 0:
            return
        # a request needs n_left == 0 (the cycle after the chunk's last push) and room for
        # min(8, remaining) instructions in the instruction queue
        valid = max(1, self.f_last_push + 1)
        need = self.requested - IQ_DEPTH + min(IQ_DEPTH // 2, remaining)
        if need > 0:
            if len(self.iq_read) < need:
                self.f_need = need  # the decoder wakes us when it has read that many
                return
            valid = max(valid, self.iq_read[need - 1] + 1)
        self.f_need = None
        if self.d_fin is not None and valid > self.d_fin:
            self.f_stopped = True  # FINISH is decoded first: no request (stop is registered)
            return
        self.f_valid = valid

    def _fetch_grant(self, t: int) -> None:
        self.f_valid = None
        if self.d_fin is not None and self.d_fin <= t - 1:
            self.f_stopped = True  # FINISH was dispatched while the request waited
            return
        reads = bisect_right(self.iq_read, t - 1)
        nins = min(self.insn_count - self.requested, IQ_DEPTH - (self.requested - reads))
        start = self.insn_addr + self.requested * INSN_BYTES
        self.requested += nins
        bus, lbb, period = self.bus, self.lbb, self.period
        base = (start >> lbb) << lbb
        beats = ((start + nins * INSN_BYTES + bus - 1) >> lbb) - (start >> lbb)
        # instructions per beat: a narrow bus takes beats_per_insn beats per instruction, a
        # wide one hands one instruction per cycle to the queue, holding the beat meanwhile
        if bus >= INSN_BYTES:
            k0 = (start - base) // INSN_BYTES
            per_beat = []
            left, k = nins, k0
            while left:
                e = min(bus // INSN_BYTES - k, left)
                per_beat.append(e)
                left -= e
                k = 0
        else:
            per_beat = [1] * beats
        bpi = max(1, INSN_BYTES // bus)
        push = self.iq_push
        gen = self.last_gen + 1 if self.last_gen + 1 > t + 1 else t + 1
        for first, n in split_bursts(base, beats, bus):
            gen, st, _ = self._burst(gen, n, sum(per_beat[first:first + n]) - n, 0)
            for i in range(first, first + n):
                e = per_beat[i]
                if bus >= INSN_BYTES:
                    push.extend(range(st, st + e))
                elif (i + 1) % bpi == 0:
                    push.append(st)
                st += e - 1 + period
            gen += 1
        self.free_from = self.last_gen
        self.f_last_push = push[-1]
        if self.dec_wait == _FETCH:
            self._wake(_DECODER)
        self._wake(_FETCH)

    def _burst(self, gen: int, n: int, extra: int, cursor: int) -> tuple[int, int, int]:
        """Generate one read burst of ``n`` beats no earlier than ``gen`` and return its
        (generation, first beat, last beat) cycles; ``extra``: consumer cycles beyond one per
        beat, ``cursor``: first cycle the consumer can take the first beat."""
        slot = self.nbursts % OUTSTANDING
        owners = self.owners
        if owners[slot] + 1 > gen:
            gen = owners[slot] + 1  # owners FIFO full until that burst's last beat
        # arvalid the cycle after generation, accepted at once; data read_latency later,
        # behind the previous beat by the credit period, when the consumer is ready
        start = max(self.last_beat + self.period, gen + 1 + self.latency, cursor)
        h_last = start + (n - 1) * self.period + extra
        owners[slot] = h_last
        self.nbursts += 1
        self.last_beat = h_last
        self.last_gen = gen
        return gen, start, h_last

    # -- the loaders (hw/dma.py RowLoader) ------------------------------------------------------

    def _loader_start(self, client: int, ins: tuple, x: int) -> None:
        """The loader of ``client`` takes ``ins`` at cycle ``x`` (its ``cmd`` handshake)."""
        ld = self.loaders[client]
        xs, ys, yp0, yp1, xp0, xp1 = ins[9], ins[10], ins[12], ins[13], ins[14], ins[15]
        n_cols = xp0 + xs + xp1
        rows = yp0 + ys + yp1
        ld.ins, ld.row, ld.first_beat = ins, 0, None
        if ys == 0:  # only padding rows (or nothing), one cycle per element
            ld.done_at = x + 1 + rows * n_cols
            return
        ld.done_at = None
        ld.cursor = x + 1 + yp0 * n_cols + xp0  # the writer reaches the first data element
        ld.valid = x + 1  # i_active the cycle after the command

    def _loader_grant(self, client: int, t: int) -> None:
        """Grant the loader's row requests from cycle ``t`` on, as long as it keeps winning.

        A row is one request; the master cuts it into bursts of at most 256 beats that never
        cross 4 KiB, one per cycle, each waiting for a free ``owners`` entry. Each burst's data
        starts when the harness has it (``read_latency`` after the address handshake, which is
        the cycle after generation), the previous beat is a credit period old and the writer is
        ready; its consumer holds each beat one cycle per element it carries.
        """
        ld = self.loaders[client]
        ins = ld.ins
        sp = self.sp
        row_addr, row_base, row_beats, row_extra, row_single = (
            sp.row_addr, sp.row_base, sp.row_beats, sp.row_extra, sp.row_single)
        xs, ys, eb, xp0, xp1, row0 = ins[9], ins[10], ins[11], ins[14], ins[15], ins[16]
        bus, lbb = self.bus, self.lbb
        narrow = eb < bus
        gap = xp1 + xp0
        others = [(c, v) for c, v in ((FETCH, self.f_valid),
                                      (COMPUTE_RD, self.loaders[COMPUTE_RD].valid),
                                      (LOAD_RD, self.loaders[LOAD_RD].valid))
                  if c != client and v is not None]
        period, lat, owners = self.period, self.latency, self.owners
        last_gen, last_beat, nb = self.last_gen, self.last_beat, self.nbursts
        row, cursor = ld.row, ld.cursor
        while True:
            r = row0 + row
            gen = last_gen + 1 if last_gen >= t else t + 1
            if row_single[r]:
                slot = nb % OUTSTANDING
                if owners[slot] >= gen:
                    gen = owners[slot] + 1  # owners FIFO full until that burst's last beat
                start = last_beat + period
                if start < gen + 1 + lat:
                    start = gen + 1 + lat
                if start < cursor:
                    start = cursor
                h = start + (row_beats[r] - 1) * period + row_extra[r]
                owners[slot] = h
                nb += 1
                last_beat, last_gen = h, gen
                first = start
            else:
                a, left = row_base[r], row_beats[r]
                lo_elem = row_addr[r]
                hi_elem = lo_elem + xs * eb
                first = None
                while left:
                    n = (PAGE - (a & (PAGE - 1))) >> lbb
                    if n > MAX_BURST:
                        n = MAX_BURST
                    if n > left:
                        n = left
                    slot = nb % OUTSTANDING
                    if owners[slot] >= gen:
                        gen = owners[slot] + 1
                    start = last_beat + period
                    if start < gen + 1 + lat:
                        start = gen + 1 + lat
                    if start < cursor:
                        start = cursor
                    extra = 0
                    if narrow:
                        hi = a + n * bus
                        extra = ((hi if hi < hi_elem else hi_elem)
                                 - (a if a > lo_elem else lo_elem)) // eb - n
                    h = start + (n - 1) * period + extra
                    owners[slot] = h
                    nb += 1
                    last_beat, last_gen = h, gen
                    if first is None:
                        first = start
                    cursor = h + 1
                    a += n * bus
                    left -= n
                    gen += 1
            if ld.first_beat is None:
                ld.first_beat = first
            row += 1
            if row == ys:
                self.last_gen, self.last_beat, self.nbursts = last_gen, last_beat, nb
                self.free_from = last_gen
                ld.done_at = h + 1 + xp1 + ins[13] * (xp0 + xs + xp1)
                ld.valid = None
                self._wake(LOAD if client == LOAD_RD else COMPUTE)
                return
            cursor = h + 1 + gap
            # the issuer's next request is valid the cycle after this grant; it wins the
            # next grant unless another client is valid earlier, or as early with priority
            v = t + 1
            nt = last_gen if last_gen > v else v
            for c, ov in others:
                ot = last_gen if last_gen > ov else ov
                if ot < nt or (ot == nt and c < client):
                    self.last_gen, self.last_beat, self.nbursts = last_gen, last_beat, nb
                    self.free_from = last_gen
                    ld.row, ld.cursor, ld.valid = row, cursor, v
                    return
            t = nt

    # -- decode and dispatch (hw/fetch.py) ----------------------------------------------------

    def _decoder(self) -> None:
        n = self.sp.n
        module = self.sp.module
        push, read, disp = self.iq_push, self.iq_read, self.disp
        k = len(disp)
        phase, q = self.phase, self.q
        woken = [False, False, False]
        self.dec_wait = None
        while k < n:
            if len(read) == k:  # load instruction k into the decode register
                if len(push) <= k:
                    self.dec_wait = _FETCH
                    break
                # SyncFIFOBuffered: readable 2 cycles after the write, 1 after the previous read;
                # the decode register takes it when empty or in the cycle it dispatches
                a = push[k] + 2
                if k and read[k - 1] + 1 > a:
                    a = read[k - 1] + 1
                if k and disp[k - 1] > a:
                    a = disp[k - 1]
                read.append(a)
                if self.f_need is not None and len(read) >= self.f_need:
                    self._wake(_FETCH)
            m = module[k]
            qd = self.mdisp[m]
            d = read[k] + 1
            j = len(qd) - (CMDQ_DEPTH - 1)
            if j >= 0:  # the queue's inner FIFO has room once entry j reached its output
                if j == 0:
                    c = qd[0] + 2
                else:
                    if len(self.take[m]) < j:
                        self.dec_wait, self.dec_wait_j = m, j
                        break
                    c = max(qd[j] + 2, self.take[m][j - 1] + 1)
                if c > d:
                    d = c
            disp.append(d)
            qd.append(d)
            if k == self.fin_pc:
                self.d_fin = d
            if not woken[m] and phase[m] == 0 and q[m] == len(qd) - 1:
                woken[m] = True
                self._wake(m)
            k += 1

    # -- the modules (hw/dma.py sequence_dma_insns, hw/compute.py) ---------------------------

    def _module(self, m: int) -> None:
        insns = self.sp.insns[m]
        nq = len(insns)
        qa, qb, pa, pb = TOKEN_QUEUES[m]
        depth = self.depth
        tpush, tpop = self.tpush, self.tpop
        qd, takes = self.mdisp[m], self.take[m]
        trace = self.trace
        wake = self._wake
        q, ph, t = self.q[m], self.phase[m], self.t[m]
        idle_from, busy, wait = self.idle_from[m], self.busy[m], self.wait[m]
        phase = self.phase
        prod_a = _PRODUCER[qa] if qa is not None else -1
        prod_b = _PRODUCER[qb] if qb is not None else -1
        cons_a = _CONSUMER[pa] if pa is not None else -1
        cons_b = _CONSUMER[pb] if pb is not None else -1
        dec_wait = self.dec_wait == m
        client = LOAD_RD if m == LOAD else COMPUTE_RD
        while q < nq:
            ins = insns[q]
            if ph == 0:  # IDLE: take the command from the queue's output register
                if len(qd) <= q:
                    break
                c = qd[q] + 2
                if q and takes[q - 1] + 1 > c:
                    c = takes[q - 1] + 1
                take = c if c > idle_from else idle_from
                takes.append(take)
                if dec_wait and len(takes) >= self.dec_wait_j:
                    wake(_DECODER)
                    dec_wait = False
                t = take + 1
                ph = 1
            if ph == 1:  # POP: every flagged queue non-empty in the same cycle
                t0 = t
                ka, kb = ins[1], ins[2]
                if ka >= 0:
                    if len(tpush[qa]) <= ka:
                        break
                    if tpush[qa][ka] >= t:
                        t = tpush[qa][ka] + 1
                if kb >= 0:
                    if len(tpush[qb]) <= kb:
                        break
                    if tpush[qb][kb] >= t:
                        t = tpush[qb][kb] + 1
                if ka >= 0:
                    tpop[qa].append(t)
                    if phase[prod_a] == 3:
                        wake(prod_a)
                if kb >= 0:
                    tpop[qb].append(t)
                    if phase[prod_b] == 3:
                        wake(prod_b)
                wait += t - t0
                self.t_pop[m] = t
                kind = ins[5]
                if m == COMPUTE and kind in (K_LOAD, K_SYNC):
                    # DRAIN from t+1 until the ALU engine is idle, then the LOAD state
                    x = self.x[m] = max(t + 1, self.engine_idle) + 1
                else:
                    x = self.x[m] = t + 1  # EXEC (load/store) or LOAD (compute) state
                if kind == K_RUN:  # start_run in POP, RUN from t+1, PUSH when drained
                    t = t + ins[6] + RUN_FILL + 1 if ins[6] else t + 2
                    ph = 3
                elif kind == K_ALU:  # ENQ from t+1 (queue room), PUSH the cycle after
                    t = self._alu_enqueue(x, ins[6]) + 1
                    ph = 3
                elif kind == K_NONE:  # FINISH
                    t += 1
                    ph = 3
                elif kind == K_LOAD:
                    self._loader_start(client, ins, x)
                    ph = 2
                elif kind == K_STORE:
                    if ins[10]:
                        done, self.last_w = store_engine(
                            x, ins[7], ins[8], ins[9], ins[10], ins[11], self.bus, self.period,
                            self.last_w)
                    else:
                        done = x + 2  # no rows: the storer idles again at once
                    busy += done - x + 1
                    t = done + 1
                    ph = 3
                else:  # x_size == 0: synchronisation only
                    if m != COMPUTE:
                        busy += 1
                    t = x + 1
                    ph = 3
            if ph == 2:  # WAIT for the loader to go idle
                done = self.loaders[client].done_at
                if done is None:
                    break
                if m == LOAD:
                    busy += done - self.x[m] + 1
                t = done + 1
                ph = 3
            if ph == 3:  # PUSH: every flagged queue has room in the same cycle
                if m == COMPUTE and (ins[4] >= 0 or ins[5] == K_NONE or (
                        ins[5] == K_ALU and (not ins[17] or ins[3] >= 0))):
                    t = max(t, self.engine_idle)  # waits for the ALU engine to drain first
                y = t
                ka, kb = ins[3], ins[4]
                if ka >= depth:
                    if len(tpop[pa]) <= ka - depth:
                        break
                    if tpop[pa][ka - depth] >= t:
                        t = tpop[pa][ka - depth] + 1
                if kb >= depth:
                    if len(tpop[pb]) <= kb - depth:
                        break
                    if tpop[pb][kb - depth] >= t:
                        t = tpop[pb][kb - depth] + 1
                if ka >= 0:
                    tpush[pa].append(t)
                    if phase[cons_a] == 1:
                        wake(cons_a)
                if kb >= 0:
                    tpush[pb].append(t)
                    if phase[cons_b] == 1:
                        wake(cons_b)
                if trace is not None:
                    self._record(m, ins, y, t)
                idle_from = t + 1
                ph = 0
                q += 1
        self.q[m], self.phase[m], self.t[m] = q, ph, t
        self.idle_from[m], self.busy[m], self.wait[m] = idle_from, busy, wait
        self.retired[m] = idle_from - 1

    def _alu_enqueue(self, c: int, steps: int) -> int:
        """An ALU instruction of ``steps`` steps reaches the ENQ state at cycle ``c``: the cycle
        it is written to the engine's queue (``SyncFIFOBuffered``: room once the entry depth-1
        places ahead has reached the output register; readable 2 cycles after its write, 1
        after the previous read). The engine takes it when it is readable and the previous one
        has drained (``steps + 4`` cycles after its take, 1 for an empty loop)."""
        enq, take = self.alu_enq, self.alu_take
        k = len(enq)
        j = k - (ALU_QUEUE_DEPTH - 1)
        if j >= 0:
            room = enq[0] + 2 if j == 0 else max(enq[j] + 2, take[j - 1] + 1)
            c = max(c, room)
        enq.append(c)
        ready = max(c + 2, take[-1] + 1) if take else c + 2
        t = max(ready, self.alu_next)
        take.append(t)
        self.alu_next = t + steps + RUN_FILL if steps else t + 1
        self.engine_idle = self.alu_next + 1
        return c

    def _record(self, m: int, ins: tuple, y: int, retire: int) -> None:
        """Trace record of one retired instruction (see :mod:`tessera.sim.timing`), with the
        token queue that kept it waiting to pop and to push, if one did."""
        first = None
        if ins[5] == K_LOAD:
            first = self.loaders[LOAD_RD if m == LOAD else COMPUTE_RD].first_beat
        take, popped = self.take[m][-1], self.t_pop[m]
        qa, qb, pa, pb = TOKEN_QUEUES[m]
        pop_q = push_q = None
        if popped > take + 1:
            for qid, k in ((qa, ins[1]), (qb, ins[2])):
                if k >= 0 and self.tpush[qid][k] + 1 == popped:
                    pop_q = qid
        if retire > y:
            for qid, k in ((pa, ins[3]), (pb, ins[4])):
                if k >= self.depth and self.tpop[qid][k - self.depth] + 1 == retire:
                    push_q = qid
        self.trace.append((m, ins[0], take, popped, self.x[m], first, y, retire, pop_q, push_q))
