"""Differential testing of SPEC §6 errors, deadlocks and recovery: ``verilator`` vs ``fsim``.

Each error program has exactly one erroring instruction (after a few good ones, followed by more
instructions); both kinds must report the same code and pc, and afterwards the core must accept
the next start and run a good program exactly like fsim.
"""

from __future__ import annotations

import numpy as np
import pytest
from rtlutil import field, free_all, memory_diff, open_pair, patch, run, words_to_bytes

from tessera.config import Config
from tessera.errors import DeviceError
from tessera.isa import (
    AluInsn,
    AluOp,
    FinishInsn,
    GemmInsn,
    MemInsn,
    MemType,
    Opcode,
    Uop,
    encode,
    encode_uop,
)
from tessera.regs import ErrorCode, Reg
from tessera.sim.progen import random_program

TINY = Config.preset("tiny")


def _setup(cfg: Config, dev):
    """Data and micro-op buffers every error program uses; returns (data, uops) buffers."""
    data = dev.alloc(4 * 4096)
    rng = np.random.default_rng(7)
    dev.write(data.addr, rng.integers(0, 256, data.size, dtype=np.uint8))
    uops = dev.alloc(4096)
    words = [encode_uop(Uop(1, 1, 1), cfg), encode_uop(Uop(2, 0, 0), cfg)]
    dev.write(uops.addr, b"".join(w.to_bytes(4, "little") for w in words))
    return data, uops


