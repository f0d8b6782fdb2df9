"""fsim's fast paths (cached GEMM/ALU plans, int32 ALU, run-based race checks) against its plain
SPEC loop nests: identical accumulators, DRAM, counters and errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.isa import AluOp, Opcode
from tessera.sim.alu_kernel import alu_apply, alu_inplace, alu_int32, alu_plain, plan_alu
from tessera.sim.gemm_kernel import EXACT_INNER, gemm_plain, plan_gemm
from tessera.sim.progen import random_program

INT32 = np.iinfo(np.int32)
EDGES = np.array([INT32.min, INT32.min + 1, -65536, -32768, -1, 0, 1, 2, 32767, 65535,
                  INT32.max - 1, INT32.max], np.int32)


def _int32(rng, shape):
    v = rng.integers(INT32.min, INT32.max, shape, dtype=np.int64, endpoint=True)
    return np.where(rng.random(shape) < 0.2, rng.choice(EDGES, shape), v).astype(np.int32)


def test_int32_alu_equals_the_definition():
    rng = np.random.default_rng(0)
    lhs = np.concatenate([np.repeat(EDGES, EDGES.size), _int32(rng, 4000)])
    for op in AluOp:
        arr = np.concatenate([np.tile(EDGES, EDGES.size), _int32(rng, 4000)])
        if op == AluOp.SHR:
            arr = np.concatenate([arr[:EDGES.size ** 2], rng.integers(-40, 41, 4000)])
        arr = arr.astype(np.int32)
        want = alu_apply(op, lhs.astype(np.int64), arr.astype(np.int64))
        assert np.array_equal(alu_int32(op, lhs, arr), want), op
        imms = [-32768, -40, -31, -3, -1, 0, 1, 7, 31, 40, 32767] + list(rng.integers(
            -32768, 32768, 6))
        for imm in imms:
            want = alu_apply(op, lhs.astype(np.int64), np.int64(imm))
            got = lhs.copy()
            alu_inplace(op, got, int(imm))
            assert np.array_equal(got, want), (op, imm)


def _conv_kernel(rng, c_blocks, o_blocks, pix, k=3, dst=None):
    """Micro-ops of a k x k conv tile, VTA style: one per (out block, pixel, in block).
    ``dst = (base, pitch, order)`` places out block o, pixel p at ``base + o*pitch + p``
    (order "gr") or ``base + p*pitch + o`` ("rg"); default: "gr" with pitch ``pix``."""
    pw = pix + k - 1
    plane = (k + 1) * pw
    base, pitch, order = dst or (0, pix, "gr")

    def row(o, p):
        return base + (o * pitch + p if order == "gr" else p * pitch + o)
    uops = [(row(o, p), c * plane + p, (o * c_blocks + c) * k * k)
            for o in range(o_blocks) for p in range(pix) for c in range(c_blocks)]
    ud, us, uw = (np.array(v, np.int64) for v in zip(*uops))
    perm = rng.permutation(len(uops))  # micro-op order must not matter
    return ud[perm], us[perm], uw[perm], (k, k, (0, 0, pw, 1, k, 1))


def _random_kernel(rng, acc_rows, inp_rows, wgt_rows):
    nu = int(rng.integers(1, 40))
    it_out, it_in = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    kind = rng.integers(0, 4)
    dfo, dfi = [(0, 0), (int(rng.integers(1, 4)), 0), (0, int(rng.integers(1, 4))),
                (int(rng.integers(0, 3)), int(rng.integers(0, 3)))][kind]  # incl. aliasing
    fac = (dfo, dfi) + tuple(int(v) for v in rng.integers(0, 5, 4))
    ext = [(it_out - 1) * fac[2 * t] + (it_in - 1) * fac[2 * t + 1] for t in range(3)]
    ud = rng.integers(0, acc_rows - ext[0], nu)
    if rng.random() < 0.5:
        ud[rng.random(nu) < 0.4] = ud[0]  # repeated destinations
    us = rng.integers(0, inp_rows - ext[1], nu)
    uw = rng.integers(0, wgt_rows - ext[2], nu)
    return ud, us, uw, (it_out, it_in, fac)


def _buffers(rng, b, blk, depth, adversarial):
    if adversarial:  # near-maximal products: partial sums close to 2**24 and odd
        inp = np.full((depth, b, blk), -128, np.int8)
        wgt = np.full((depth, blk, blk), -128, np.int8)
        wgt[rng.random(wgt.shape) < 0.05] = 127
        inp[rng.random(inp.shape) < 0.02] = -127
    else:
        inp = rng.integers(-128, 128, (depth, b, blk), dtype=np.int8)
        wgt = rng.integers(-128, 128, (depth, blk, blk), dtype=np.int8)
    return inp, wgt, _int32(rng, (depth, b, blk))


def _check_gemm(ud, us, uw, loop, inp, wgt, acc0, stacked):
    it_out, it_in, fac = loop
    plan = plan_gemm(ud, us, uw, False, it_out, it_in, fac, stacked=stacked)
    plain = plan_gemm(ud, us, uw, False, it_out, it_in, fac, fast=False)
    want = acc0.copy()
    gemm_plain(want, inp, wgt, *plain.steps_arrays)
    got = acc0.copy()
    inp_f = inp.astype(np.float32)
    wgt_t = wgt.transpose(0, 2, 1).astype(np.float32)
    plan.run(got, inp_f, wgt_t, np.zeros(wgt.shape[0], np.int64))
    assert np.array_equal(got, want)
    for got_set, steps in zip((plan.rows, plan.reads_inp, plan.reads_wgt), plain.steps_arrays):
        assert np.array_equal(got_set.uniq, np.unique(steps))  # what races and checks see
    return plan


@pytest.mark.parametrize("batch", [1, 2])
def test_conv_gemm_plans_stack_and_match_the_loop_nest(batch):
    rng = np.random.default_rng(batch)
    for c_blocks, o_blocks, pix, adversarial in [(2, 3, 5, False), (8, 2, 4, True),
                                                 (3, 4, 7, True)]:
        blk = 16
        inp, wgt, acc0 = _buffers(rng, batch, blk, 512, adversarial)
        ud, us, uw, loop = _conv_kernel(rng, c_blocks, o_blocks, pix)
        plan = _check_gemm(ud, us, uw, loop, inp, wgt, acc0, stacked=True)
        assert plan.stacks is not None and len(plan.stacks) == 1  # one im2col product
        length = plan.stacks[0].xidx.shape[1] * blk
        if c_blocks == 8:
            assert length > EXACT_INNER  # split into exact float32 chunks
        _check_gemm(ud, us, uw, loop, inp, wgt, acc0, stacked=False)


@pytest.mark.parametrize("order, pitch, top", [("gr", 5, False), ("gr", 9, False),
                                               ("gr", 9, True), ("rg", 3, False),
                                               ("rg", 7, False), ("rg", 7, True)])
def test_conv_gemm_plans_with_strided_destinations(order, pitch, top):
    """Output rows with a pitch (out blocks or pixels apart) add through a strided view of the
    accumulator; at its top, where the view would run past the end, through row indices."""
    rng = np.random.default_rng(pitch)
    c_blocks, o_blocks, pix, depth = 2, 3, 5, 512
    inp, wgt, acc0 = _buffers(rng, 1, 16, depth, False)
    span = (o_blocks - 1) * pitch + pix if order == "gr" else (pix - 1) * pitch + o_blocks
    base = depth - span if top else 4
    ud, us, uw, loop = _conv_kernel(rng, c_blocks, o_blocks, pix, dst=(base, pitch, order))
    plan = _check_gemm(ud, us, uw, loop, inp, wgt, acc0, stacked=True)
    assert plan.stacks is not None and len(plan.stacks) == 1
    assert plan.stacks[0].dst == (order, (base, pitch))


def test_random_gemm_plans_match_the_loop_nest():
    rng = np.random.default_rng(11)
    kinds = set()
    for trial in range(60):
        b, blk = (1, 4) if trial % 3 else (2, 8)
        inp, wgt, acc0 = _buffers(rng, b, blk, 96, adversarial=trial % 4 == 0)
        ud, us, uw, loop = _random_kernel(rng, 96, 96, 96)
        plan = _check_gemm(ud, us, uw, loop, inp, wgt, acc0, stacked=True)
        kinds.add("stacked" if plan.stacks is not None else "general")
        _check_gemm(ud, us, uw, loop, inp, wgt, acc0, stacked=False)
    assert kinds == {"stacked", "general"}


def test_random_alu_plans_match_the_loop_nest():
    rng = np.random.default_rng(5)
    for trial in range(120):
        nu = int(rng.integers(1, 12))
        it_out, it_in = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        fac = tuple(int(v) for v in rng.integers(0, 4, 4))
        ud = rng.integers(0, 40, nu)
        us = rng.integers(0, 40, nu)
        if trial % 3 == 0:  # read-after-write chains through the destination rows
            us[1:] = ud[:-1]
        if trial % 5 == 0:  # one contiguous run of rows: the slice path
            ud, us = np.arange(nu) + 7, np.arange(nu) + 50
        use_imm = bool(trial % 2)
        op = AluOp(trial % 5)
        imm = int(rng.choice([-40, -3, 0, 5, 31, 1000, -32768, 32767]))
        plan = plan_alu(ud, us, it_out, it_in, fac, use_imm)
        plain = plan_alu(ud, us, it_out, it_in, fac, use_imm, fast=False)
        acc0 = _int32(rng, (128, 1, 4))
        if op == AluOp.SHR and not use_imm:
            acc0[:] = rng.integers(-40, 41, acc0.shape)
        want, got = acc0.copy(), acc0.copy()
        alu_plain(want, op, plain.a, plain.s, imm)
        plan.run(got, op, imm if use_imm else None)
        assert np.array_equal(got, want), (trial, op, use_imm)


@pytest.mark.parametrize("pattern", ["blocks", "tiles", "blocks_inside", "irregular"])
def test_alu_repeated_sources_broadcast_like_the_loop_nest(pattern):
    """A bias or scale per channel block: contiguous destinations whose source is a few rows
    repeated (each row m times in turn, or the rows k times over) take the broadcast path and
    match the loop nest, on every opcode and both bound and plain ``run``."""
    rng = np.random.default_rng(7)
    n, k = 24, 4
    for trial in range(20):
        bias = rng.integers(200, 400, k)
        if pattern == "blocks":  # rows a..a+23, bias row of block a // 6: iter_out blocks
            ud, us, loop = np.arange(6) + 10, np.full(6, bias[0]), (k, 1, (6, 0, 1, 0))
        elif pattern == "tiles":  # pixel-major: the k channel-block biases repeated per pixel
            ud, us, loop = np.arange(k) + 10, bias, (6, 1, (k, 0, 0, 0))
        elif pattern == "blocks_inside":  # source rows from the micro-ops, not the loop
            ud, us, loop = np.arange(n) + 10, np.repeat(bias, n // k), (1, 1, (0, 0, 0, 0))
        else:  # no repetition pattern: the gather path
            ud, us, loop = np.arange(n) + 10, rng.integers(200, 400, n), (1, 1, (0, 0, 0, 0))
        it_out, it_in, fac = loop
        plan = plan_alu(ud, us, it_out, it_in, fac, False)
        plain = plan_alu(ud, us, it_out, it_in, fac, False, fast=False)
        assert plan.steps == n
        assert (plan.chunks[0][4] is None) == (pattern == "irregular")
        op = AluOp(trial % 5)
        acc0 = _int32(rng, (512, 2, 4))
        if op == AluOp.SHR:
            acc0[200:400] = rng.integers(-40, 41, acc0[200:400].shape)
        want = acc0.copy()
        alu_plain(want, op, plain.a, plain.s, 0)
        got, got_bound = acc0.copy(), acc0.copy()
        plan.run(got, op, None)
        plan.bound(got_bound, op, None)()
        assert np.array_equal(got, want) and np.array_equal(got_bound, want), (trial, op)


def test_alu_contiguous_source_overlapping_its_destination():
    """A contiguous source read through a view, shifted against the destination rows: the
    result is the sequential loop's (earlier writes seen where the SPEC order makes them)."""
    rng = np.random.default_rng(4)
    for shift in (-3, -1, 0, 1, 3):
        ud = np.arange(20, dtype=np.int64) + 10
        us = ud + shift
        for op in AluOp:
            plan = plan_alu(ud, us, 2, 1, (0, 0, 0, 0), False)
            plain = plan_alu(ud, us, 2, 1, (0, 0, 0, 0), False, fast=False)
            acc0 = _int32(rng, (64, 1, 4))
            if op == AluOp.SHR:
                acc0[:] = rng.integers(-40, 41, acc0.shape)
            want, got = acc0.copy(), acc0.copy()
            alu_plain(want, op, plain.a, plain.s, 0)
            plan.run(got, op, None)
            assert np.array_equal(got, want), (shift, op)


