"""The cycle model's engine: fetch, decode/dispatch, the three modules and their token queues.

Every process computes the cycles of its own events as the maximum of the cycles of the events
it depends on (dataflow), and blocks when one of them is not known yet. The only decision that
needs global time order is the read master's arbitration; the engine takes it when every process
is blocked, since every event not yet known then depends on a later grant (see ``run``).

Cycle 0 is the start pulse (the modules are in reset); CYCLES is the first cycle ``finished``
is high (``hw/regfile.py`` counts the busy cycles 1..F).
"""

from __future__ import annotations

from bisect import bisect_right

from tessera.config import Config
from tessera.isa import INSN_BYTES, MemType, Opcode
from tessera.sim.timing.port import (
    COMPUTE_RD,
    FETCH,
    LOAD_RD,
    NEVER,
    ReadPort,
    ReadRequest,
    credit_period,
    store_engine,
)

__all__ = ["Engine", "LOAD", "COMPUTE", "STORE"]

LOAD, COMPUTE, STORE = 0, 1, 2
L2C, C2L, C2S, S2C = 0, 1, 2, 3
QUEUE_NAMES = ("L2C", "C2L", "C2S", "S2C")
IQ_DEPTH = 16  # hw/fetch.py
CMDQ_INNER = 8 - 1  # hw/fetch.py CMDQ_DEPTH, SyncFIFOBuffered: inner FIFO of depth-1 entries
INSN_BITS = 128

# (module, flag) -> token queue, SPEC §5
_POPS = {LOAD: (("pop_next", C2L),), COMPUTE: (("pop_prev", L2C), ("pop_next", S2C)),
         STORE: (("pop_prev", C2S),)}
_PUSHES = {LOAD: (("push_next", L2C),), COMPUTE: (("push_prev", C2L), ("push_next", C2S)),
           STORE: (("push_prev", S2C),)}
_PRODUCER = {L2C: LOAD, C2L: COMPUTE, C2S: COMPUTE, S2C: STORE}
_CONSUMER = {L2C: COMPUTE, C2L: LOAD, C2S: STORE, S2C: COMPUTE}

# instruction kinds
K_DMA, K_RUN, K_NONE = 0, 1, 2


class _Insn:
    """What the model needs of one dispatched instruction."""

    __slots__ = ("pc", "module", "kind", "pops", "pushes", "steps", "addr", "stride", "xs", "ys",
                 "eb", "yp0", "yp1", "xp0", "xp1", "mtype", "opcode")


class _Loader:
    """A RowLoader (``hw/dma.py``) as a read client: the request issuer and the element writer."""

    def __init__(self, eng: Engine, client: int, module: int):
        self.eng, self.client, self.module = eng, client, module
        self.done_at: int | None = None

    def start(self, ins: _Insn, x: int) -> None:
        """The engine takes ``ins`` at cycle ``x`` (its ``cmd`` handshake)."""
        eng = self.eng
        bus = eng.bus
        n_cols = ins.xp0 + ins.xs + ins.xp1
        rows = ins.yp0 + ins.ys + ins.yp1
        self.done_at = None
        if rows == 0:
            self.done_at = x + 1
            return
        if ins.ys == 0:  # only padding rows: one cycle per element
            self.done_at = x + 1 + rows * n_cols
            return
        self.ins = ins
        self.row = 0
        self.cursor = x + 1 + ins.yp0 * n_cols + ins.xp0
        self.narrow = ins.eb < bus
        self._request(x + 1)

    def _request(self, valid: int) -> None:
        ins, eng = self.ins, self.eng
        bus = eng.bus
        a = (ins.addr + self.row * ins.stride) & 0xFFFFFFFF
        nbytes = ins.xs * ins.eb
        lbb = eng.lbb
        beats = ((a + nbytes + bus - 1) >> lbb) - (a >> lbb)
        self.row_addr, self.row_end = a, a + nbytes
        self.row_base = (a >> lbb) << lbb
        self.row_beats = beats
        eng.port.request(self.client, ReadRequest(valid, self.row_base, beats, self._extra,
                                                  self._ready, self._done))

    def _extra(self, first: int, n: int) -> int:
        if not self.narrow:
            return 0
        bus = self.eng.bus
        lo = self.row_base + first * bus
        hi = lo + n * bus
        elems = (min(self.row_end, hi) - max(self.row_addr, lo)) // self.ins.eb
        return elems - n

    def _ready(self) -> int:
        return self.cursor

    def _done(self, first: int, n: int, h_first: int, h_last: int) -> None:
        ins = self.ins
        self.cursor = h_last + 1
        if first + n < self.row_beats:
            return
        # the row's last beat: padding, then the next row (its request is issued at once) or end
        self.row += 1
        if self.row < ins.ys:
            self.cursor = h_last + 1 + ins.xp1 + ins.xp0
            self._request(self.eng.grant_cycle + 1)
        else:
            n_cols = ins.xp0 + ins.xs + ins.xp1
            self.done_at = h_last + 1 + ins.xp1 + ins.yp1 * n_cols
            self.eng.wake(self.module)