def _program(cfg: Config, case: str, data_addr: int, uop_addr: int) -> tuple[list[int], int]:
    """(instruction words, pc of the erroring instruction or -1) for one case."""
    c = cfg
    enc = lambda insn: encode(insn, c)  # noqa: E731
    inp_base = data_addr // c.inp_elem_bytes
    out_base = (data_addr + 2 * 4096) // c.out_elem_bytes
    good = [
        enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, sram_base=0,
                    dram_base=uop_addr // 4, y_size=1, x_size=2, x_stride=2)),
        enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, sram_base=0,
                    dram_base=inp_base, y_size=2, x_size=2, x_stride=3)),
        enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.WGT, sram_base=0,
                    dram_base=data_addr // c.wgt_elem_bytes, y_size=1, x_size=2, x_stride=2,
                    push_next=1)),
        enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC, sram_base=0,
                    dram_base=data_addr // c.acc_elem_bytes, y_size=1, x_size=4, x_stride=4)),
    ]
    load_inp = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, sram_base=8,
                       dram_base=inp_base, y_size=1, x_size=1, x_stride=1)
    store = MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, sram_base=0,
                    dram_base=out_base, y_size=1, x_size=2, x_stride=2)
    gemm = GemmInsn(uop_bgn=0, uop_end=1, iter_out=2, iter_in=1)
    alu = AluInsn(uop_bgn=0, uop_end=1, iter_out=2, iter_in=1, alu_opcode=AluOp.ADD)
    mem_f = lambda n: field(c, "mem", n)  # noqa: E731
    bad: int
    if case == "bad_opcode":
        bad = patch(enc(FinishInsn()), field(c, "finish", "opcode"), 6)
    elif case == "load_out":
        bad = patch(enc(load_inp), mem_f("memory_type"), MemType.OUT)
    elif case == "store_inp":
        bad = patch(enc(store), mem_f("memory_type"), MemType.INP)
    elif case == "mem_type_7":
        bad = patch(enc(load_inp), mem_f("memory_type"), 7)
    elif case == "uop_2d":
        bad = enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=uop_addr // 4,
                          y_size=2, x_size=1, x_stride=1))
    elif case == "uop_padded":
        bad = enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=uop_addr // 4,
                          y_size=1, x_size=1, x_stride=1, x_pad_1=1))
    elif case == "load_pop_prev":
        bad = enc(MemInsn(**{**load_inp.__dict__, "pop_prev": 1}))
    elif case == "store_push_next":
        bad = enc(MemInsn(**{**store.__dict__, "push_next": 1}))
    elif case == "alu_opcode_6":
        bad = patch(enc(alu), field(c, "alu", "alu_opcode"), 6)
    elif case == "load_sram_range":
        bad = enc(MemInsn(**{**load_inp.__dict__, "sram_base": c.inp_depth - 2, "x_size": 1,
                             "x_pad_0": 1, "y_pad_1": 1}))
    elif case == "acc8_sram_range":
        bad = enc(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT,
                          sram_base=c.acc_depth - 1, dram_base=data_addr // c.acc8_elem_bytes,
                          y_size=1, x_size=2, x_stride=2))
    elif case == "store_sram_range":
        bad = enc(MemInsn(**{**store.__dict__, "sram_base": c.out_depth - 3, "y_size": 2}))
    elif case == "dram_range":
        bad = enc(MemInsn(**{**load_inp.__dict__,
                             "dram_base": (1 << 32) // c.inp_elem_bytes - 1, "x_size": 2}))
    elif case == "gemm_acc_range":
        bad = enc(GemmInsn(**{**gemm.__dict__, "dst_factor_out": c.acc_depth - 1}))
    elif case == "gemm_inp_range":
        bad = enc(GemmInsn(**{**gemm.__dict__, "src_factor_out": c.inp_depth - 1}))
    elif case == "gemm_wgt_range":
        bad = enc(GemmInsn(**{**gemm.__dict__, "wgt_factor_in": c.wgt_depth - 1, "iter_in": 2,
                              "iter_out": 1}))
    elif case == "gemm_uop_range":
        bad = enc(GemmInsn(**{**gemm.__dict__, "uop_bgn": c.uop_depth - 1,
                              "uop_end": c.uop_depth + 1}))
    elif case == "alu_dst_range":
        bad = enc(AluInsn(**{**alu.__dict__, "dst_factor_out": c.acc_depth - 1}))
    elif case == "alu_src_range":
        bad = enc(AluInsn(**{**alu.__dict__, "src_factor_out": c.acc_depth - 1}))
    # Legal corner cases that must *not* error:
    elif case == "gemm_reset_ignores_operands":
        bad = enc(GemmInsn(**{**gemm.__dict__, "reset": 1, "src_factor_out": c.inp_depth - 1,
                              "wgt_factor_out": c.wgt_depth - 1}))
    elif case == "alu_imm_ignores_src":
        bad = enc(AluInsn(**{**alu.__dict__, "use_imm": 1, "imm": -3,
                             "src_factor_out": c.acc_depth - 1}))
    elif case == "empty_loop_checks_nothing":
        bad = enc(GemmInsn(**{**gemm.__dict__, "iter_out": 0, "dst_factor_out": c.acc_depth - 1}))
    elif case == "zero_size_load_checks_no_range":
        bad = enc(MemInsn(**{**load_inp.__dict__, "sram_base": c.inp_depth + 5, "x_size": 0}))
    else:
        raise KeyError(case)
    error_cases = set(EXPECTED)
    tail = [enc(GemmInsn(uop_bgn=0, uop_end=2, iter_out=1, iter_in=1, pop_prev=1, push_next=1)),
            enc(MemInsn(**{**store.__dict__, "pop_prev": 1})), enc(FinishInsn())]
    words = good + [bad] + tail
    return words, (len(good) if case in error_cases else -1)


EXPECTED = {
    "bad_opcode": ErrorCode.BAD_OPCODE,
    "load_out": ErrorCode.BAD_MEM_TYPE,
    "store_inp": ErrorCode.BAD_MEM_TYPE,
    "mem_type_7": ErrorCode.BAD_MEM_TYPE,
    "uop_2d": ErrorCode.BAD_MEM_TYPE,
    "uop_padded": ErrorCode.BAD_MEM_TYPE,
    "load_pop_prev": ErrorCode.BAD_DEP_FLAG,
    "store_push_next": ErrorCode.BAD_DEP_FLAG,
    "alu_opcode_6": ErrorCode.BAD_ALU_OPCODE,
    "load_sram_range": ErrorCode.SRAM_RANGE,
    "acc8_sram_range": ErrorCode.SRAM_RANGE,
    "store_sram_range": ErrorCode.SRAM_RANGE,
    "dram_range": ErrorCode.DRAM_RANGE,
    "gemm_acc_range": ErrorCode.SRAM_RANGE,
    "gemm_inp_range": ErrorCode.SRAM_RANGE,
    "gemm_wgt_range": ErrorCode.SRAM_RANGE,
    "gemm_uop_range": ErrorCode.SRAM_RANGE,
    "alu_dst_range": ErrorCode.SRAM_RANGE,
    "alu_src_range": ErrorCode.SRAM_RANGE,
}
LEGAL = ["gemm_reset_ignores_operands", "alu_imm_ignores_src", "empty_loop_checks_nothing",
         "zero_size_load_checks_no_range"]


def _good_program_after(cfg: Config, vdev, fdev, seed: int) -> None:
    free_all(vdev)
    free_all(fdev)
    progs = [random_program(cfg, np.random.default_rng(seed), rounds=4) for _ in range(2)]
    progs[0].place(vdev)
    progs[1].place(fdev)
    got = run(vdev, progs[0].insn_addr, progs[0].insn_count, 2_000_000)
    want = run(fdev, progs[1].insn_addr, progs[1].insn_count, None)
    assert want.error is None and got.error is None, (got.error, want.error)
    assert not memory_diff(vdev, fdev)
    assert got.counters == want.counters


@pytest.fixture(scope="module")
def pair():
    vdev, fdev = open_pair(TINY)
    yield vdev, fdev
    vdev.close()
    fdev.close()


@pytest.mark.parametrize("case", sorted(EXPECTED) + LEGAL)
def test_error_program(case, pair):
    vdev, fdev = pair
    free_all(vdev)
    free_all(fdev)
    outcomes = []
    for dev in (vdev, fdev):
        data, uops = _setup(TINY, dev)
        words, bad_pc = _program(TINY, case, data.addr, uops.addr)
        code = dev.alloc(len(words) * 16)
        dev.write(code.addr, words_to_bytes(words))
        outcomes.append(run(dev, code.addr, len(words), 200_000))
    got, want = outcomes
    if case in EXPECTED:
        assert want.error is not None and (want.error.code, want.error.pc) == (
            EXPECTED[case], bad_pc), f"fsim: {want.error}"
        assert got.error is not None, "verilator ran an erroring program without error"
        assert (got.error.code, got.error.pc) == (want.error.code, want.error.pc), \
            f"verilator: {got.error}; fsim: {want.error}"
        assert vdev.read_reg(Reg.ERROR_CODE) == EXPECTED[case]
        assert vdev.read_reg(Reg.ERROR_PC) == bad_pc
    else:
        assert want.error is None, f"fsim: {want.error}"
        assert got.error is None, f"verilator: {got.error}"
        assert not memory_diff(vdev, fdev)
        assert got.counters == want.counters
    # The core accepts the next start and runs a good program correctly.
    _good_program_after(TINY, vdev, fdev, seed=hash(case) % 1000)


def test_deadlock_is_error_7_and_core_recovers(pair):
    vdev, fdev = pair
    free_all(vdev)
    free_all(fdev)
    for dev in (vdev, fdev):
        data, uops = _setup(TINY, dev)
        words, _ = _program(TINY, "gemm_reset_ignores_operands", data.addr, uops.addr)
        # Compute waits for a load token that no load instruction will ever push.
        words.insert(2, encode(GemmInsn(uop_bgn=0, uop_end=1, pop_prev=1), TINY))
        code = dev.alloc(len(words) * 16)
        dev.write(code.addr, words_to_bytes(words))
        # SPEC §6 code 7, the lowest blocked pc: compute's GEMM 6 (store 7 waits too)
        with pytest.raises(DeviceError, match="error 7") as info:
            dev.run(code.addr, len(words), timeout_cycles=20_000)
        assert (info.value.code, info.value.pc) == (7, 6), str(info.value)
        assert (dev.read_reg(Reg.ERROR_CODE), dev.read_reg(Reg.ERROR_PC)) == (7, 6)
    _good_program_after(TINY, vdev, fdev, seed=77)


def test_sram_persists_across_runs(pair):
    """Run 1 loads inp/wgt/uop; run 2 computes from them without loading (SPEC §4)."""
    vdev, fdev = pair
    free_all(vdev)
    free_all(fdev)
    c = TINY
    for dev in (vdev, fdev):
        data, uops = _setup(c, dev)
        words, _ = _program(c, "gemm_reset_ignores_operands", data.addr, uops.addr)
        first = dev.alloc(4096)
        dev.write(first.addr, words_to_bytes(words[:4] + [encode(FinishInsn(), c)]))
        dev.run(first.addr, 5)
        out = dev.alloc(4096)
        second = [
            GemmInsn(uop_bgn=0, uop_end=2, iter_out=3, iter_in=2, dst_factor_out=2,
                     dst_factor_in=1, src_factor_out=1, wgt_factor_in=1, push_next=1),
            MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, sram_base=0,
                    dram_base=out.addr // c.out_elem_bytes, y_size=2, x_size=4, x_stride=5,
                    pop_prev=1),
            FinishInsn(),
        ]
        code = dev.alloc(4096)
        dev.write(code.addr, words_to_bytes([encode(i, c) for i in second]))
        dev.run(code.addr, len(second))
    assert not memory_diff(vdev, fdev)
