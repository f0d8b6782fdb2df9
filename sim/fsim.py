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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import INSN_BYTES, AluOp, MemType, Opcode, extract_uops
from tessera.regs import ErrorCode
from tessera.sim.decode import COMPUTE, LOAD, MODULE_NAMES, STORE, DecodedProgram, decode_program
from tessera.sim.deferred import Deferred
from tessera.sim.gemm_kernel import gemm_accumulate, gemm_folded
from tessera.sim.races import DramRaceTracker, SramShadow
from tessera.sim.tokens import schedule

__all__ = ["FunctionalSimulator", "LOAD", "COMPUTE", "STORE", "MODULE_NAMES"]

DmaCheck = Callable[[np.ndarray, int, str], None]


class FunctionalSimulator:
    """Bit-exact model of one accelerator instance with its SRAMs.

    ``dram`` is the device memory (a writable uint8 array); ``dma_check(starts, length, what)``
    raises when a DMA row is not inside allocated memory. SRAM contents persist across runs.
    """

    def __init__(self, cfg: Config, dram: np.ndarray, dma_check: DmaCheck | None = None):
        if dram.dtype != np.uint8 or dram.ndim != 1:
            raise ValueError(f"dram must be a 1-D uint8 array, not {dram.dtype} {dram.shape}")
        self.cfg = cfg
        self.dram = dram
        self.dma_check = dma_check
        b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
        self.inp = np.zeros((cfg.inp_depth, b, bi), np.int8)
        self.wgt = np.zeros((cfg.wgt_depth, bo, bi), np.int8)
        self.acc = np.zeros((cfg.acc_depth, b, bo), np.int32)
        self.out = np.zeros((cfg.out_depth, b, bo), np.int8)
        self.uop = np.zeros(cfg.uop_depth, np.uint32)
        self._uop_fields = extract_uops(self.uop, cfg)
        self._elem = {MemType.UOP: cfg.uop_elem_bytes, MemType.WGT: cfg.wgt_elem_bytes,
                      MemType.INP: cfg.inp_elem_bytes, MemType.ACC: cfg.acc_elem_bytes,
                      MemType.OUT: cfg.out_elem_bytes, MemType.ACC_8BIT: cfg.acc8_elem_bytes}

    # -- running a program --------------------------------------------------------------------

    def prepare(self, insn_addr: int, insn_count: int) -> DecodedProgram:
        """Fetch and decode a program (decode-time errors raise here) and compute its token
        schedule; nothing executes. The result is what :meth:`execute` runs."""
        nbytes = insn_count * INSN_BYTES
        if self.dma_check is not None:
            self.dma_check(np.array([insn_addr], np.int64), nbytes, "instruction fetch")
        prog = decode_program(self.dram[insn_addr:insn_addr + nbytes], self.cfg)
        schedule(prog, self.cfg.dep_queue_depth)
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
        self.counters = {k: 0 for k in (
            "gemm_steps", "alu_steps", "dram_read_bytes", "dram_write_bytes", "insns_retired",
            "gemm_reset_steps", "load_insns", "compute_insns", "store_insns")}
        self.bytes_by_type = {m.name.lower(): 0 for m in MemType}
        self.local_pcs = prog.local_pcs  # local sequence number k (1-based) -> pc
        self.shadow = SramShadow(self.cfg)
        self.deferred = Deferred(self.cfg.acc_depth)
        self.dram_races = DramRaceTracker()
        execute = (self._exec_load_module, self._exec_compute, self._exec_store)
        counters, module, clocks, seq = self.counters, prog.module, sched.clocks, sched.seq
        for k, pc in enumerate(sched.order):
            m = module[pc]
            execute[m](pc, seq[k], clocks[k])
            counters["insns_retired"] += 1
            counters[MODULE_NAMES[m] + "_insns"] += 1
        if sched.deadlock is not None:
            raise SimError(sched.deadlock.message(),
                           code=int(ErrorCode.TOKEN_DEADLOCK), pc=sched.deadlock.pc)
        return dict(counters)

    # -- DMA helpers -----------------------------------------------------------------------------

    def _rows(self, pc: int, mt: int) -> tuple[np.ndarray, int]:
        f = self.prog.f
        eb = self._elem[MemType(mt)]
        starts = (f["dram_base"][pc] + np.arange(f["y_size"][pc], dtype=np.int64)
                  * f["x_stride"][pc]) * eb
        return starts, f["x_size"][pc] * eb

    def _dma_what(self, pc: int) -> str:
        op = Opcode(self.prog.f["opcode"][pc]).name
        return f"{op} {MemType(self.prog.f['memory_type'][pc]).name} at instruction {pc}"

    def _gather(self, starts: np.ndarray, length: int, stride_bytes: int) -> np.ndarray:
        if starts.size == 1 or stride_bytes == length:
            s = int(starts[0])
            return self.dram[s:s + length * starts.size].reshape(starts.size, length)
        return self.dram[starts[:, None] + np.arange(length, dtype=np.int64)]

    # -- the load module and compute-module loads ------------------------------------------------

    def _load(self, pc: int, module: int, seq: int, vc: np.ndarray) -> None:
        f = self.prog.f
        xs, ys, mt = f["x_size"][pc], f["y_size"][pc], MemType(f["memory_type"][pc])
        if xs == 0:
            return  # spec-notes 3: synchronisation only
        cfg = self.cfg
        starts, length = self._rows(pc, mt)
        if ys:
            what = self._dma_what(pc)
            if self.dma_check is not None:
                self.dma_check(starts, length, what)
            self.dram_races.read(module, seq, vc, starts, length, pc, what, self._pc_of)
            raw = self._gather(starts, length, f["x_stride"][pc] * self._elem[mt])
        else:  # only padding rows
            raw = np.zeros((0, length), np.uint8)
        self.counters["dram_read_bytes"] += ys * length
        self.bytes_by_type[mt.name.lower()] += ys * length
        b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
        if mt == MemType.INP:
            data, buf = raw.view(np.int8).reshape(ys, xs, b, bi), self.inp
        elif mt == MemType.WGT:
            data, buf = raw.view(np.int8).reshape(ys, xs, bo, bi), self.wgt
        elif mt == MemType.ACC:
            data = np.ascontiguousarray(raw).view("<i4").reshape(ys, xs, b, bo)
            buf = self.acc
        elif mt == MemType.ACC_8BIT:
            data, buf = raw.view(np.int8).astype(np.int32).reshape(ys, xs, b, bo), self.acc
        else:  # UOP
            data = np.ascontiguousarray(raw).view("<u4").reshape(ys, xs)
            buf = self.uop
        yp0, yp1, xp0, xp1 = (f["y_pad_0"][pc], f["y_pad_1"][pc], f["x_pad_0"][pc],
                              f["x_pad_1"][pc])
        height, width = yp0 + ys + yp1, xp0 + xs + xp1
        base = f["sram_base"][pc]
        region = buf[base:base + height * width]
        if yp0 == yp1 == xp0 == xp1 == 0:
            region[...] = data.reshape(region.shape)
        else:
            tile = region.reshape((height, width) + buf.shape[1:])
            tile[...] = 0
            tile[yp0:yp0 + ys, xp0:xp0 + xs] = data
        if mt in (MemType.INP, MemType.WGT):
            self.shadow.load_write(mt, base, base + height * width, seq, vc, pc, self._pc_of)
        elif mt == MemType.UOP:
            lo, hi = base, base + height * width
            fields = extract_uops(self.uop[lo:hi], cfg)
            for dst, src in zip(self._uop_fields, fields):
                dst[lo:hi] = src

    def _exec_load_module(self, pc: int, seq: int, vc: np.ndarray) -> None:
        self._load(pc, LOAD, seq, vc)

    def _pc_of(self, module: int, seq: int) -> int:
        return self.local_pcs[module][seq - 1]

    # -- the compute module ----------------------------------------------------------------------

    def _exec_compute(self, pc: int, seq: int, vc: np.ndarray) -> None:
        f = self.prog.f
        op = f["opcode"][pc]
        self.deferred.before(pc, f)
        if op == Opcode.LOAD:
            self._load(pc, COMPUTE, seq, vc)
        elif op == Opcode.GEMM:
            self._gemm(pc, seq, vc)
        elif op == Opcode.ALU:
            self._alu(pc, seq, vc)
        # FINISH: retires once every earlier instruction has (the scheduler drains all modules).
        self.deferred.after(pc, f)

    def _loop_indices(self, pc: int, alu: bool) -> tuple[np.ndarray, ...] | None:
        """(u, a, s, w) index arrays of every step in loop order, or None for an empty loop."""
        f = self.prog.f
        bgn, end = f["uop_bgn"][pc], f["uop_end"][pc]
        it_out, it_in = f["iter_out"][pc], f["iter_in"][pc]
        if bgn >= end or it_out == 0 or it_in == 0:
            return None
        cfg = self.cfg
        if end > cfg.uop_depth:
            raise self._index_error(pc, f"micro-op index {cfg.uop_depth} (uop_end={end}) is "
                                        f"outside the uop buffer (depth {cfg.uop_depth})")
        ud, us, uw = (x[bgn:end] for x in self._uop_fields)
        i = np.arange(it_out, dtype=np.int64)[:, None, None]
        j = np.arange(it_in, dtype=np.int64)[None, :, None]
        a = (ud + i * f["dst_factor_out"][pc] + j * f["dst_factor_in"][pc]).reshape(-1)
        if alu:
            s = (us + i * f["alu_src_factor_out"][pc] + j * f["alu_src_factor_in"][pc])
            return a, s.reshape(-1), None
        x = (us + i * f["src_factor_out"][pc] + j * f["src_factor_in"][pc]).reshape(-1)
        w = (uw + i * f["wgt_factor_out"][pc] + j * f["wgt_factor_in"][pc]).reshape(-1)
        return a, x, w

    def _index_error(self, pc: int, what: str) -> SimError:
        name = Opcode(self.prog.f["opcode"][pc]).name
        return SimError(f"error 3 (SRAM index out of range) at instruction {pc} ({name}): {what}",
                        code=int(ErrorCode.SRAM_RANGE), pc=pc)

    def _check_range(self, pc: int, idx: np.ndarray, depth: int, what: str) -> None:
        top = int(idx.max())
        if top >= depth:
            raise self._index_error(pc, f"{what} index {top} is outside the buffer "
                                        f"(depth {depth})")

    def _gemm(self, pc: int, seq: int, vc: np.ndarray) -> None:
        loop = self._loop_indices(pc, alu=False)
        if loop is None:
            return
        a, x, w = loop
        cfg = self.cfg
        self._check_range(pc, a, cfg.acc_depth, "accumulator")
        self.deferred.gemm(pc, a)
        if self.prog.f["reset"][pc]:
            self.shadow.compute_write_out(a, seq, vc, pc, self._pc_of)
            self.acc[a] = 0
            self.out[a] = 0
            self.counters["gemm_reset_steps"] += a.size
            return
        self._check_range(pc, x, cfg.inp_depth, "input")
        self._check_range(pc, w, cfg.wgt_depth, "weight")
        self.shadow.compute_read(MemType.INP, x, seq, vc, pc, self._pc_of)
        self.shadow.compute_read(MemType.WGT, w, seq, vc, pc, self._pc_of)
        self.shadow.compute_write_out(a, seq, vc, pc, self._pc_of)
        f = self.prog.f
        if f["dst_factor_out"][pc] == 0 and f["dst_factor_in"][pc] == 0:
            bgn, end = f["uop_bgn"][pc], f["uop_end"][pc]
            i = np.arange(f["iter_out"][pc], dtype=np.int64)[:, None]
            j = np.arange(f["iter_in"][pc], dtype=np.int64)[None, :]
            src_off = (i * f["src_factor_out"][pc] + j * f["src_factor_in"][pc]).reshape(-1)
            wgt_off = (i * f["wgt_factor_out"][pc] + j * f["wgt_factor_in"][pc]).reshape(-1)
            ud, us, uw = (v[bgn:end] for v in self._uop_fields)
            touched = gemm_folded(self.acc, self.inp, self.wgt, ud, us, uw, src_off, wgt_off)
        else:
            touched = gemm_accumulate(self.acc, self.inp, self.wgt, a, x, w)
        self.out[touched] = self.acc[touched].astype(np.int8)
        self.counters["gemm_steps"] += a.size

    def _alu(self, pc: int, seq: int, vc: np.ndarray) -> None:
        loop = self._loop_indices(pc, alu=True)
        if loop is None:
            return
        a, s, _ = loop
        f = self.prog.f
        cfg = self.cfg
        use_imm = f["use_imm"][pc]
        self._check_range(pc, a, cfg.acc_depth, "accumulator destination")
        if not use_imm:
            self._check_range(pc, s, cfg.acc_depth, "accumulator source")
        if f["deferred"][pc]:
            self.deferred.alu(pc, a, None if use_imm else s)
        self.shadow.compute_write_out(a, seq, vc, pc, self._pc_of)
        op = AluOp(f["alu_opcode"][pc])
        imm = f["imm"][pc]
        for lo, hi in _independent_chunks(a, None if use_imm else s):
            dst = a[lo:hi]
            lhs = self.acc[dst].astype(np.int64)
            rhs = np.int64(imm) if use_imm else self.acc[s[lo:hi]].astype(np.int64)
            self.acc[dst] = alu_apply(op, lhs, rhs)
        uniq = np.unique(a)
        self.out[uniq] = self.acc[uniq].astype(np.int8)
        self.counters["alu_steps"] += a.size

    # -- the store module ----------------------------------------------------------------------

    def _exec_store(self, pc: int, seq: int, vc: np.ndarray) -> None:
        f = self.prog.f
        xs, ys = f["x_size"][pc], f["y_size"][pc]
        if xs == 0 or ys == 0:
            return
        base = f["sram_base"][pc]
        self.shadow.store_read(base, base + ys * xs, seq, vc, pc, self._pc_of)
        starts, length = self._rows(pc, MemType.OUT)
        what = self._dma_what(pc)
        if self.dma_check is not None:
            self.dma_check(starts, length, what)
        self.dram_races.write(seq, vc, starts, length, pc, what, self._pc_of)
        data = self.out[base:base + ys * xs].reshape(ys, length).view(np.uint8)
        stride_bytes = f["x_stride"][pc] * self.cfg.out_elem_bytes
        if stride_bytes >= length:
            if stride_bytes == length:
                s0 = int(starts[0])
                self.dram[s0:s0 + ys * length] = data.reshape(-1)
            else:
                self.dram[starts[:, None] + np.arange(length, dtype=np.int64)] = data
        else:  # overlapping rows: later rows win, in order
            for y in range(ys):
                s0 = int(starts[y])
                self.dram[s0:s0 + length] = data[y]
        self.counters["dram_write_bytes"] += ys * length
        self.bytes_by_type["out"] += ys * length


