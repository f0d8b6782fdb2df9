"""Race detection for the functional simulator (SPEC §5 "well synchronised").

Every instruction carries the vector clock of its module at execution: entry ``m`` is how many
instructions of module ``m`` are known (through tokens) to have completed. An earlier access by
module ``m`` with local sequence number ``k`` is ordered before the current one exactly when
``k <= clock[m]``. Accesses by the same module are ordered by program order.

The SRAM shadow keeps, per element, the sequence number of its last writer and last reader.
GEMM and ALU instructions hand it an :class:`IndexSet` (computed once per micro-op kernel and
cached with it): when the indices form a few contiguous runs, checks and updates are slice
operations, so their cost is O(runs) numpy calls rather than a gather over every loop step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import MemType

__all__ = ["IndexSet", "SramShadow", "DramRaceTracker", "rows_overlap"]

LOAD, COMPUTE, STORE = 0, 1, 2
_NAMES = ("load", "compute", "store")
PcOf = Callable[[int, int], int]
MAX_RUNS = 8  # an index set with more runs is handled by fancy indexing
_max = np.maximum.reduce  # the ufunc itself: ndarray.max() adds a Python wrapper per call


class IndexSet:
    """The distinct values of an index array: ``uniq`` (sorted) and, when they form at most
    ``MAX_RUNS`` contiguous runs, ``runs`` as ``[(lo, hi), ...]`` (else None)."""

    __slots__ = ("uniq", "runs", "top", "key", "_halves")

    def __init__(self, idx: np.ndarray, runs_allowed: bool = True):
        idx = np.asarray(idx).reshape(-1)
        if idx.size and 0 <= int(idx.min()) and int(idx.max()) < 1 << 22:
            seen = np.zeros(int(idx.max()) + 1, bool)  # buffer indices: a mask beats a sort
            seen[idx] = True
            u = np.flatnonzero(seen)
        else:
            u = np.unique(idx)
        self.uniq = u
        self.top = int(u[-1]) if u.size else -1
        self._halves: tuple[int, frozenset[int]] | None = None
        self.runs: list[tuple[int, int]] | None = None
        if runs_allowed and u.size:
            cut = np.flatnonzero(np.diff(u) != 1) + 1
            if cut.size < MAX_RUNS:
                lo = np.concatenate(([0], cut))
                hi = np.concatenate((cut, [u.size]))
                self.runs = [(int(u[a]), int(u[b - 1]) + 1) for a, b in zip(lo, hi)]
        # equal for equal sets with runs (a dictionary key), else unique to the object
        self.key: tuple | int = tuple(self.runs) if self.runs is not None else id(self)

    @property
    def nbytes(self) -> int:
        return self.uniq.nbytes

    def halves(self, half: int) -> frozenset[int]:
        """The distinct ``i // half`` of the set (memoised: the set is cached with its plan)."""
        got = self._halves
        if got is None or got[0] != half:
            if self.runs is not None:
                hs = frozenset(h for lo, hi in self.runs for h in range(lo // half,
                                                                         (hi - 1) // half + 1))
            else:
                hs = frozenset((self.uniq // half).tolist())
            got = self._halves = (half, hs)
        return got[1]

    def meets(self, runs: list[tuple[int, int]]) -> bool | None:
        """Whether the set shares an index with the union of ``runs`` (None: the set has no
        runs, ask :func:`numpy.intersect1d`)."""
        mine = self.runs
        if mine is None:
            return None
        for lo, hi in mine:
            for lo2, hi2 in runs:
                if lo < hi2 and lo2 < hi:
                    return True
        return False

    def max_of(self, arr: np.ndarray) -> int:
        """``arr[self].max()`` (the set is not empty)."""
        runs = self.runs
        if runs is not None:
            if len(runs) == 1:
                lo, hi = runs[0]
                return int(_max(arr[lo:hi]))
            return max(int(_max(arr[lo:hi])) for lo, hi in runs)
        return int(_max(arr[self.uniq]))

    def assign(self, arr: np.ndarray, value) -> None:
        """``arr[self] = value``."""
        if self.runs is not None:
            for lo, hi in self.runs:
                arr[lo:hi] = value
        else:
            arr[self.uniq] = value


def _race(buffer: str, idx: np.ndarray, bad: np.ndarray, first: tuple[int, int, str],
          second: tuple[int, int, str]) -> SimError:
    hit = idx[bad] if idx.ndim else idx
    lo, hi = int(hit.min()), int(hit.max())
    (pc1, m1, act1), (pc2, m2, act2) = first, second
    return SimError(
        f"race on {buffer}[{lo}:{hi + 1}]: instruction {pc1} ({_NAMES[m1]} module, {act1}) and "
        f"instruction {pc2} ({_NAMES[m2]} module, {act2}) are not ordered by dependency tokens"
    )


def _unordered_overlap(queue: deque, limit: int, runs: list[tuple[int, int]]) -> bool:
    """Whether an access ``(seq, lo, hi)`` of ``queue`` with ``seq > limit`` overlaps ``runs``;
    drops the accesses with ``seq <= limit`` first (``limit``, a clock entry of the asking
    module, never decreases, and the queue is in ``seq`` order)."""
    while queue and queue[0][0] <= limit:
        queue.popleft()
    for _, lo, hi in queue:
        for a, b in runs:
            if a < hi and lo < b:
                return True
    return False


class SramShadow:
    """Last-writer / last-reader sequence numbers of every shared SRAM element.

    The compute module's checks against the other modules' accesses have a fast path: the
    LOAD writes (INP, WGT) and STORE reads (OUT) it does not yet know to be complete are kept in
    order as contiguous ranges, so a GEMM/ALU whose rows are a few runs is checked with a few
    interval comparisons. Equivalent to the per-element test: some element's last access is
    unordered exactly when an unordered access covers it. Only a possible race (or a set
    without runs) goes to the per-element arrays, which name the race.
    """

    def __init__(self, cfg: Config):
        self.w = {MemType.INP: np.zeros(cfg.inp_depth, np.int64),
                  MemType.WGT: np.zeros(cfg.wgt_depth, np.int64)}
        self.r = {MemType.INP: np.zeros(cfg.inp_depth, np.int64),
                  MemType.WGT: np.zeros(cfg.wgt_depth, np.int64)}
        self.out_w = np.zeros(cfg.out_depth, np.int64)
        self.out_r = np.zeros(cfg.out_depth, np.int64)
        self.pending_w: dict[MemType, deque] = {MemType.INP: deque(), MemType.WGT: deque()}
        self.pending_out_r: deque = deque()

    def load_write(self, mt: MemType, lo: int, hi: int, seq: int, vc, pc: int,
                   pc_of: PcOf) -> None:
        readers = self.r[mt][lo:hi]
        if readers.size and int(_max(readers)) > vc[COMPUTE]:  # a LOAD may write nothing
            bad = readers > vc[COMPUTE]
            other = pc_of(COMPUTE, int(readers[bad].max()))
            raise _race(mt.name, np.arange(lo, hi), bad, (other, COMPUTE, "reads"),
                        (pc, LOAD, "writes"))
        self.w[mt][lo:hi] = seq
        if hi > lo:
            self.pending_w[mt].append((seq, lo, hi))

    def compute_read(self, mt: MemType, idx: IndexSet, seq: int, vc, pc: int,
                     pc_of: PcOf) -> None:
        w = self.w[mt]
        runs = idx.runs
        if runs is not None and not _unordered_overlap(self.pending_w[mt], vc[LOAD], runs):
            pass  # proven ordered
        elif idx.max_of(w) > vc[LOAD]:
            writers = w[idx.uniq]
            bad = writers > vc[LOAD]
            raise _race(mt.name, idx.uniq, bad, (pc_of(LOAD, int(writers[bad].min())), LOAD,
                                                 "writes"), (pc, COMPUTE, "reads"))
        idx.assign(self.r[mt], seq)

    def compute_write_out(self, idx: IndexSet, seq: int, vc, pc: int, pc_of: PcOf) -> None:
        runs = idx.runs
        if runs is not None and not _unordered_overlap(self.pending_out_r, vc[STORE], runs):
            pass  # proven ordered
        elif idx.max_of(self.out_r) > vc[STORE]:
            readers = self.out_r[idx.uniq]
            bad = readers > vc[STORE]
            raise _race("OUT", idx.uniq, bad, (pc_of(STORE, int(readers[bad].max())), STORE,
                                               "reads"), (pc, COMPUTE, "writes"))
        idx.assign(self.out_w, seq)

    def store_read(self, lo: int, hi: int, seq: int, vc, pc: int, pc_of: PcOf) -> None:
        writers = self.out_w[lo:hi]
        if int(_max(writers)) > vc[COMPUTE]:
            bad = writers > vc[COMPUTE]
            other = pc_of(COMPUTE, int(writers[bad].max()))
            raise _race("OUT", np.arange(lo, hi), bad, (other, COMPUTE, "writes"),
                        (pc, STORE, "reads"))
        self.out_r[lo:hi] = seq
        if hi > lo:
            self.pending_out_r.append((seq, lo, hi))


def rows_overlap(sa: np.ndarray, la: int, sb: np.ndarray, lb: int) -> bool:
    """Whether rows ``[sa_i, sa_i+la)`` and ``[sb_j, sb_j+lb)`` share a byte (starts sorted)."""
    if sa[0] >= sb[-1] + lb or sb[0] >= sa[-1] + la:
        return False
    lo = np.searchsorted(sb, sa - lb, side="right")
    hi = np.searchsorted(sb, sa + la, side="left")
    return bool((hi > lo).any())


class DramRaceTracker:
    """DRAM conflicts between STORE writes and LOAD reads of the load or compute module.

    Every access also gives its byte span ``(first, end)`` (Python ints: the rows' hull), so
    accesses far apart are told apart without numpy."""

    def __init__(self) -> None:
        Rec = tuple[int, np.ndarray, int, int, str, int, int]
        self.writes: list[Rec] = []
        self.reads: dict[int, list[Rec]] = {LOAD: [], COMPUTE: []}
        self.wptr = {LOAD: 0, COMPUTE: 0}
        self.rptr = {LOAD: 0, COMPUTE: 0}

    def read(self, module: int, seq: int, vc, starts: np.ndarray, length: int,
             pc: int, what: str, pc_of: PcOf, span: tuple[int, int]) -> None:
        writes, p = self.writes, self.wptr[module]
        while p < len(writes) and writes[p][0] <= vc[STORE]:
            p += 1
        self.wptr[module] = p
        first, end = span
        for _wseq, wstarts, wlen, wpc, wwhat, wfirst, wend in writes[p:]:
            if first < wend and wfirst < end and rows_overlap(starts, length, wstarts, wlen):
                raise SimError(
                    f"race on DRAM: instruction {wpc} (store module, {wwhat}) writes bytes that "
                    f"instruction {pc} ({_NAMES[module]} module, {what}) reads, and no "
                    f"dependency tokens order them")
        self.reads[module].append((seq, starts, length, pc, what, first, end))

    def write(self, seq: int, vc, starts: np.ndarray, length: int, pc: int,
              what: str, pc_of: PcOf, span: tuple[int, int]) -> None:
        first, end = span
        for m in (LOAD, COMPUTE):
            reads, p = self.reads[m], self.rptr[m]
            while p < len(reads) and reads[p][0] <= vc[m]:
                p += 1
            if p > 4096:  # drop records every later store is ordered after
                del reads[:p]
                p = 0
            self.rptr[m] = p
            for _rseq, rstarts, rlen, rpc, rwhat, rfirst, rend in reads[p:]:
                if first < rend and rfirst < end and rows_overlap(starts, length, rstarts, rlen):
                    raise SimError(
                        f"race on DRAM: instruction {pc} (store module, {what}) writes bytes "
                        f"that instruction {rpc} ({_NAMES[m]} module, {rwhat}) reads, and no "
                        f"dependency tokens order them")
        self.writes.append((seq, starts, length, pc, what, first, end))
