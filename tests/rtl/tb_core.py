"""cocotb tests of the whole core (launched by test_cocotb_core.py): random well-synchronised
programs from progen, memory served by AxiRam, registers driven by AxiLiteMaster, every burst
monitored, results checked against the functional simulator."""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np

from tessera.config import Config
from tessera.isa import (
    INSN_BYTES,
    AluInsn,
    AluOp,
    FinishInsn,
    MemInsn,
    MemType,
    Opcode,
    Uop,
    encode,
    encode_uop,
)
from tessera.sim.cocotb_tb import CoreTb, FsimModel, check_against_fsim
from tessera.sim.progen import Segment, build_program, random_program


def _cfg() -> Config:
    return Config.from_dict(json.loads(os.environ["TESSERA_CONFIG"]))


@cocotb.test()
async def random_programs_match_fsim(dut):
    cfg = _cfg()
    tb = CoreTb(dut, cfg)
    model = FsimModel(cfg, tb.ram.size)
    await tb.reset()
    for seed in [int(s) for s in os.environ["TESSERA_SEEDS"].split(",")]:
        prog = random_program(cfg, np.random.default_rng(seed), rounds=4)
        tb.load_image(prog.memory_image())
        result = await tb.run(prog.insn_addr, prog.insn_count)
        check_against_fsim(tb, model, prog, result)
        assert result.cycles > 0
        dut._log.info("seed %d: %d instructions, %d cycles, %d bursts", seed, prog.insn_count,
                      result.cycles, len(tb.monitor.bursts))
    tb.monitor.check()
    assert any(b.write for b in tb.monitor.bursts) and any(not b.write for b in
                                                           tb.monitor.bursts)


@cocotb.test()
async def error_then_recovery(dut):
    """A bad opcode sets error/ERROR_CODE/ERROR_PC; the next start runs a good program."""
    cfg = _cfg()
    tb = CoreTb(dut, cfg)
    model = FsimModel(cfg, tb.ram.size)
    await tb.reset()
    prog = random_program(cfg, np.random.default_rng(99), rounds=2)
    tb.load_image(prog.memory_image())
    bad_addr = prog.insn_addr + 4096 * 4
    sync = encode(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0), cfg)
    words = [sync.to_bytes(INSN_BYTES, "little")] * 2 + [(7).to_bytes(INSN_BYTES, "little")]
    tb.ram.write(bad_addr, b"".join(words))
    result = await tb.run(bad_addr, 3)
    assert result.error and (result.error_code, result.error_pc) == (1, 2), (
        result.status, result.error_code, result.error_pc)
    assert dut.irq.value == 1
    result = await tb.run(prog.insn_addr, prog.insn_count)
    check_against_fsim(tb, model, prog, result)
    tb.monitor.check()


@cocotb.test()
async def rows_across_4k_pages(dut):
    """ACC_8BIT load and STORE rows that straddle 4 KiB pages: the master must split its bursts
    (the monitor checks every burst) and the data must still match fsim."""
    cfg = _cfg()
    tb = CoreTb(dut, cfg)
    model = FsimModel(cfg, tb.ram.size)
    await tb.reset()
    eb = cfg.acc8_elem_bytes
    x = min(60, cfg.acc_depth // 2)
    stride = (4096 + 40 * eb) // eb
    rng = np.random.default_rng(5)
    segs = [Segment("src", 3 * 4096, rng.integers(0, 256, 3 * 4096, np.uint8).tobytes()),
            Segment("uop", 4096, encode_uop(Uop(0, 0, 0), cfg).to_bytes(4, "little")),
            Segment("dst", 3 * 4096, output=True)]

    def insns(s):
        src0 = (s["src"].addr + 4096 - 24 * eb) // eb
        dst0 = (s["dst"].addr + 4096 - 8 * eb) // eb
        return [
            MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=s["uop"].addr // 4,
                    y_size=1, x_size=1, x_stride=1),
            MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT, dram_base=src0,
                    y_size=2, x_size=x, x_stride=stride),
            AluInsn(uop_bgn=0, uop_end=1, iter_out=2 * x, iter_in=1, dst_factor_out=1,
                    src_factor_out=1, alu_opcode=AluOp.ADD, use_imm=1, imm=3, push_next=1),
            MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, dram_base=dst0, y_size=2,
                    x_size=x, x_stride=stride, pop_prev=1),
            FinishInsn(),
        ]

    prog = build_program(cfg, segs, insns)
    tb.load_image(prog.memory_image())
    result = await tb.run(prog.insn_addr, prog.insn_count)
    check_against_fsim(tb, model, prog, result)
    tb.monitor.check()
    pages = {b.addr // 4096 for b in tb.monitor.bursts if b.write}
    assert len(pages) >= 2, "the STORE rows should have touched more than one page"