BATCH2 = dataclasses.replace(Config.preset("tiny"), log_batch=1, mem_bus_bits=128)


@pytest.mark.parametrize("cfg, seeds", [(Config.preset("tiny"), range(12)),
                                        (Config.preset("default"), range(2)),
                                        (BATCH2, range(4))],
                         ids=["tiny", "default", "batch2"])
def test_fast_and_plain_devices_agree_on_random_programs(cfg, seeds):
    for seed in seeds:
        outs = []
        for fast in (True, False):
            prog = random_program(cfg, np.random.default_rng(seed), rounds=5)
            dev = open_device("fsim", cfg, fast=fast)
            prog.place(dev)
            stats = dev.run(prog.insn_addr, prog.insn_count)
            stats2 = dev.run(prog.insn_addr, prog.insn_count)  # cached plans on the fast one
            assert stats2.counters == stats.counters
            outs.append((prog.read_outputs(dev), stats.counters, dev.sim.acc.copy()))
        assert outs[0][0] == outs[1][0], f"seed {seed}: DRAM differs"
        assert outs[0][1] == outs[1][1]
        assert np.array_equal(outs[0][2], outs[1][2])


def test_fast_and_plain_report_the_same_errors():
    """Mutated random programs (index out of range, races): same code, pc and message."""
    cfg = Config.preset("tiny")
    seen = set()
    for seed in range(40):
        results = []
        for fast in (True, False):
            rng = np.random.default_rng(seed)
            prog = random_program(cfg, rng, rounds=3)
            k = int(rng.integers(len(prog.insns)))
            insn = prog.insns[k]
            if insn.opcode in (Opcode.GEMM, Opcode.ALU) and rng.random() < 0.5:
                prog.insns[k] = dataclasses.replace(insn, dst_factor_out=cfg.acc_depth // 2,
                                                    iter_out=3)
            else:  # drop a dependency flag: may make the program race or deadlock
                flags = [f for f in ("pop_prev", "pop_next", "push_prev", "push_next")
                         if getattr(insn, f)]
                if flags:
                    prog.insns[k] = dataclasses.replace(insn, **{flags[0]: 0})
            dev = open_device("fsim", cfg, fast=fast)
            prog.place(dev)
            try:
                dev.run(prog.insn_addr, prog.insn_count)
                results.append((None, prog.read_outputs(dev)))
            except DeviceError as exc:
                results.append((exc.code, exc.pc, str(exc)))
        assert results[0] == results[1], f"seed {seed}"
        seen.add(results[0][0] if len(results[0]) == 3 and results[0][0] else
                 ("race" if "race" in str(results[0]) else "ok"))
    assert {3, "race", "ok"} <= seen, seen


def test_blas_threads_are_limited_while_executing_and_restored():
    from threadpoolctl import threadpool_info

    from tessera.sim.blas import blas_limit

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert before, "numpy's BLAS must be visible to threadpoolctl"
    with blas_limit(1):
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
    with pytest.raises(DeviceError, match="blas_threads must be a positive integer or None"):
        open_device("fsim", Config.preset("tiny"), blas_threads=0)
