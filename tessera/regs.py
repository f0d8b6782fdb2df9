"""Control registers and event counters (SPEC §6), shared by every device kind and the RTL."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Reg", "ErrorCode", "COUNTERS", "COUNTER_BASE", "counter_offset", "ERROR_TEXT"]


class Reg(IntEnum):
    CONTROL = 0x00
    INSN_COUNT = 0x04
    INSN_ADDR = 0x08
    ERROR_CODE = 0x0C
    ERROR_PC = 0x10
    CYCLES_LO = 0x14
    CYCLES_HI = 0x18


CONTROL_START = 1 << 0  # write
STATUS_BUSY = 1 << 0  # read
STATUS_DONE = 1 << 1
STATUS_ERROR = 1 << 2


class ErrorCode(IntEnum):
    NONE = 0
    BAD_OPCODE = 1
    BAD_MEM_TYPE = 2
    SRAM_RANGE = 3
    BAD_DEP_FLAG = 4
    BAD_ALU_OPCODE = 5
    # [ext] a LOAD/STORE whose DRAM byte range does not fit the 32-bit address space; checked at
    # decode, after every SPEC code (the SPEC lists no code for it, and a silent wrap is worse).
    DRAM_RANGE = 6
    # SPEC v1.1 §6: every module with work left is blocked on a token queue (spec-notes).
    TOKEN_DEADLOCK = 7


ERROR_TEXT = {
    ErrorCode.BAD_OPCODE: "bad opcode",
    ErrorCode.BAD_MEM_TYPE: "bad memory type",
    ErrorCode.SRAM_RANGE: "SRAM index out of range",
    ErrorCode.BAD_DEP_FLAG: "illegal dependency flag",
    ErrorCode.BAD_ALU_OPCODE: "bad ALU opcode",
    ErrorCode.DRAM_RANGE: "DRAM address beyond the 32-bit address space",
    ErrorCode.TOKEN_DEADLOCK: "token deadlock",
}

COUNTER_BASE = 0x20

# Event counters, in register order from COUNTER_BASE (4 bytes each). ``timing`` counters depend
# on the pipeline and are only produced by kinds with timing (verilator); the others count
# architectural events and must agree between fsim and RTL.
COUNTERS: tuple[tuple[str, bool, str], ...] = (
    ("gemm_steps", False, "GEMM micro-op steps that did MACs (reset steps excluded)"),
    ("alu_steps", False, "ALU micro-op steps"),
    ("load_busy_cycles", True, "cycles the load module was executing an instruction"),
    ("store_busy_cycles", True, "cycles the store module was executing an instruction"),
    ("compute_wait_cycles", True, "cycles compute waited on a dependency token"),
    ("dram_read_bytes", False, "payload bytes read by LOADs (instruction fetch excluded)"),
    ("dram_write_bytes", False, "payload bytes written by STOREs"),
    ("insns_retired", False, "instructions retired by the three modules (FINISH included)"),
    ("gemm_reset_steps", False, "GEMM micro-op steps with reset"),
    ("load_insns", False, "instructions retired by the load module"),
    ("compute_insns", False, "instructions retired by the compute module"),
    ("store_insns", False, "instructions retired by the store module"),
)


def counter_offset(name: str) -> int:
    for i, (n, _, _) in enumerate(COUNTERS):
        if n == name:
            return COUNTER_BASE + 4 * i
    raise KeyError(f"no counter named {name!r}")
