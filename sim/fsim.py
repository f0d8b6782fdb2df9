"""The functional simulator: the executable specification of SPEC §3–5 and §8.

Bit-exact, vectorised over micro-op loops with numpy, and strict: every SPEC §6 error with its
code and instruction index, dependency deadlocks, and programs that are not well synchronised
(two accesses by different modules that no chain of tokens orders) are rejected with
:class:`~tessera.errors.SimError`.

The three modules run from their own command queues and exchange tokens through four bounded
queues, exactly as SPEC §5 describes; the scheduler interleaves them in one fixed way, and a
vector clock per module records which instructions of the other modules are known to have
completed. An access is a race when the conflicting earlier access of another module is not in
the current module's clock, so the verdict does not depend on the chosen interleaving.
See ``docs/spec-notes.md`` for the readings of ambiguous SPEC points implemented here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import INSN_BYTES, AluOp, MemType, Opcode, extract, extract_uops, layout
from tessera.regs import ERROR_TEXT, ErrorCode
from tessera.sim.gemm_kernel import gemm_accumulate, gemm_folded
from tessera.sim.races import DramRaceTracker, SramShadow

__all__ = ["FunctionalSimulator", "LOAD", "COMPUTE", "STORE", "MODULE_NAMES"]

LOAD, COMPUTE, STORE = 0, 1, 2
MODULE_NAMES = ("load", "compute", "store")
# Token queues: (name, producer, consumer)
L2C, C2L, C2S, S2C = 0, 1, 2, 3
QUEUE_NAMES = ("L2C", "C2L", "C2S", "S2C")
# (module, flag) -> token queue; SPEC §5's table. Flags: pop_prev, pop_next, push_prev, push_next.
_POP = {(LOAD, "pop_next"): C2L, (COMPUTE, "pop_prev"): L2C, (COMPUTE, "pop_next"): S2C,
        (STORE, "pop_prev"): C2S}
_PUSH = {(LOAD, "push_next"): L2C, (COMPUTE, "push_prev"): C2L, (COMPUTE, "push_next"): C2S,
         (STORE, "push_prev"): S2C}
_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")

DmaCheck = Callable[[np.ndarray, int, str], None]


@dataclass
class _Program:
    """Decoded fields of a program, as Python lists indexed by pc (fast scalar access)."""

    n: int
    f: dict[str, list[int]]
    module: list[int]


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
        self._layout = layout(cfg)
        self._elem = {MemType.UOP: cfg.uop_elem_bytes, MemType.WGT: cfg.wgt_elem_bytes,
                      MemType.INP: cfg.inp_elem_bytes, MemType.ACC: cfg.acc_elem_bytes,
                      MemType.OUT: cfg.out_elem_bytes, MemType.ACC_8BIT: cfg.acc8_elem_bytes}
        self._depth = {MemType.UOP: cfg.uop_depth, MemType.WGT: cfg.wgt_depth,
                       MemType.INP: cfg.inp_depth, MemType.ACC: cfg.acc_depth,
                       MemType.OUT: cfg.out_depth, MemType.ACC_8BIT: cfg.acc_depth}

    # -- decoding and decode-time checks ------------------------------------------------------

    def _decode(self, insn_addr: int, insn_count: int) -> _Program:
        nbytes = insn_count * INSN_BYTES
        if self.dma_check is not None:
            self.dma_check(np.array([insn_addr], np.int64), nbytes, "instruction fetch")
        raw = self.dram[insn_addr:insn_addr + nbytes]
        words = np.frombuffer(raw.tobytes(), dtype="<u8")
        lo, hi = words[0::2], words[1::2]
        opcode = (lo & np.uint64(7)).astype(np.int64)
        finish = np.flatnonzero(opcode == Opcode.FINISH)
        n = int(finish[0]) + 1 if finish.size else insn_count  # spec-notes 1
        lo, hi, opcode = lo[:n], hi[:n], opcode[:n]
        lay = self._layout
        f: dict[str, np.ndarray] = {"opcode": opcode}
        for table in (lay.mem, lay.gemm, lay.alu):
            for fld in table:
                key = fld.name if table is not lay.alu or fld.name not in (
                    "src_factor_out", "src_factor_in") else "alu_" + fld.name
                if key not in f:
                    f[key] = extract(lo, hi, fld)
        self._check_decode(f, n)
        module = np.full(n, COMPUTE, np.int64)
        is_load, is_store = opcode == Opcode.LOAD, opcode == Opcode.STORE
        mt = f["memory_type"]
        module[is_load & ((mt == MemType.INP) | (mt == MemType.WGT))] = LOAD
        module[is_store] = STORE
        return _Program(n, {k: v.tolist() for k, v in f.items()}, module.tolist())

    def _check_decode(self, f: dict[str, np.ndarray], n: int) -> None:
        """Raise the first decode-time error in program order (priority: spec-notes 6)."""
        if n == 0:
            return
        op, mt = f["opcode"], f["memory_type"]
        is_load, is_store = op == Opcode.LOAD, op == Opcode.STORE
        is_mem = is_load | is_store
        ys, xs, stride = f["y_size"], f["x_size"], f["x_stride"]
        pads = f["y_pad_0"] + f["y_pad_1"] + f["x_pad_0"] + f["x_pad_1"]
        bad_op = op > Opcode.ALU
        bad_mt = is_mem & ((mt > MemType.ACC_8BIT) | (is_load & (mt == MemType.OUT))
                           | (is_store & (mt != MemType.OUT))
                           | (is_load & (mt == MemType.UOP) & ((ys != 1) | (pads != 0))))
        to_load = is_load & ((mt == MemType.INP) | (mt == MemType.WGT))
        bad_dep = ((to_load & ((f["pop_prev"] | f["push_prev"]) != 0))
                   | (is_store & ((f["pop_next"] | f["push_next"]) != 0)))
        bad_alu = (op == Opcode.ALU) & (f["alu_opcode"] > AluOp.MUL)
        mt_ok = np.clip(mt, 0, MemType.ACC_8BIT)
        depth = np.array([self._depth[MemType(i)] for i in range(6)], np.int64)[mt_ok]
        ebytes = np.array([self._elem[MemType(i)] for i in range(6)], np.int64)[mt_ok]
        load_span = ((f["y_pad_0"] + ys + f["y_pad_1"]) * (f["x_pad_0"] + xs + f["x_pad_1"]))
        span = np.where(is_store, ys * xs, load_span)
        bad_sram = is_mem & (xs > 0) & (f["sram_base"] + span > depth)
        dram_end = (f["dram_base"] + np.maximum(ys - 1, 0) * stride + xs) * ebytes
        bad_dram = is_mem & (xs > 0) & (ys > 0) & (dram_end > 1 << 32)
        checks = [(bad_op, ErrorCode.BAD_OPCODE), (bad_mt, ErrorCode.BAD_MEM_TYPE),
                  (bad_dep, ErrorCode.BAD_DEP_FLAG), (bad_alu, ErrorCode.BAD_ALU_OPCODE),
                  (bad_sram, ErrorCode.SRAM_RANGE), (bad_dram, ErrorCode.DRAM_RANGE)]
        first = n
        for mask, _ in checks:
            hits = np.flatnonzero(mask)
            if hits.size:
                first = min(first, int(hits[0]))
        if first == n:
            return
        for mask, code in checks:
            if mask[first]:
                raise SimError(self._describe_decode(code, first, f), code=int(code), pc=first)

    def _describe_decode(self, code: ErrorCode, pc: int, f: dict[str, np.ndarray]) -> str:
        op = int(f["opcode"][pc])
        name = Opcode(op).name if op <= Opcode.ALU else f"opcode {op}"
        detail = ""
        if code == ErrorCode.BAD_MEM_TYPE:
            detail = f": memory_type {int(f['memory_type'][pc])} is not allowed for {name}"
            if op == Opcode.LOAD and f["memory_type"][pc] == MemType.UOP:
                detail += " (UOP loads need y_size 1 and no padding)"
        elif code == ErrorCode.SRAM_RANGE:
            detail = f": sram_base {int(f['sram_base'][pc])} + region exceeds the buffer"
        elif code == ErrorCode.BAD_DEP_FLAG:
            detail = ": a dependency flag that must be 0 for its module is set"
        elif code == ErrorCode.BAD_ALU_OPCODE:
            detail = f": alu_opcode {int(f['alu_opcode'][pc])}"
        return f"error {int(code)} ({ERROR_TEXT[code]}) at instruction {pc} ({name}){detail}"

    # -- the scheduler ------------------------------------------------------------------------

    def run(self, insn_addr: int, insn_count: int) -> dict[str, int]:
        """Execute a program; return the architectural event counters (regs.COUNTERS names)."""
        prog = self._decode(insn_addr, insn_count)
        self.prog = prog
        cfg = self.cfg
        self.counters = {k: 0 for k in (
            "gemm_steps", "alu_steps", "dram_read_bytes", "dram_write_bytes", "insns_retired",
            "gemm_reset_steps", "load_insns", "compute_insns", "store_insns")}
        self.bytes_by_type = {m.name.lower(): 0 for m in MemType}
        queues = [[pc for pc in range(prog.n) if prog.module[pc] == m] for m in range(3)]
        self.local_pcs = queues  # local sequence number k (1-based) -> pc: queues[m][k-1]
        tokens: list[deque[np.ndarray]] = [deque() for _ in range(4)]
        vc = [np.zeros(3, np.int64) for _ in range(3)]
        self.shadow = SramShadow(cfg)
        self.dram_races = DramRaceTracker()
        ptr = [0, 0, 0]
        cap = cfg.dep_queue_depth
        f = prog.f
        execute = (self._exec_load_module, self._exec_compute, self._exec_store)
        remaining = prog.n
        while remaining:
            progressed = False
            for m in (LOAD, COMPUTE, STORE):
                q = queues[m]
                while ptr[m] < len(q):
                    pc = q[ptr[m]]
                    pops = [_POP[m, fl] for fl in ("pop_prev", "pop_next")
                            if f[fl][pc] and (m, fl) in _POP]
                    pushes = [_PUSH[m, fl] for fl in ("push_prev", "push_next")
                              if f[fl][pc] and (m, fl) in _PUSH]
                    if any(not tokens[t] for t in pops) or any(len(tokens[t]) >= cap
                                                             for t in pushes):
                        break
                    for t in pops:
                        np.maximum(vc[m], tokens[t].popleft(), out=vc[m])
                    ptr[m] += 1
                    vc[m][m] = ptr[m]
                    execute[m](pc, ptr[m], vc[m])
                    for t in pushes:
                        tokens[t].append(vc[m].copy())
                    self.counters["insns_retired"] += 1
                    self.counters[MODULE_NAMES[m] + "_insns"] += 1
                    remaining -= 1
                    progressed = True
            if not progressed:
                raise SimError(self._deadlock_message(queues, ptr, tokens, cap))
        return dict(self.counters)

    def _deadlock_message(self, queues, ptr, tokens, cap) -> str:
        f = self.prog.f
        waits = []
        for m in range(3):
            if ptr[m] >= len(queues[m]):
                continue
            pc = queues[m][ptr[m]]
            for fl in ("pop_prev", "pop_next"):
                if f[fl][pc] and (m, fl) in _POP and not tokens[_POP[m, fl]]:
                    waits.append(f"{MODULE_NAMES[m]} instruction {pc} waits to pop "
                                 f"{QUEUE_NAMES[_POP[m, fl]]}, which is empty")
            for fl in ("push_prev", "push_next"):
                if f[fl][pc] and (m, fl) in _PUSH and len(tokens[_PUSH[m, fl]]) >= cap:
                    waits.append(f"{MODULE_NAMES[m]} instruction {pc} waits to push "
                                 f"{QUEUE_NAMES[_PUSH[m, fl]]}, which is full ({cap} tokens)")
        return "dependency deadlock: " + "; ".join(waits)

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
        op = self.prog.f["opcode"][pc]
        if op == Opcode.LOAD:
            self._load(pc, COMPUTE, seq, vc)
        elif op == Opcode.GEMM:
            self._gemm(pc, seq, vc)
        elif op == Opcode.ALU:
            self._alu(pc, seq, vc)
        # FINISH: retires once every earlier instruction has (the scheduler drains all modules).

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
