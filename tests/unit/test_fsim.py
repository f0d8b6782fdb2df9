"""The functional simulator against an independent SPEC interpreter, and its strictness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from spec_ref import run_reference

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.isa import AluInsn, AluOp, FinishInsn, GemmInsn, MemInsn, MemType, Opcode, Uop
from tessera.regs import Reg
from tessera.sim.fsim import COMPUTE, LOAD, STORE
from tessera.sim.progen import Segment, build_program, random_program

TINY = Config.preset("tiny")


def _run(prog, cfg=None):
    dev = open_device("fsim", cfg or prog.cfg)
    prog.place(dev)
    stats = dev.run(prog.insn_addr, prog.insn_count)
    return dev, stats, prog.read_outputs(dev)


@pytest.mark.parametrize("name, seeds", [("tiny", range(30)), ("default", range(4))])
def test_random_programs_match_independent_reference(name, seeds):
    cfg = Config.preset(name)
    nonzero = 0
    for seed in seeds:
        prog = random_program(cfg, np.random.default_rng(seed), rounds=6)
        _, stats, got = _run(prog)
        assert got == run_reference(prog), f"{name} seed {seed}"
        assert stats.counters["insns_retired"] == prog.insn_count
        nonzero += sum(np.count_nonzero(np.frombuffer(g, np.uint8)) for g in got)
    assert nonzero > 100  # the programs really compute something


def _module_of(insn) -> int:
    if isinstance(insn, MemInsn):
        if insn.opcode == Opcode.STORE:
            return STORE
        return LOAD if insn.memory_type in (MemType.INP, MemType.WGT) else COMPUTE
    return COMPUTE


def test_results_do_not_depend_on_program_order():
    """Re-interleave the three module streams (each kept in order): same DRAM result."""
    rng = np.random.default_rng(7)
    for seed in range(6):
        prog = random_program(TINY, np.random.default_rng(100 + seed), rounds=6)
        _, _, want = _run(prog)
        body, finish = prog.insns[:-1], prog.insns[-1]
        streams = [[i for i in body if _module_of(i) == m] for m in range(3)]
        order = rng.permutation(np.repeat(np.arange(3), [len(s) for s in streams]))
        shuffled = [streams[m].pop(0) for m in order]
        prog.insns = shuffled + [finish]
        _, _, got = _run(prog)
        assert got == want


def _tiny_program(insns_of, extra=()):
    wgt = bytes((i * 7 + 3) % 256 for i in range(256)) * 16
    segs = [Segment("inp", 4096, bytes(range(256)) * 16), Segment("wgt", 4096, wgt),
            Segment("uop", 4096), Segment("out", 4096, output=True)]
    segs += list(extra)
    return build_program(TINY, segs, insns_of)


def _good(seg):
    inp, wgt, out = (seg[n].addr for n in ("inp", "wgt", "out"))
    c = TINY
    return [
        MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, dram_base=inp // c.inp_elem_bytes,
                y_size=2, x_size=4, x_stride=4, x_pad_0=1, push_next=1),
        MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP,
                dram_base=seg["uop"].addr // 4, y_size=1, x_size=4, x_stride=4, pop_prev=1),
        GemmInsn(reset=1, uop_bgn=0, uop_end=4),
        AluInsn(uop_bgn=0, uop_end=4, alu_opcode=AluOp.ADD, use_imm=1, imm=-3, push_next=1),
        MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, dram_base=out // 4, y_size=1,
                x_size=4, x_stride=4, pop_prev=1),
        FinishInsn(),
    ]


def _with(insns, index, **changes):
    out = list(insns)
    out[index] = dataclasses.replace(out[index], **changes)
    return out


ERROR_CASES = [
    # (name, mutate(insns, seg) -> insns, code, pc)
    ("bad opcode", lambda i, s: i, 1, 2),  # patched in the raw stream below
    ("LOAD of OUT", lambda i, s: _with(i, 0, memory_type=MemType.OUT), 2, 0),
    ("STORE of ACC", lambda i, s: _with(i, 4, memory_type=MemType.ACC), 2, 4),
    ("UOP with padding", lambda i, s: _with(i, 1, x_pad_0=1), 2, 1),
    ("UOP 2-D", lambda i, s: _with(i, 1, y_size=2), 2, 1),
    ("bad memory type", lambda i, s: i, 2, 0),  # patched: memory_type 7
    ("LOAD INP out of range", lambda i, s: _with(i, 0, sram_base=TINY.inp_depth - 4), 3, 0),
    ("STORE out of range", lambda i, s: _with(i, 4, sram_base=TINY.acc_depth - 3), 3, 4),
    ("GEMM acc index", lambda i, s: _with(i, 2, iter_out=3, dst_factor_out=TINY.acc_depth - 1),
     3, 2),
    ("GEMM uop index", lambda i, s: _with(i, 2, uop_bgn=TINY.uop_depth - 2,
                                          uop_end=TINY.uop_depth + 1), 3, 2),
    ("ALU src index", lambda i, s: _with(i, 3, use_imm=0, imm=0, iter_in=3,
                                         src_factor_in=TINY.acc_depth - 1), 3, 3),
    ("load pop_prev", lambda i, s: _with(i, 0, pop_prev=1), 4, 0),
    ("store push_next", lambda i, s: _with(i, 4, push_next=1), 4, 4),
    ("bad ALU opcode", lambda i, s: i, 5, 3),  # patched: alu_opcode 6
    ("DRAM beyond 32 bits", lambda i, s: _with(i, 0, dram_base=(1 << 32) // 4 - 2), 6, 0),
]


def _patch(code: bytes, pc: int, lo: int, width: int, value: int) -> bytes:
    word = int.from_bytes(code[16 * pc:16 * pc + 16], "little")
    word = (word & ~(((1 << width) - 1) << lo)) | (value << lo)
    return code[:16 * pc] + word.to_bytes(16, "little") + code[16 * pc + 16:]


@pytest.mark.parametrize("name, mutate, code, pc", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_every_spec_error_is_reported_then_device_recovers(name, mutate, code, pc):
    prog = _tiny_program(lambda s: mutate(_good(s), s))
    dev = open_device("fsim", TINY)
    prog.place(dev)
    raw = prog.code()
    if name == "bad opcode":
        raw = _patch(raw, 2, 0, 3, 6)
    elif name == "bad memory type":
        raw = _patch(raw, 0, 7, 3, 7)
    elif name == "bad ALU opcode":
        alu = [f for f in __import__("tessera.isa").isa.layout(TINY).alu if f.name ==
               "alu_opcode"][0]
        raw = _patch(raw, 3, alu.lo, 3, 6)
    dev.write(prog.insn_addr, raw)
    with pytest.raises(DeviceError) as info:
        dev.run(prog.insn_addr, prog.insn_count)
    assert (info.value.code, info.value.pc) == (code, pc), str(info.value)
    assert f"instruction {pc}" in str(info.value)
    assert dev.read_reg(Reg.ERROR_CODE) == code and dev.read_reg(Reg.ERROR_PC) == pc
    assert dev.read_reg(Reg.CONTROL) & 0b110 == 0b110
    # the same device then runs a good program correctly
    good = _tiny_program(_good)
    ref_dev = open_device("fsim", TINY)
    good.place(ref_dev)
    ref_dev.run(good.insn_addr, good.insn_count)
    want = good.read_outputs(ref_dev)
    dev.write(prog.insn_addr, good.code())
    dev.run(prog.insn_addr, good.insn_count)
    assert dev.read(prog.segments[3].addr, 4096) == want[0]
    assert dev.read_reg(Reg.CONTROL) & 0b110 == 0b010


def test_good_program_result_is_what_the_spec_says():
    prog = _tiny_program(_good)
    uops = b"".join(int(i).to_bytes(4, "little") for i in range(4))
    prog.segments[2].data = uops
    _, stats, (out,) = _run(prog)
    assert out == run_reference(prog)[0]
    assert np.frombuffer(out[:16], np.int8).tolist() == [-3] * 16
    assert stats.counters["alu_steps"] == 4 and stats.counters["gemm_reset_steps"] == 4


def test_deadlock_is_reported_with_the_waiting_instructions():
    prog = _tiny_program(lambda s: _with(_good(s), 1, pop_next=1))  # waits on S2C forever
    with pytest.raises(DeviceError, match="deadlock") as info:
        _run(prog)
    # SPEC §6 code 7 with the lowest blocked pc (the compute instruction 1; store 4 waits too)
    assert info.value.code == 7 and info.value.pc == 1
    assert "compute instruction 1 waits to pop S2C" in str(info.value)
    assert "store instruction 4 waits to pop C2S" in str(info.value)


def test_full_token_queue_stalls_and_can_deadlock():
    def insns(s):
        loads = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0, push_next=1)
                 for _ in range(TINY.dep_queue_depth + 1)]
        return loads + [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0,
                                pop_next=1), FinishInsn()]
    with pytest.raises(DeviceError, match=r"load instruction 8 waits to push L2C, which is full "
                                          r"\(8 tokens\)") as info:
        _run(_tiny_program(insns))
    assert (info.value.code, info.value.pc) == (7, TINY.dep_queue_depth)


def test_no_false_race_when_nothing_conflicts():
    # Without the pop, compute runs unordered with the INP load, but a reset GEMM and an ALU
    # read no input: there is no conflicting access, so the program is well synchronised.
    _run(_tiny_program(lambda s: _with(_good(s), 1, pop_prev=0)))


def _gemm_reader(s):
    insns = _good(s)
    insns[2] = GemmInsn(reset=0, uop_bgn=0, uop_end=4)
    return insns


def test_gemm_reading_unsynchronised_input_is_a_race():
    prog = _tiny_program(lambda s: _with(_gemm_reader(s), 1, pop_prev=0))
    prog.segments[2].data = b"".join(int(i).to_bytes(4, "little") for i in range(4))
    with pytest.raises(DeviceError, match=r"race on INP\[\d+:\d+\]: instruction 0 \(load "
                                          r"module, writes\) and instruction 2") as info:
        _run(prog)
    assert info.value.code is None and info.value.pc is None


def test_load_overwriting_input_a_gemm_reads_unordered_is_a_race():
    """The load module reloads the GEMM's input rows after a token from the compute module's
    micro-op load, not from the GEMM: the LOAD's write races the GEMM's read."""
    def insns(s):
        i = _with(_gemm_reader(s), 1, push_prev=1)  # the UOP load pushes C2L
        again = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP,
                        dram_base=s["inp"].addr // TINY.inp_elem_bytes, y_size=2, x_size=4,
                        x_stride=4, x_pad_0=1, pop_next=1)
        return i[:-1] + [again, i[-1]]
    prog = _tiny_program(insns)
    prog.segments[2].data = b"".join(int(i).to_bytes(4, "little") for i in range(4))
    with pytest.raises(DeviceError, match=r"race on INP\[0:1\]: instruction 2 \(compute "
                                          r"module, reads\) and instruction 5 \(load module, "
                                          r"writes\)"):
        _run(prog)


def test_store_without_token_is_a_race_on_out():
    prog = _tiny_program(lambda s: _with(_with(_good(s), 4, pop_prev=0), 3, push_next=0))
    with pytest.raises(DeviceError, match=r"race on OUT\[0:1\]: instruction 3 \(compute module, "
                                          r"writes\) and instruction 4 \(store module, reads\)"):
        _run(prog)


def test_dram_race_between_store_and_later_load():
    def insns(s):
        base = _good(s)[:-1]
        reload = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT,
                         dram_base=s["out"].addr // 4, y_size=1, x_size=2, x_stride=2)
        return base + [reload, FinishInsn()]
    with pytest.raises(DeviceError, match="race on DRAM: instruction 4 .*instruction 5"):
        _run(_tiny_program(insns))

    def ordered(s):
        base = _with(_good(s)[:-1], 4, push_prev=1)
        reload = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT, pop_next=1,
                         dram_base=s["out"].addr // 4, y_size=1, x_size=2, x_stride=2)
        return base + [reload, FinishInsn()]
    _run(_tiny_program(ordered))  # the S2C token orders them: no error


def test_instructions_after_finish_are_not_executed():
    prog = _tiny_program(lambda s: _good(s) + [GemmInsn(uop_bgn=0, uop_end=TINY.uop_depth + 1)])
    _, stats, _ = _run(prog)
    assert stats.counters["insns_retired"] == prog.insn_count - 1


def test_dma_outside_allocated_memory_is_a_device_error():
    prog = _tiny_program(lambda s: _with(_good(s), 0, dram_base=(s["out"].addr + 8192) // 4))
    with pytest.raises(DeviceError, match="LOAD INP at instruction 0: bytes .* not inside "
                                          "allocated device memory") as info:
        _run(prog)
    assert info.value.code is None


def test_alu_semantics_edge_cases():
    """SHR by negative and large amounts, MUL wrap, ADD wrap, chained read-after-write."""
    c = TINY
    acc_vals = np.array([[5, -7, 1 << 30, -(1 << 31)], [3, -2, 40, -40], [0, 0, 0, 0],
                         [7, 7, 7, 7]], np.int32)

    def insns(s):
        uops = [Uop(0, 1, 0), Uop(2, 0, 0), Uop(3, 2, 0)]
        return [
            MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=s["uop"].addr // 4,
                    y_size=1, x_size=len(uops), x_stride=len(uops)),
            MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC, dram_base=s["acc"].addr // 16,
                    y_size=1, x_size=4, x_stride=4),
            AluInsn(uop_bgn=0, uop_end=3, alu_opcode=AluOp.SHR),  # acc0 >>= acc1 ...
            AluInsn(uop_bgn=0, uop_end=3, alu_opcode=AluOp.MUL, use_imm=1, imm=-32768),
            AluInsn(uop_bgn=0, uop_end=3, alu_opcode=AluOp.ADD, use_imm=1, imm=32767,
                    push_next=1),
            MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, dram_base=s["out"].addr // 4,
                    y_size=1, x_size=4, x_stride=4, pop_prev=1),
            FinishInsn(),
        ]
    from tessera.isa import encode_uop
    prog = _tiny_program(insns, extra=[Segment("acc", 4096, acc_vals.tobytes())])
    prog.segments[2].data = b"".join(encode_uop(u, c).to_bytes(4, "little")
                                     for u in [Uop(0, 1, 0), Uop(2, 0, 0), Uop(3, 2, 0)])
    _, _, (out,) = _run(prog)
    assert out == run_reference(prog)[0]
    assert np.count_nonzero(np.frombuffer(out[:16], np.int8)) > 4


def test_load_of_padding_rows_only():
    """y_size 0 with padding writes zero rows and reads no DRAM."""
    def insns(s):
        return [
            MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT, sram_base=0,
                    dram_base=s["inp"].addr // 4, y_size=2, x_size=3, x_stride=3),
            MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT, sram_base=0,
                    dram_base=s["inp"].addr // 4, y_size=0, x_size=3, x_stride=3, y_pad_0=1,
                    x_pad_1=1),
            AluInsn(uop_bgn=0, uop_end=1, iter_out=8, dst_factor_out=1, alu_opcode=AluOp.ADD,
                    use_imm=1, imm=0, push_next=1),
            MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, dram_base=s["out"].addr // 4,
                    y_size=1, x_size=8, x_stride=8, pop_prev=1),
            FinishInsn(),
        ]
    prog = _tiny_program(insns)
    _, stats, (out,) = _run(prog)
    assert out == run_reference(prog)[0]
    vals = np.frombuffer(out[:32], np.int8).reshape(8, 4)
    assert (vals[:4] == 0).all() and (vals[4:6] != 0).any()
    assert stats.counters["dram_read_bytes"] == 2 * 3 * 4