def alu_apply(op: AluOp, lhs: np.ndarray, rhs: np.ndarray | np.int64) -> np.ndarray:
    """SPEC §4 ALU on int32 lanes given as int64 arrays; returns int32 (wrapping)."""
    if op == AluOp.MIN:
        res = np.minimum(lhs, rhs)
    elif op == AluOp.MAX:
        res = np.maximum(lhs, rhs)
    elif op == AluOp.ADD:
        res = lhs + rhs
    elif op == AluOp.SHR:
        amount = np.minimum(np.abs(rhs), 31)
        res = np.where(rhs >= 0, lhs >> amount, lhs << amount)
    else:  # MUL: low 32 bits of the signed product (int32*int32 fits in int64)
        res = lhs * rhs
    return res.astype(np.int32)  # modular narrowing: wraps mod 2**32


def _independent_chunks(a: np.ndarray, s: np.ndarray | None):
    """Split ALU steps into consecutive chunks that can be applied in one vectorised update.

    A chunk is valid when no step writes an accumulator row that an earlier step of the same
    chunk wrote or that a later step reads; the sequential result is then the chunk's.
    """
    n = a.size
    if n == 1:
        yield 0, 1
        return
    if s is None:
        if np.unique(a).size == n:
            yield 0, n
            return
    else:
        ua = np.unique(a)
        if ua.size == n and (np.array_equal(s, a) or not np.isin(s, ua).any()):
            yield 0, n
            return
    # General case: greedy chunks, scanning steps in order.
    lo, written = 0, set()
    for k in range(n):
        ak = int(a[k])
        if ak in written or (s is not None and int(s[k]) in written):
            yield lo, k
            lo, written = k, set()
        written.add(ak)
    yield lo, n
