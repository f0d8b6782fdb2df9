"""The functional simulator: the executable specification of SPEC §3–5 and §8.

Bit-exact, vectorised over micro-op loops with numpy, and strict: every SPEC §6 error with its
code and instruction index, dependency deadlocks, and programs that are not well synchronised
(two accesses by different modules that no chain of tokens orders) are rejected with
:class:`~tessera.errors.SimError`.

The program is decoded (``sim/decode.py``) and its token-level schedule computed from the
dependency flags alone (``sim/tokens.py``: the three modules' command queues, the four bounded
token queues, token deadlocks) before anything executes; the instructions then execute in the
schedule's order. A vector clock per module records which instructions of the other modules are
known to have completed; an access is a race when the conflicting earlier access of another
module is not in the current module's clock (``sim/races.py``), so the verdict does not depend
on the interleaving chosen. See ``docs/spec-notes.md`` for the readings of ambiguous SPEC points
implemented here.

Each instruction's data part is separate from its checks: LOAD/STORE data steps live in
``sim/dma.py`` (the simulator's base class), GEMM/ALU ones in the plans. A program whose checks
all passed is run again as those data steps alone while nothing the checks depend on has
changed (``sim/replay.py``).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import INSN_BYTES, AluOp, MemType, Opcode, elem_bytes, extract_uops
from tessera.regs import ErrorCode
from tessera.sim.alu_kernel import AluPlan, alu_apply, alu_plain, plan_alu
from tessera.sim.blas import blas_limit
from tessera.sim.decode import COMPUTE, LOAD, MODULE_NAMES, STORE, DecodedProgram, decode_program
from tessera.sim.deferred import Deferred
from tessera.sim.dma import DmaSteps
from tessera.sim.gemm_kernel import GemmPlan, gemm_plain, plan_gemm
from tessera.sim.races import DramRaceTracker, IndexSet, SramShadow
from tessera.sim.replay import Replay
from tessera.sim.tokens import schedule

__all__ = ["FunctionalSimulator", "LOAD", "COMPUTE", "STORE", "MODULE_NAMES", "alu_apply"]

DmaCheck = Callable[[np.ndarray, int, str], None]
_EPOCHS = itertools.count()  # unique across simulators, so a memo never matches another's
PROGRAM_CACHE = 64  # decoded programs kept per simulator (keyed by their bytes)
UOP_VERSIONS = 64  # micro-op buffer contents remembered with their epoch
REPLAYS = 4  # replays kept per program (one per micro-op epoch it starts from)


class FunctionalSimulator(DmaSteps):
    """Bit-exact model of one accelerator instance with its SRAMs.

    ``dram`` is the device memory (a writable uint8 array); ``dma_check(starts, length, what)``
    raises when a DMA row is not inside allocated memory. SRAM contents persist across runs.

    ``fast`` (default) executes GEMM and ALU instructions through plans cached per micro-op
    kernel (``sim/gemm_kernel.py``, ``sim/alu_kernel.py``) and checks races on index runs;
    ``fast=False`` runs the plain SPEC loop nests step by step (for differential tests: both
    must give identical results, errors and counters). ``cache_bytes`` bounds the plan cache.

    ``dma_generation()``, when given, returns a number that changes whenever what
    ``dma_check`` accepts may change (the allocator's generation): rows of an instruction that
    passed under the same generation are not checked again.

    ``blas_threads`` (default 1) limits the BLAS thread pool while a program executes (None
    leaves it as configured): the products are one tile each, too small for threads to pay,
    and OpenBLAS threads that wait for a busy core slow every product down several times.
    """

    def __init__(self, cfg: Config, dram: np.ndarray, dma_check: DmaCheck | None = None,
                 fast: bool = True, cache_bytes: int = 256 << 20, blas_threads: int | None = 1,
                 dma_generation: Callable[[], int] | None = None):
        if dram.dtype != np.uint8 or dram.ndim != 1:
            raise ValueError(f"dram must be a 1-D uint8 array, not {dram.dtype} {dram.shape}")
        if blas_threads is not None and (isinstance(blas_threads, bool) or not isinstance(
                blas_threads, int) or blas_threads < 1):
            raise ValueError(f"blas_threads must be a positive integer or None, not "
                             f"{blas_threads!r}")
        self.blas_threads = blas_threads
        self.cfg = cfg
        self.dram = dram
        self.dma_check = dma_check
        self.dma_generation = dma_generation
        self._dma_gen: int | None = None
        self.fast = bool(fast)
        self._out_dirty: dict[object, IndexSet] = {}  # rows whose out refresh is pending
        b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
        self.inp = np.zeros((cfg.inp_depth, b, bi), np.int8)
        self.wgt = np.zeros((cfg.wgt_depth, bo, bi), np.int8)
        self.acc = np.zeros((cfg.acc_depth, b, bo), np.int32)
        self.out = np.zeros((cfg.out_depth, b, bo), np.int8)
        self.uop = np.zeros(cfg.uop_depth, np.uint32)
        self._uop_depth, self._inp_depth = cfg.uop_depth, cfg.inp_depth
        self._wgt_depth, self._acc_depth = cfg.wgt_depth, cfg.acc_depth
        self._uop_fields = extract_uops(self.uop, cfg)
        # float32 mirrors of the input and weight buffers (exact: int8 values; weights with
        # every element transposed to [BLOCK_IN][BLOCK_OUT]), kept in step by every LOAD, for
        # the BLAS products; a write stamp per weight row keys cached weight matrices
        self.inp_f = np.zeros(self.inp.shape, np.float32)
        self.wgt_t = np.zeros((cfg.wgt_depth, bi, bo), np.float32)
        self.wgt_stamp = np.zeros(cfg.wgt_depth, np.int64)
        self._stamp = 0
        self._plans: OrderedDict[tuple, GemmPlan | AluPlan] = OrderedDict()
        self._plan_bytes = 0
        self._cache_limit = int(cache_bytes)
        self._uop_epoch = next(_EPOCHS)  # renewed by every UOP load (validates plan memos)
        self._uop_versions: OrderedDict[bytes, int] = OrderedDict()
        self._elem_of = [elem_bytes(cfg, t) for t in range(len(MemType))]
        self._buf_of = [self.uop, self.wgt, self.inp, self.acc, None, self.acc]
        self._programs: OrderedDict[bytes, DecodedProgram] = OrderedDict()
        self._epoch_trace: list[int] = []  # the epochs of this run's UOP loads, in turn

    # -- running a program --------------------------------------------------------------------

    def prepare(self, insn_addr: int, insn_count: int) -> DecodedProgram:
        """Fetch and decode a program (decode-time errors raise here) and compute its token
        schedule; nothing executes. The result is what :meth:`execute` runs. Decoded programs
        are cached by their bytes (decoding and scheduling depend on nothing else)."""
        nbytes = insn_count * INSN_BYTES
        if self.dma_check is not None:
            self.dma_check(np.array([insn_addr], np.int64), nbytes, "instruction fetch")
        if insn_addr + nbytes > self.dram.size:
            raise SimError(f"instruction fetch: bytes up to {insn_addr + nbytes:#x} are beyond "
                           f"the simulator's DRAM ({self.dram.size:#x} bytes)")
        raw = self.dram[insn_addr:insn_addr + nbytes]
        key = raw.tobytes()
        prog = self._programs.get(key)
        if prog is not None:
            self._programs.move_to_end(key)
            return prog
        prog = decode_program(raw, self.cfg)
        schedule(prog, self.cfg.dep_queue_depth)
        self._programs[key] = prog
        if len(self._programs) > PROGRAM_CACHE:
            self._programs.popitem(last=False)
        return prog

    def run(self, insn_addr: int, insn_count: int) -> dict[str, int]:
        """Execute a program; return the architectural event counters (regs.COUNTERS names)."""
        return self.execute(self.prepare(insn_addr, insn_count))

    def execute(self, prog: DecodedProgram) -> dict[str, int]:
        """Execute a prepared program in its schedule's order; return the event counters.

        Raises :class:`SimError` for execution-time errors (code 3), races and, after the
        instructions that execute before it, a token deadlock (code 7).
        """
        sched = prog.schedule
        self.prog = prog
        self._dma_gen = None if self.dma_generation is None else self.dma_generation()
        self._out_dirty.clear()
        memo = prog.plan_memo
        replay = memo.get("replay", {}).get(self._uop_epoch) if self.fast else None
        if replay is not None and replay.applies(self):
            try:
                with blas_limit(self.blas_threads):
                    return replay.run(self)
            finally:
                self._flush_out()
        start_epoch, self._epoch_trace = self._uop_epoch, []
        self.counters = {k: 0 for k in (
            "gemm_steps", "alu_steps", "dram_read_bytes", "dram_write_bytes", "insns_retired",
            "gemm_reset_steps", "load_insns", "compute_insns", "store_insns")}
        self.bytes_by_type = {m.name.lower(): 0 for m in MemType}
        self.local_pcs = prog.local_pcs  # local sequence number k (1-based) -> pc
        self.shadow = SramShadow(self.cfg)
        self.deferred = Deferred(self.cfg.acc_depth)
        self.dram_races = DramRaceTracker()
        run = memo.get("run")
        if run is None:  # per-program constants, computed once: handlers, drains, clocks
            f = prog.f
            kinds = []
            for pc in range(prog.n):
                op, m = f["opcode"][pc], prog.module[pc]
                kinds.append(0 if m == LOAD else 4 if m == STORE else
                             1 if op == Opcode.LOAD else 2 if op == Opcode.GEMM else
                             3 if op == Opcode.ALU else 5)
            before, after = Deferred.drain_points(f, [m == COMPUTE for m in prog.module])
            run = memo["run"] = (kinds, before, after, sched.clocks.tolist())
        kinds, before, after, clocks = run
        handlers = (self._exec_load_module, self._exec_compute_load, self._gemm, self._alu,
                    self._exec_store, _nothing)
        deferred, seq = self.deferred, sched.seq
        done = [0] * 6
        try:
            with blas_limit(self.blas_threads):
                for k, pc in enumerate(sched.order):
                    kind = kinds[pc]
                    if before[pc]:
                        deferred.clear()
                    handlers[kind](pc, seq[k], clocks[k])
                    if after[pc]:
                        deferred.clear()
                    done[kind] += 1
        finally:
            self._flush_out()
            counters = self.counters
            counters["load_insns"] = done[0]
            counters["store_insns"] = done[4]
            counters["compute_insns"] = done[1] + done[2] + done[3] + done[5]
            counters["insns_retired"] = sum(done)
        if sched.deadlock is not None:
            raise SimError(sched.deadlock.message(),
                           code=int(ErrorCode.TOKEN_DEADLOCK), pc=sched.deadlock.pc)
        if self.fast:  # every check passed: later runs may replay the data steps alone
            replays = memo.setdefault("replay", {})  # by starting micro-op epoch
            replays.pop(start_epoch, None)
            replays[start_epoch] = Replay.record(self, prog, kinds, start_epoch,
                                                 self._epoch_trace)
            if len(replays) > REPLAYS:
                del replays[next(iter(replays))]
        return dict(counters)

    # -- the load module and compute-module loads ------------------------------------------------

    def _load(self, pc: int, module: int, seq: int, vc) -> None:
        memo = self.prog.load_memo
        d = memo.get(pc)
        if d is None:
            d = memo[pc] = self._describe_load(pc)
        if not d:
            return
        ys, mt, starts, length, what, _raw, base, hi, mt_name, nbytes, span, step = d
        if ys:
            self._check_dma(pc, starts, length, what)
            self.dram_races.read(module, seq, vc, starts, length, pc, what, self._pc_of, span)
        self.counters["dram_read_bytes"] += nbytes
        self.bytes_by_type[mt_name] += nbytes
        if mt == MemType.INP or mt == MemType.WGT:
            self.shadow.load_write(MemType(mt), base, hi, seq, vc, pc, self._pc_of)
        step()

    def _renew_uop_epoch(self) -> None:
        """Name the micro-op buffer's new contents: the same contents get the same epoch again
        (so the per-pc plan memos of a program that reloads the same kernels every run stay
        valid), different contents a new one."""
        key = self.uop.tobytes()
        epoch = self._uop_versions.get(key)
        if epoch is None:
            epoch = self._uop_versions[key] = next(_EPOCHS)
            if len(self._uop_versions) > UOP_VERSIONS:
                self._uop_versions.popitem(last=False)
        else:
            self._uop_versions.move_to_end(key)
        self._uop_epoch = epoch

    def _exec_load_module(self, pc: int, seq: int, vc: np.ndarray) -> None:
        self._load(pc, LOAD, seq, vc)

    def _pc_of(self, module: int, seq: int) -> int:
        return self.local_pcs[module][seq - 1]

    # -- the compute module ----------------------------------------------------------------------

    def _exec_compute_load(self, pc: int, seq: int, vc) -> None:
        self._load(pc, COMPUTE, seq, vc)

    def _plan(self, pc: int, alu: bool) -> GemmPlan | AluPlan | None:
        """The plan of GEMM/ALU ``pc`` (cached per kernel when fast), or None for an empty loop.
        Raises error 3 for a micro-op index outside the buffer."""
        f = self.prog.f
        bgn, end = f["uop_bgn"][pc], f["uop_end"][pc]
        it_out, it_in = f["iter_out"][pc], f["iter_in"][pc]
        if bgn >= end or it_out == 0 or it_in == 0:
            return None
        depth = self._uop_depth
        if end > depth:
            raise self._index_error(pc, f"micro-op index {depth} (uop_end={end}) is outside the "
                                        f"uop buffer (depth {depth})")
        if alu:
            fac = (f["dst_factor_out"][pc], f["dst_factor_in"][pc], f["alu_src_factor_out"][pc],
                   f["alu_src_factor_in"][pc])
            flag = f["use_imm"][pc]
        else:
            fac = (f["dst_factor_out"][pc], f["dst_factor_in"][pc], f["src_factor_out"][pc],
                   f["src_factor_in"][pc], f["wgt_factor_out"][pc], f["wgt_factor_in"][pc])
            flag = f["reset"][pc]
        if not self.fast:
            ud, us, uw = (x[bgn:end] for x in self._uop_fields)
            if alu:
                return plan_alu(ud, us, it_out, it_in, fac, bool(flag), fast=False)
            return plan_gemm(ud, us, uw, bool(flag), it_out, it_in, fac, fast=False)
        memo = self.prog.plan_memo
        hit = memo.get(pc)
        if hit is not None and hit[0] == self._uop_epoch:  # no UOP load since: same kernel
            return hit[1]
        key = (alu, flag, it_out, it_in, fac, self.uop[bgn:end].tobytes())
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            memo[pc] = (self._uop_epoch, plan)
            return plan
        ud, us, uw = (x[bgn:end] for x in self._uop_fields)
        if alu:
            plan = plan_alu(ud, us, it_out, it_in, fac, bool(flag))
        else:
            plan = plan_gemm(ud, us, uw, bool(flag), it_out, it_in, fac)
        memo[pc] = (self._uop_epoch, plan)
        self._plans[key] = plan
        self._plan_bytes += plan.nbytes + len(key[-1])
        while self._plan_bytes > self._cache_limit and len(self._plans) > 1:
            old_key, old = self._plans.popitem(last=False)
            self._plan_bytes -= old.nbytes + len(old_key[-1])
        return plan

    def _index_error(self, pc: int, what: str) -> SimError:
        name = Opcode(self.prog.f["opcode"][pc]).name
        return SimError(f"error 3 (SRAM index out of range) at instruction {pc} ({name}): {what}",
                        code=int(ErrorCode.SRAM_RANGE), pc=pc)

    def _check_range(self, pc: int, idx: IndexSet, depth: int, what: str) -> None:
        if idx.top >= depth:
            raise self._index_error(pc, f"{what} index {idx.top} is outside the buffer "
                                        f"(depth {depth})")

    def _refresh_out(self, rows: IndexSet) -> None:
        """``out[a] = low 8 bits of acc[a]`` for the rows an instruction wrote (SPEC §4)."""
        if rows.runs is not None:
            for lo, hi in rows.runs:
                np.copyto(self.out[lo:hi], self.acc[lo:hi], casting="unsafe")
        else:
            self.out[rows.uniq] = self.acc[rows.uniq].astype(np.int8)

    def _wrote(self, rows: IndexSet) -> None:
        """GEMM/ALU wrote accumulator ``rows``: their out rows follow (SPEC §4). The fast path
        refreshes them lazily, once per distinct row set, before anything reads ``out`` or
        overwrites ``acc`` without it (a STORE, an ACC load, the end of the program): GEMM
        and ALU keep ``out == low 8 bits of acc`` on the rows they write, so the later copy
        gives what the copy at every write would have."""
        if self.fast:
            self._out_dirty[rows.key] = rows
        else:
            self._refresh_out(rows)

    def _flush_out(self) -> None:
        if self._out_dirty:
            for rows in self._out_dirty.values():
                self._refresh_out(rows)
            self._out_dirty.clear()

    def _gemm(self, pc: int, seq: int, vc) -> None:
        hit = self.prog.plan_memo.get(pc)  # (fast path) the kernel planned at this pc before
        plan = hit[1] if hit is not None and hit[0] == self._uop_epoch else self._plan(pc, False)
        if plan is None:
            return
        checked = plan.checked  # its index ranges were checked before (the depths are fixed)
        if not checked:
            self._check_range(pc, plan.rows, self._acc_depth, "accumulator")
        self.deferred.gemm(pc, plan.rows)
        if plan.reset:
            plan.checked = True
            self.shadow.compute_write_out(plan.rows, seq, vc, pc, self._pc_of)
            self._gemm_data(plan)
            self.counters["gemm_reset_steps"] += plan.steps
            return
        if not checked:
            self._check_range(pc, plan.reads_inp, self._inp_depth, "input")
            self._check_range(pc, plan.reads_wgt, self._wgt_depth, "weight")
            plan.checked = True
        shadow = self.shadow
        shadow.compute_read(MemType.INP, plan.reads_inp, seq, vc, pc, self._pc_of)
        shadow.compute_read(MemType.WGT, plan.reads_wgt, seq, vc, pc, self._pc_of)
        shadow.compute_write_out(plan.rows, seq, vc, pc, self._pc_of)
        self._gemm_data(plan)
        self.counters["gemm_steps"] += plan.steps

    def _gemm_data(self, plan: GemmPlan) -> None:
        """What GEMM ``plan`` writes (no checks: :meth:`_gemm` makes them first)."""
        if plan.reset:
            plan.rows.assign(self.acc, 0)
            plan.rows.assign(self.out, 0)
            return
        if self.fast:
            plan.run(self.acc, self.inp_f, self.wgt_t, self.wgt_stamp)
        else:
            gemm_plain(self.acc, self.inp, self.wgt, *plan.steps_arrays)
        self._wrote(plan.rows)

    def _alu(self, pc: int, seq: int, vc) -> None:
        hit = self.prog.plan_memo.get(pc)
        plan = hit[1] if hit is not None and hit[0] == self._uop_epoch else self._plan(pc, True)
        if plan is None:
            return
        f = self.prog.f
        if not plan.checked:
            self._check_range(pc, plan.rows, self._acc_depth, "accumulator destination")
            if plan.src is not None:
                self._check_range(pc, plan.src, self._acc_depth, "accumulator source")
            plan.checked = True
        if f["deferred"][pc]:
            self.deferred.alu(pc, plan.rows, plan.src)
        self.shadow.compute_write_out(plan.rows, seq, vc, pc, self._pc_of)
        self._alu_data(plan, f["alu_opcode"][pc], f["imm"][pc])
        self.counters["alu_steps"] += plan.steps

    def _alu_data(self, plan: AluPlan, op: int, imm: int) -> None:
        """What ALU ``plan`` with ``op``/``imm`` writes (no checks: :meth:`_alu` makes them)."""
        if self.fast:
            plan.run(self.acc, op, imm if plan.src is None else None)
        else:
            alu_plain(self.acc, AluOp(op), plan.a, plan.s, imm)
        self._wrote(plan.rows)

    # -- the store module ----------------------------------------------------------------------

    def _exec_store(self, pc: int, seq: int, vc) -> None:
        f = self.prog.f
        xs, ys = f["x_size"][pc], f["y_size"][pc]
        if xs == 0 or ys == 0:
            return
        base = f["sram_base"][pc]
        self.shadow.store_read(base, base + ys * xs, seq, vc, pc, self._pc_of)
        starts, length, stride, what = self._dma(pc)
        self._check_dma(pc, starts, length, what)
        self.dram_races.write(seq, vc, starts, length, pc, what, self._pc_of,
                              (int(starts[0]), int(starts[-1]) + length))
        self._store_data(pc)
        self.counters["dram_write_bytes"] += ys * length
        self.bytes_by_type["out"] += ys * length


def _nothing(pc: int, seq: int, vc) -> None:
    """FINISH: retires once every earlier instruction has (the scheduler drains all modules)."""