class Engine:
    """One run of a decoded program on the model."""

    def __init__(self, cfg: Config, fields: dict, n: int, insn_addr: int, insn_count: int,
                 read_latency: int, beats_per_cycle: float):
        self.cfg = cfg
        self.bus = cfg.mem_bus_bytes
        self.lbb = self.bus.bit_length() - 1
        self.period = credit_period(beats_per_cycle)
        self.port = ReadPort(self.bus, read_latency, self.period)
        self.insn_addr, self.insn_count, self.n = insn_addr, insn_count, n
        self.depth = cfg.dep_queue_depth
        self.insns = self._prepare(fields, n)
        self.queues = [[i for i in self.insns if i.module == m] for m in range(3)]
        # facts
        self.iq_push: list[int] = []  # per fetched instruction
        self.iq_read: list[int] = []  # per dispatched instruction
        self.disp: list[int] = []
        self.mdisp: list[list[int]] = [[], [], []]
        self.take: list[list[int]] = [[], [], []]
        self.retire: list[list[int]] = [[], [], []]
        self.tpush: list[list[int]] = [[], [], [], []]
        self.tpop: list[list[int]] = [[], [], [], []]
        self.d_fin: int | None = None
        # per-module state
        self.q = [0, 0, 0]
        self.phase = [0, 0, 0]
        self.t = [0, 0, 0]  # cycle the current phase can start
        self.idle_from = [1, 1, 1]
        self.busy = [0, 0, 0]
        self.wait_cycles = [0, 0, 0]
        self.x_exec = [0, 0, 0]
        self.t_pop = [0, 0, 0]
        self.t_push = [0, 0, 0]
        self.loaders = {LOAD: _Loader(self, LOAD_RD, LOAD),
                        COMPUTE: _Loader(self, COMPUTE_RD, COMPUTE)}
        self.last_w = NEVER
        # fetch state
        self.requested = 0
        self.f_last_push = 0  # last push of the latest chunk
        self.f_pending = False
        self.f_stopped = False
        self.grant_cycle = 0
        self.work: list[int] = []
        self.dirty = [False] * 5
        self.log: list[tuple] | None = None

    # -- static preparation -------------------------------------------------------------------

    def _prepare(self, f: dict, n: int) -> list[_Insn]:
        cfg = self.cfg
        eb = {MemType.UOP: cfg.uop_elem_bytes, MemType.WGT: cfg.wgt_elem_bytes,
              MemType.INP: cfg.inp_elem_bytes, MemType.ACC: cfg.acc_elem_bytes,
              MemType.OUT: cfg.out_elem_bytes, MemType.ACC_8BIT: cfg.acc8_elem_bytes}
        counts = {"pop": [0, 0, 0, 0], "push": [0, 0, 0, 0]}
        out = []
        for pc in range(n):
            ins = _Insn()
            ins.pc = pc
            op = int(f["opcode"][pc])
            ins.opcode = op
            mt = int(f["memory_type"][pc])
            ins.mtype = mt
            if op == Opcode.STORE:
                m = STORE
            elif op == Opcode.LOAD and mt in (MemType.INP, MemType.WGT):
                m = LOAD
            else:
                m = COMPUTE
            ins.module = m
            pops = []
            for flag, qid in _POPS[m]:
                if f[flag][pc]:
                    pops.append((qid, counts["pop"][qid]))
                    counts["pop"][qid] += 1
            pushes = []
            for flag, qid in _PUSHES[m]:
                if f[flag][pc]:
                    pushes.append((qid, counts["push"][qid]))
                    counts["push"][qid] += 1
            ins.pops, ins.pushes = tuple(pops), tuple(pushes)
            ins.steps = 0
            if op in (Opcode.LOAD, Opcode.STORE):
                ins.kind = K_DMA
                e = eb[MemType(mt)]
                ins.eb = e
                ins.addr = int(f["dram_base"][pc]) * e
                ins.stride = int(f["x_stride"][pc]) * e
                ins.xs, ins.ys = int(f["x_size"][pc]), int(f["y_size"][pc])
                ins.yp0, ins.yp1 = int(f["y_pad_0"][pc]), int(f["y_pad_1"][pc])
                ins.xp0, ins.xp1 = int(f["x_pad_0"][pc]), int(f["x_pad_1"][pc])
            elif op in (Opcode.GEMM, Opcode.ALU):
                ins.kind = K_RUN
                bgn, end = int(f["uop_bgn"][pc]), int(f["uop_end"][pc])
                io, ii = int(f["iter_out"][pc]), int(f["iter_in"][pc])
                ins.steps = (end - bgn) * io * ii if end > bgn and io and ii else 0
            else:
                ins.kind = K_NONE
            out.append(ins)
        return out

    # -- scheduling ---------------------------------------------------------------------------

    def wake(self, p: int) -> None:
        """Mark process ``p`` (0-2 modules, 3 decoder, 4 fetch) to be run again."""
        if not self.dirty[p]:
            self.dirty[p] = True
            self.work.append(p)

    def run(self) -> int:
        procs = (self._module, self._module, self._module, self._decoder, self._fetch)
        for p in range(5):
            self.wake(p)
        port = self.port
        while True:
            while self.work:
                p = self.work.pop()
                self.dirty[p] = False
                if p < 3:
                    self._module(p)
                else:
                    procs[p]()
            nxt = port.next_grant()
            if nxt is None:
                break
            t, client = nxt
            if client == FETCH and not self._fetch_grant(t):
                continue
            self.grant_cycle = t
            port.grant(t, client)
            if client == FETCH:
                self.f_last_push = self.iq_push[-1]
                self.wake(3)
                self.wake(4)
        return self._finish()

    def _finish(self) -> int:
        for m in range(3):
            if self.q[m] < len(self.queues[m]):
                raise _Deadlock(self._describe_block())
        if self.n and len(self.disp) < self.n:
            raise _Deadlock(self._describe_block())
        ends = [1]
        for m in range(3):
            if self.retire[m]:
                ends.append(self.retire[m][-1] + 1)
        if self.disp:
            ends.append(self.disp[-1] + 1)
        if self.port.last_beat > 0:
            ends.append(self.port.last_beat + 1)
        return max(ends)

    def _describe_block(self) -> str:
        parts = []
        for m in range(3):
            if self.q[m] < len(self.queues[m]):
                ins = self.queues[m][self.q[m]]
                parts.append(f"{('load', 'compute', 'store')[m]} at instruction {ins.pc} "
                             f"(phase {self.phase[m]})")
        if len(self.disp) < self.n:
            parts.append(f"dispatch at instruction {len(self.disp)}")
        return "; ".join(parts)

    # -- fetch --------------------------------------------------------------------------------

    def _fetch(self) -> None:
        if self.f_pending or self.f_stopped:
            return
        remaining = self.insn_count - self.requested
        if remaining == 0:
            return
        pushed = self.requested
        if len(self.iq_push) < pushed:
            return  # the latest chunk's data has not been computed yet
        valid = max(1, self.f_last_push + 1)  # n_left == 0 the cycle after the last push
        need = pushed - IQ_DEPTH + min(IQ_DEPTH // 2, remaining)
        if need > 0:
            if len(self.iq_read) < need:
                return
            valid = max(valid, self.iq_read[need - 1] + 1)
        if self.d_fin is not None and valid > self.d_fin:
            self.f_stopped = True  # FINISH is decoded before the request could be made
            return
        self.f_pending = True
        self.port.request(FETCH, ReadRequest(valid, 0, 0, None, None, None))

    def _fetch_grant(self, t: int) -> bool:
        """Fill in the fetch request granted at ``t``; False if it was withdrawn."""
        port = self.port
        req = port.pending[FETCH]
        if self.d_fin is not None and self.d_fin <= t - 1:
            port.pending[FETCH] = None  # FINISH was dispatched meanwhile: stop
            self.f_pending = False
            self.f_stopped = True
            return False
        remaining = self.insn_count - self.requested
        reads = bisect_right(self.iq_read, t - 1)
        free = IQ_DEPTH - (self.requested - reads)
        nins = min(remaining, free)
        start = self.insn_addr + self.requested * INSN_BYTES
        bus, lbb = self.bus, self.lbb
        end = start + nins * INSN_BYTES + bus - 1
        base = (start >> lbb) << lbb
        beats = (end >> lbb) - (start >> lbb)
        self.requested += nins
        period = self.period
        if bus * 8 < INSN_BITS:
            bpi = INSN_BITS // (bus * 8)

            def extra(first, n):
                return 0

            def done(first, n, h_first, h_last):
                for i in range(first, first + n):
                    if (i + 1) % bpi == 0:
                        self.iq_push.append(h_first + (i - first) * period)
        else:
            slots = bus * 8 // INSN_BITS
            k0 = (start - base) // INSN_BYTES
            per_beat = []
            left = nins
            k = k0
            while left:
                e = min(slots - k, left)
                per_beat.append(e)
                left -= e
                k = 0

            def extra(first, n):
                return sum(per_beat[first:first + n]) - n

            def done(first, n, h_first, h_last):
                st = h_first - (per_beat[first] - 1)
                for i in range(first, first + n):
                    e = per_beat[i]
                    for j in range(e):
                        self.iq_push.append(st + j)
                    st = st + e - 1 + period

        def ready():
            return 0

        req.addr, req.beats, req.extra, req.ready, req.done = base, beats, extra, ready, done
        self.f_pending = False
        return True

    # -- decode and dispatch ------------------------------------------------------------------

    def _decoder(self) -> None:
        n = self.n
        k = len(self.disp)
        progressed = False
        while k < n:
            if len(self.iq_read) == k:  # load instruction k into the decode register
                if len(self.iq_push) <= k:
                    break
                p = self.iq_push[k]
                a = p + 2 if k == 0 else max(p + 2, self.iq_read[k - 1] + 1)
                self.iq_read.append(a if k == 0 else max(a, self.disp[k - 1]))
                progressed = True
            r = self.iq_read[k]
            ins = self.insns[k]
            m = ins.module
            qd = self.mdisp[m]
            ql = len(qd)
            d = r + 1
            if ql >= CMDQ_INNER:
                j = ql - CMDQ_INNER  # entry j must have reached the queue's output register
                if j == 0:
                    c = qd[0] + 2
                else:
                    if len(self.take[m]) < j:
                        break
                    c = max(qd[j] + 2, self.take[m][j - 1] + 1)
                d = max(d, c)
            self.disp.append(d)
            qd.append(d)
            if ins.opcode == Opcode.FINISH:
                self.d_fin = d
            progressed = True
            k += 1
            self.wake(m)
        if progressed:
            self.wake(4)

    # -- the modules --------------------------------------------------------------------------

    def _module(self, m: int) -> None:
        queue = self.queues[m]
        depth = self.depth
        while self.q[m] < len(queue):
            q = self.q[m]
            ins = queue[q]
            ph = self.phase[m]
            if ph == 0:  # IDLE: take the command
                if len(self.mdisp[m]) <= q:
                    return
                d = self.mdisp[m][q]
                c = d + 2 if q == 0 else max(d + 2, self.take[m][q - 1] + 1)
                take = max(c, self.idle_from[m])
                self.take[m].append(take)
                self.wake(3)
                self.t[m] = take + 1
                ph = self.phase[m] = 1
            if ph == 1:  # POP
                t0 = self.t[m]
                t = t0
                for qid, k in ins.pops:
                    pushes = self.tpush[qid]
                    if len(pushes) <= k:
                        return
                    t = max(t, pushes[k] + 1)
                for qid, k in ins.pops:
                    self.tpop[qid].append(t)
                    self.wake(_PRODUCER[qid])
                self.wait_cycles[m] += t - t0
                self.t_pop[m] = t
                x = t + 1
                if ins.kind == K_RUN:  # start_run at t, RUN from t+1
                    self.t[m] = t + ins.steps + 5 if ins.steps else t + 2
                    ph = self.phase[m] = 3
                elif ins.kind == K_NONE:
                    self.t[m] = t + 1
                    ph = self.phase[m] = 3
                elif ins.xs == 0:
                    self.t[m] = x + 1
                    self.busy[m] += 1 if m != COMPUTE else 0
                    ph = self.phase[m] = 3
                elif m == STORE:
                    done, self.last_w, _ = store_engine(
                        x, ins.addr, ins.stride, ins.xs, ins.ys, ins.eb, self.bus, self.period,
                        self.last_w) if ins.ys else (x + 2, self.last_w, None)
                    self.busy[m] += done - x + 1
                    self.t[m] = done + 1
                    ph = self.phase[m] = 3
                else:
                    self.x_exec[m] = x
                    self.loaders[m].start(ins, x)
                    ph = self.phase[m] = 2
            if ph == 2:  # WAIT for the loader
                done = self.loaders[m].done_at
                if done is None:
                    return
                if m == LOAD:
                    self.busy[m] += done - self.x_exec[m] + 1
                self.t[m] = done + 1
                ph = self.phase[m] = 3
            if ph == 3:  # PUSH
                t = self.t[m]
                self.t_push[m] = t
                for qid, k in ins.pushes:
                    if k >= depth:
                        pops = self.tpop[qid]
                        if len(pops) <= k - depth:
                            return
                        t = max(t, pops[k - depth] + 1)
                for qid, k in ins.pushes:
                    self.tpush[qid].append(t)
                    self.wake(_CONSUMER[qid])
                self.retire[m].append(t)
                if self.log is not None:
                    self.log.append((m, ins.pc, self.take[m][q], self.t_pop[m], self.t_push[m], t))
                self.idle_from[m] = t + 1
                self.phase[m] = 0
                self.q[m] += 1


class _Deadlock(Exception):
    pass
