"""fsim's steady-state memos (per-pc load descriptors, plan memos keyed by micro-op contents,
DMA checks keyed by the allocation generation, the lazily refreshed out buffer) never change a
result: each is checked against the plain path (``fast=False``) where it would matter."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.isa import (
    AluInsn,
    FinishInsn,
    GemmInsn,
    MemInsn,
    MemType,
    Opcode,
    Uop,
    elem_bytes,
    encode_uop,
)
from tessera.sim.progen import Segment, build_program, overlap_program, random_program

TINY = Config.preset("tiny")


def _run(prog, fast: bool, dev=None):
    dev = dev or open_device("fsim", TINY, fast=fast)
    if prog.insn_addr < 0 or not dev.allocator.blocks():
        prog.place(dev)
    dev.run(prog.insn_addr, prog.insn_count)
    return dev, prog.read_outputs(dev)


def _gemm_then_acc_load(cfg: Config):
    """GEMM into rows 0..7, then an ACC load overwrites those rows, then a STORE of them: the
    out buffer holds the GEMM's low bytes (SPEC §4: only GEMM/ALU write out)."""
    n = 8
    rng = np.random.default_rng(5)
    segs = [Segment("inp", n * cfg.inp_elem_bytes,
                    rng.integers(0, 256, n * cfg.inp_elem_bytes, dtype=np.uint8).tobytes()),
            Segment("wgt", cfg.wgt_elem_bytes,
                    rng.integers(0, 256, cfg.wgt_elem_bytes, dtype=np.uint8).tobytes()),
            Segment("acc", n * cfg.acc_elem_bytes,
                    rng.integers(-1 << 20, 1 << 20, n * cfg.batch * cfg.block_out)
                    .astype("<i4").tobytes()),
            Segment("uop", 4 * 4, encode_uop(Uop(0, 0, 0), cfg).to_bytes(4, "little")
                    + b"\0" * 12),
            Segment("out", n * cfg.out_elem_bytes, output=True)]

    def insns(seg):
        def eb(name, mt):
            return seg[name].addr // elem_bytes(cfg, mt)
        return [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP,
                        dram_base=eb("inp", MemType.INP), y_size=1, x_size=n, x_stride=n),
                MemInsn(opcode=Opcode.LOAD, memory_type=MemType.WGT,
                        dram_base=eb("wgt", MemType.WGT), y_size=1, x_size=1, x_stride=1,
                        push_next=1),
                MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP,
                        dram_base=eb("uop", MemType.UOP), y_size=1, x_size=1, x_stride=1,
                        pop_prev=1),
                GemmInsn(uop_bgn=0, uop_end=1, iter_out=1, iter_in=n, dst_factor_in=1,
                         reset=1),
                GemmInsn(uop_bgn=0, uop_end=1, iter_out=3, iter_in=n, dst_factor_in=1,
                         src_factor_in=1),
                MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC,
                        dram_base=eb("acc", MemType.ACC), y_size=1, x_size=n, x_stride=n),
                AluInsn(uop_bgn=0, uop_end=0, push_next=1),
                MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT,
                        dram_base=eb("out", MemType.OUT), y_size=1, x_size=n, x_stride=n,
                        pop_prev=1),
                FinishInsn()]
    return build_program(cfg, segs, insns), segs


def test_out_keeps_the_gemm_result_when_an_acc_load_follows():
    prog, segs = _gemm_then_acc_load(TINY)
    _, want = _run(prog, fast=False)
    dev, got = _run(prog, fast=True)
    assert got == want
    _, again = _run(prog, fast=True, dev=dev)  # memos warm
    assert again == want
    acc = np.frombuffer(segs[2].data, "<i4")
    assert want[0] != acc.astype(np.int8).tobytes()  # the test can tell the two apart


def test_a_new_kernel_at_the_same_place_is_planned_anew():
    """Same program bytes, different micro-ops in DRAM on the second run: the plan memos are
    keyed by the micro-op buffer's contents, so the new kernel runs."""
    half = TINY.acc_depth // 2
    prog_a = overlap_program(TINY, half, deferred=False)
    prog_b = overlap_program(TINY, half + 3, deferred=False)
    uop_b = next(s for s in prog_b.segments if s.name == "uop")
    seg = next(s for s in prog_a.segments if s.name == "uop")
    res = []
    for fast in (True, False):  # the same history on both: run, new micro-ops, run again
        dev, first = _run(prog_a, fast=fast)
        dev.write(seg.addr, uop_b.data)
        res.append((first, _run(prog_a, fast=fast, dev=dev)[1]))
    assert res[0] == res[1] and res[0][0] != res[0][1]


def test_dma_into_freed_memory_is_refused_after_a_good_run():
    prog = random_program(TINY, np.random.default_rng(2), rounds=3)
    dev, _ = _run(prog, fast=True)
    _run(prog, fast=True, dev=dev)
    out = next(s for s in prog.segments if s.output)
    dev.free(out.addr)
    with pytest.raises(DeviceError, match="not inside allocated device memory"):
        dev.run(prog.insn_addr, prog.insn_count)


@pytest.mark.parametrize("seed", range(6))
def test_replayed_runs_equal_the_plain_path_in_sram_too(seed):
    """Two runs of a random program on one device: DRAM outputs, acc and out SRAMs equal the
    plain path's after each run."""
    devs = {f: open_device("fsim", TINY, fast=f) for f in (True, False)}
    prog = random_program(TINY, np.random.default_rng(seed), rounds=5)
    for dev in devs.values():
        prog.place(dev)
    for _ in range(2):
        res = []
        for dev in devs.values():
            dev.run(prog.insn_addr, prog.insn_count)
            res.append((prog.read_outputs(dev), dev.sim.acc.copy(), dev.sim.out.copy()))
        assert res[0][0] == res[1][0]
        assert np.array_equal(res[0][1], res[1][1]) and np.array_equal(res[0][2], res[1][2])
