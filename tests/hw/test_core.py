"""The whole core (Amaranth simulator, tiny config) against the functional simulator."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from amsim import AmaranthDevice, AxiDram

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.hw.core import TesseraCore
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
    layout,
    to_bytes,
)
from tessera.regs import COUNTERS, STATUS_DONE, STATUS_ERROR, Reg
from tessera.sim.progen import random_program

CFG = Config.preset("tiny")
ARCH = [name for name, timing, _ in COUNTERS if not timing]


def _run_both(insns, data: dict[int, bytes], out: tuple[int, int], stall: float = 0.0,
              seed: int = 0):
    """Run on fsim and on the RTL with the same memory image; return both results."""
    results = []
    for dev in (open_device("fsim", CFG, mem_bytes=1 << 20),
                AmaranthDevice(CFG, stall=stall, seed=seed)):
        for addr, blob in sorted(data.items()):
            buf = dev.alloc(len(blob))
            assert buf.addr == addr
            dev.write(addr, blob)
        code = b"".join(i.to_bytes(16, "little") if isinstance(i, int) else to_bytes([i], CFG)
                        for i in insns)
        ibuf = dev.alloc(len(code))
        dev.write(ibuf.addr, code)
        try:
            stats = dev.run(ibuf.addr, len(insns))
            results.append((None, dev.read(*out), stats))
        except DeviceError as exc:
            results.append(((exc.code, exc.pc), None, None))
    return results


@pytest.mark.parametrize("seed,stall", [(11, 0.0), (12, 0.3), (13, 0.5)])
def test_random_programs_match_fsim(seed: int, stall: float) -> None:
    rng = np.random.default_rng(seed)
    progs = [random_program(CFG, np.random.default_rng(seed), rounds=5) for _ in range(2)]
    ref = open_device("fsim", CFG)
    progs[0].place(ref)
    ref_stats = ref.run(progs[0].insn_addr, progs[0].insn_count)
    dev = AmaranthDevice(CFG, stall=stall, seed=int(rng.integers(1 << 30)))
    progs[1].place(dev)
    stats = dev.run(progs[1].insn_addr, progs[1].insn_count)
    assert progs[1].read_outputs(dev) == progs[0].read_outputs(ref)
    assert {k: stats.counters[k] for k in ARCH} == {k: ref_stats.counters[k] for k in ARCH}
    assert stats.cycles > 0
    # no burst may cross 4 KiB (AxiDram records violations and the run would have failed)
    assert dev.dram.read_bursts and dev.dram.write_bursts


def _gemm_program(reset_first: bool = True):
    """LOAD UOP/INP/WGT, GEMM whose micro-ops hit one accumulator row back to back, ALU ops on
    that row (immediate SHR/MUL and accumulator ADD), STORE, FINISH."""
    bi, bo = CFG.block_in, CFG.block_out
    rng = np.random.default_rng(5)
    inp = rng.integers(-128, 128, (8, bi), dtype=np.int8)
    wgt = rng.integers(-128, 128, (8, bo, bi), dtype=np.int8)
    uops = [Uop(0, k, k) for k in range(8)] + [Uop(1, 2, 3), Uop(1, 1, 1), Uop(0, 0, 0)]
    uop_bytes = b"".join(encode_uop(u, CFG).to_bytes(4, "little") for u in uops)
    uaddr, iaddr, waddr, oaddr = 0x1000, 0x2000, 0x3000, 0x4000
    L, S = Opcode.LOAD, Opcode.STORE
    insns = [
        MemInsn(opcode=L, memory_type=MemType.UOP, sram_base=0, dram_base=uaddr // 4,
                y_size=1, x_size=len(uops), x_stride=len(uops)),
        MemInsn(opcode=L, memory_type=MemType.INP, sram_base=0,
                dram_base=iaddr // CFG.inp_elem_bytes, y_size=1, x_size=8, x_stride=8),
        MemInsn(opcode=L, memory_type=MemType.WGT, sram_base=0,
                dram_base=waddr // CFG.wgt_elem_bytes, y_size=1, x_size=8, x_stride=8,
                push_next=1),
        GemmInsn(reset=1, uop_bgn=8, uop_end=11, pop_prev=1),
        GemmInsn(uop_bgn=0, uop_end=8, iter_out=2, iter_in=1),
        GemmInsn(uop_bgn=8, uop_end=11, iter_out=1, iter_in=3),
        AluInsn(alu_opcode=AluOp.SHR, use_imm=1, imm=-3, uop_bgn=8, uop_end=10),
        AluInsn(alu_opcode=AluOp.ADD, uop_bgn=8, uop_end=11, iter_in=2),
        AluInsn(alu_opcode=AluOp.MUL, use_imm=1, imm=-30001, uop_bgn=9, uop_end=10),
        AluInsn(alu_opcode=AluOp.SHR, use_imm=1, imm=40, uop_bgn=10, uop_end=11, push_next=1),
        MemInsn(opcode=S, memory_type=MemType.OUT, sram_base=0,
                dram_base=oaddr // CFG.out_elem_bytes, y_size=2, x_size=1, x_stride=3,
                pop_prev=1),
        FinishInsn(),
    ]
    if not reset_first:
        insns = insns[:3] + insns[4:]
    data = {uaddr: uop_bytes, iaddr: inp.tobytes(), waddr: wgt.tobytes()}
    return insns, data, (oaddr, 3 * CFG.out_elem_bytes * 2)


def test_gemm_alu_store_back_to_back_hazards() -> None:
    insns, data, out = _gemm_program()
    (e0, ref, ref_stats), (e1, got, stats) = _run_both(insns, data, out)
    assert e0 is None and e1 is None
    assert got == ref
    assert any(got)  # the program really computed something
    assert stats.counters["gemm_steps"] == ref_stats.counters["gemm_steps"] == 16 + 9
    assert stats.counters["alu_steps"] == ref_stats.counters["alu_steps"]


def test_gemm_against_numpy() -> None:
    """Hand-checked: acc[k] = 2 * wgt[k] @ inp[k] after a reset, out = its low 8 bits."""
    bi, bo, n = CFG.block_in, CFG.block_out, 4
    rng = np.random.default_rng(9)
    inp = rng.integers(-128, 128, (n, bi), dtype=np.int8)
    wgt = rng.integers(-128, 128, (n, bo, bi), dtype=np.int8)
    uops = b"".join(encode_uop(Uop(k, k, k), CFG).to_bytes(4, "little") for k in range(n))
    L = Opcode.LOAD
    insns = [
        MemInsn(opcode=L, memory_type=MemType.UOP, dram_base=0x1000 // 4, y_size=1, x_size=n),
        MemInsn(opcode=L, memory_type=MemType.INP, dram_base=0x2000 // CFG.inp_elem_bytes,
                y_size=1, x_size=n),
        MemInsn(opcode=L, memory_type=MemType.WGT, dram_base=0x3000 // CFG.wgt_elem_bytes,
                y_size=1, x_size=n, push_next=1),
        GemmInsn(reset=1, uop_bgn=0, uop_end=n, pop_prev=1),
        GemmInsn(uop_bgn=0, uop_end=n, iter_out=2, push_next=1),
        MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT,
                dram_base=0x4000 // CFG.out_elem_bytes, y_size=1, x_size=n, pop_prev=1),
        FinishInsn(),
    ]
    data = {0x1000: uops, 0x2000: inp.tobytes(), 0x3000: wgt.tobytes()}
    (_, ref, _), (_, got, _) = _run_both(insns, data, (0x4000, n * CFG.out_elem_bytes))
    want = np.stack([2 * (wgt[k].astype(np.int64) @ inp[k].astype(np.int64)) for k in range(n)])
    assert np.frombuffer(got, np.int8).reshape(n, bo).tolist() == want.astype(np.int8).tolist()
    assert got == ref


def _with_field(insn, fmt: str, name: str, value: int) -> int:
    """The word of ``insn`` with field ``name`` forced to ``value`` (even an illegal one)."""
    f = layout(CFG).field(fmt, name)
    return (encode(insn, CFG) & ~(f.mask << f.lo)) | (value << f.lo)


@pytest.mark.parametrize("case", range(6))
def test_errors_match_fsim(case: int) -> None:
    L, S = Opcode.LOAD, Opcode.STORE
    ok = MemInsn(opcode=L, memory_type=MemType.INP, sram_base=0, dram_base=0x1000 // 4,
                 y_size=1, x_size=2, x_stride=2)
    bad = [
        MemInsn(opcode=L, memory_type=MemType.OUT, x_size=1),  # 2: LOAD of OUT
        MemInsn(opcode=S, memory_type=MemType.OUT, x_size=1, push_next=1),  # 4: store flag
        _with_field(AluInsn(), "alu", "alu_opcode", 6),  # 5: bad ALU opcode
        MemInsn(opcode=L, memory_type=MemType.INP, sram_base=CFG.inp_depth - 1, y_size=1,
                x_size=1, x_pad_1=1, dram_base=0x1000 // 4),  # 3: SRAM range
        GemmInsn(uop_bgn=0, uop_end=1, iter_out=3, dst_factor_out=CFG.acc_depth - 1),  # 3 exec
        MemInsn(opcode=L, memory_type=MemType.UOP, y_size=2, x_size=1),  # 2: UOP shape
    ][case]
    insns = [ok, ok, ok, bad, FinishInsn()]
    data = {0x1000: bytes(64)}
    (e0, _, _), (e1, _, _) = _run_both(insns, data, (0x1000, 4))
    assert e0 is not None and e1 == e0


def test_bad_opcode_word_and_restart() -> None:
    """A raw word with opcode 7 gives error 1; the next start runs a good program."""
    dut = TesseraCore(CFG)
    mem = bytearray(1 << 16)
    good = to_bytes([MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, dram_base=0,
                             y_size=1, x_size=4, x_stride=4), FinishInsn()], CFG)
    mem[0x100:0x100 + 32] = good
    mem[0x200:0x210] = (7).to_bytes(16, "little")
    dram = AxiDram(dut, mem, seed=3, stall=0.2)
    seen = []

    async def axil(ctx, addr, value=None):
        if value is not None:
            ctx.set(dut.s_axil_awaddr, addr)
            ctx.set(dut.s_axil_wdata, value)
            ctx.set(dut.s_axil_wstrb, 0xF)
            ctx.set(dut.s_axil_awvalid, 1)
            ctx.set(dut.s_axil_wvalid, 1)
            ctx.set(dut.s_axil_bready, 1)
            await ctx.tick().until(dut.s_axil_awready)
            ctx.set(dut.s_axil_awvalid, 0)
            ctx.set(dut.s_axil_wvalid, 0)
            await ctx.tick().until(dut.s_axil_bvalid)
            return None
        ctx.set(dut.s_axil_araddr, addr)
        ctx.set(dut.s_axil_arvalid, 1)
        ctx.set(dut.s_axil_rready, 1)
        await ctx.tick().until(dut.s_axil_arready)
        ctx.set(dut.s_axil_arvalid, 0)
        *_, v = await ctx.tick().sample(dut.s_axil_rdata).until(dut.s_axil_rvalid)
        return v

    async def main(ctx):
        for addr, count in ((0x200, 1), (0x100, 2)):
            await axil(ctx, Reg.INSN_ADDR, addr)
            await axil(ctx, Reg.INSN_COUNT, count)
            await axil(ctx, Reg.CONTROL, 1)
            await axil(ctx, Reg.CONTROL, 1)  # ignored: busy
            await ctx.tick().until(dut.irq)
            seen.append((await axil(ctx, Reg.CONTROL), await axil(ctx, Reg.ERROR_CODE),
                         await axil(ctx, Reg.ERROR_PC), await axil(ctx, 0x20 + 4 * 9)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(dram.process, background=True)
    sim.add_testbench(main)
    sim.run()
    assert seen[0][:3] == (STATUS_DONE | STATUS_ERROR, 1, 0)
    assert seen[1] == (STATUS_DONE, 0, 0, 1)  # load_insns counter is index 9
    assert not dram.errors


def _throughput_program(gemm_iters: int):
    uops = b"".join(encode_uop(Uop(k % 4, k, k), CFG).to_bytes(4, "little") for k in range(8))
    L = Opcode.LOAD
    insns = [
        MemInsn(opcode=L, memory_type=MemType.UOP, dram_base=0x1000 // 4, y_size=1, x_size=8),
        GemmInsn(uop_bgn=0, uop_end=8, iter_out=gemm_iters, iter_in=4),
        AluInsn(alu_opcode=AluOp.ADD, use_imm=1, imm=1, uop_bgn=0, uop_end=8,
                iter_out=gemm_iters, iter_in=4),
        FinishInsn(),
    ]
    return insns, {0x1000: uops}


def test_gemm_and_alu_issue_one_micro_op_per_cycle() -> None:
    """Back-to-back micro-ops on the same rows still run at II=1: the cycle count grows by one
    per GEMM step and one per ALU step."""
    cycles = []
    for iters in (2, 18):
        insns, data = _throughput_program(iters)
        dev = AmaranthDevice(CFG)
        for _addr, blob in data.items():
            dev.write(dev.alloc(len(blob)).addr, blob)
        code = to_bytes(insns, CFG)
        ibuf = dev.alloc(len(code))
        dev.write(ibuf.addr, code)
        cycles.append(dev.run(ibuf.addr, len(insns)).cycles)
    extra_steps = 2 * (18 - 2) * 4 * 8
    assert cycles[1] - cycles[0] <= extra_steps / 0.95, cycles


_VARIANTS = {
    "bus32": dict(mem_bus_bits=32),
    "bus256": dict(mem_bus_bits=256),
    "batch2_bus128": dict(log_batch=1, mem_bus_bits=128),
    "bus512_block8": dict(mem_bus_bits=512, log_block=3, log_wgt_buff_size=13,
                          log_acc_buff_size=12, log_inp_buff_size=11),
}


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_bus_width_and_batch_variants_match_fsim(variant: str) -> None:
    """Elements narrower and wider than the bus, several instructions per beat, BATCH 2."""
    cfg = Config(**{**Config.preset("tiny").to_dict(), **_VARIANTS[variant]})
    seed = 40 + sorted(_VARIANTS).index(variant)
    progs = [random_program(cfg, np.random.default_rng(seed), rounds=4) for _ in range(2)]
    ref = open_device("fsim", cfg)
    progs[0].place(ref)
    ref_stats = ref.run(progs[0].insn_addr, progs[0].insn_count)
    dev = AmaranthDevice(cfg, stall=0.25, seed=seed)
    progs[1].place(dev)
    stats = dev.run(progs[1].insn_addr, progs[1].insn_count)
    assert progs[1].read_outputs(dev) == progs[0].read_outputs(ref)
    assert {k: stats.counters[k] for k in ARCH} == {k: ref_stats.counters[k] for k in ARCH}
