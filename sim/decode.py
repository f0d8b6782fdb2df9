"""Decoding an instruction stream for the functional simulator, with the decode-time checks.

:class:`DecodedProgram` is the simulator's view of a program before anything executes: every
field of every dispatched instruction, the module each instruction routes to, and (once
:func:`tessera.sim.tokens.schedule` has run) the token-level schedule. Timing depends only on
the instructions, so this structure is also what the cycle model consumes
(:func:`tessera.sim.timing.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import INSN_BYTES, AluOp, MemType, Opcode, depth, elem_bytes, extract, layout
from tessera.regs import ERROR_TEXT, ErrorCode
from tessera.sim.timing import freeze

__all__ = ["DecodedProgram", "decode_program", "LOAD", "COMPUTE", "STORE", "MODULE_NAMES"]

LOAD, COMPUTE, STORE = 0, 1, 2
MODULE_NAMES = ("load", "compute", "store")


@dataclass
class DecodedProgram:
    """The dispatched part of a program (spec-notes 1: up to and including the first FINISH).

    - ``n``: number of dispatched instructions; pcs are ``0 .. n-1``.
    - ``f``: decoded fields by name, each a Python list indexed by pc (fast scalar access).
      Names are the ISA layout's field names (``opcode``, ``pop_prev`` … ``push_next``,
      ``memory_type``, ``sram_base``, ``dram_base``, ``y_size``, ``x_size``, ``x_stride``,
      ``y_pad_0``, ``y_pad_1``, ``x_pad_0``, ``x_pad_1``, ``reset``, ``uop_bgn``, ``uop_end``,
      ``iter_out``, ``iter_in``, ``dst_factor_out``, ``dst_factor_in``, ``src_factor_out``,
      ``src_factor_in``, ``wgt_factor_out``, ``wgt_factor_in``, ``alu_opcode``, ``use_imm``,
      ``imm``), except that the ALU's source factors are ``alu_src_factor_out`` /
      ``alu_src_factor_in``. Every field is decoded for every instruction whatever its opcode;
      only the fields of its own format are meaningful.
    - ``arrays``: the same fields as int64 numpy arrays (for vectorised consumers).
    - ``module``: ``LOAD``, ``COMPUTE`` or ``STORE`` per pc (SPEC §5 routing).
    - ``local_pcs``: per module, its pcs in program order (its command queue).
    - ``schedule``: the token-level schedule, set by :func:`tessera.sim.tokens.schedule`.

    ``dma_memo``, ``load_memo``, ``dma_ok`` and ``plan_memo`` are the functional simulator's
    private per-pc memos; ``digest`` is the cycle model's cache digest of ``arrays`` (which
    are read-only), set on the first prediction (:class:`tessera.sim.timing.Program`).
    """

    n: int
    f: dict[str, list[int]]
    arrays: dict[str, np.ndarray]
    module: list[int]
    local_pcs: tuple[list[int], list[int], list[int]]
    schedule: object = field(default=None, repr=False)
    dma_memo: dict = field(default_factory=dict, repr=False)
    plan_memo: dict = field(default_factory=dict, repr=False)
    load_memo: dict = field(default_factory=dict, repr=False)
    dma_ok: dict = field(default_factory=dict, repr=False)
    digest: bytes | None = field(default=None, repr=False)


def decode_program(raw: np.ndarray, cfg: Config) -> DecodedProgram:
    """Decode ``raw`` (the program's bytes, a multiple of 16) and make the decode-time checks.

    Raises :class:`SimError` with the SPEC §6 code and pc of the first decode error in program
    order (spec-notes 6). Instructions after the first FINISH are not decoded (spec-notes 1).
    """
    assert raw.size % INSN_BYTES == 0
    words = np.frombuffer(raw.tobytes(), dtype="<u8")
    lo, hi = words[0::2], words[1::2]
    opcode = (lo & np.uint64(7)).astype(np.int64)
    finish = np.flatnonzero(opcode == Opcode.FINISH)
    n = int(finish[0]) + 1 if finish.size else lo.size  # spec-notes 1
    lo, hi, opcode = lo[:n], hi[:n], opcode[:n]
    lay = layout(cfg)
    f: dict[str, np.ndarray] = {"opcode": opcode}
    for table in (lay.mem, lay.gemm, lay.alu):
        for fld in table:
            key = fld.name if table is not lay.alu or fld.name not in (
                "src_factor_out", "src_factor_in") else "alu_" + fld.name
            if key not in f:
                f[key] = extract(lo, hi, fld)
    _check_decode(f, n, cfg)
    module = np.full(n, COMPUTE, np.int64)
    is_load, is_store = opcode == Opcode.LOAD, opcode == Opcode.STORE
    mt = f["memory_type"]
    module[is_load & ((mt == MemType.INP) | (mt == MemType.WGT))] = LOAD
    module[is_store] = STORE
    local = tuple(np.flatnonzero(module == m).tolist() for m in (LOAD, COMPUTE, STORE))
    freeze(f)
    return DecodedProgram(n, {k: v.tolist() for k, v in f.items()}, f, module.tolist(), local)


def _check_decode(f: dict[str, np.ndarray], n: int, cfg: Config) -> None:
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
    depths = np.array([depth(cfg, i) for i in range(6)], np.int64)[mt_ok]
    ebytes = np.array([elem_bytes(cfg, i) for i in range(6)], np.int64)[mt_ok]
    load_span = (f["y_pad_0"] + ys + f["y_pad_1"]) * (f["x_pad_0"] + xs + f["x_pad_1"])
    span = np.where(is_store, ys * xs, load_span)
    bad_sram = is_mem & (xs > 0) & (f["sram_base"] + span > depths)
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
            raise SimError(_describe_decode(code, first, f), code=int(code), pc=first)


def _describe_decode(code: ErrorCode, pc: int, f: dict[str, np.ndarray]) -> str:
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
    elif code == ErrorCode.DRAM_RANGE:
        detail = ": its DRAM byte range extends beyond 2**32"
    return f"error {int(code)} ({ERROR_TEXT[code]}) at instruction {pc} ({name}){detail}"
