"""cocotb tests of single blocks (launched by test_cocotb_blocks.py, which picks the testcase
that matches the block it built)."""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, Timer

from tessera.config import Config
from tessera.sim.cocotb_blocks import gemm_reference, pack_lanes, unpack_lanes


def _cfg() -> Config:
    return Config.from_dict(json.loads(os.environ["TESSERA_CONFIG"]))


@cocotb.test()
async def gemm_array_matches_reference(dut):
    """Random and extreme int8 operands: every lane equals the numpy dot product."""
    cfg = _cfg()
    rng = np.random.default_rng(int(os.environ.get("TESSERA_SEED", "0")))
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    cases = [rng.integers(-128, 128, (b, bi)) for _ in range(40)]
    wgts = [rng.integers(-128, 128, (bo, bi)) for _ in range(40)]
    cases += [np.full((b, bi), -128), np.full((b, bi), 127), np.full((b, bi), -128)]
    wgts += [np.full((bo, bi), -128), np.full((bo, bi), -128), np.full((bo, bi), 127)]
    for x, w in zip(cases, wgts):
        dut.inp.value = pack_lanes(x, cfg.inp_bits)
        dut.wgt.value = pack_lanes(w, cfg.wgt_bits)
        await Timer(1, unit="ns")
        got = unpack_lanes(int(dut.dot.value), cfg.acc_bits, b * bo).reshape(b, bo)
        np.testing.assert_array_equal(got, gemm_reference(x, w))


@cocotb.test()
async def token_queue_matches_model(dut):
    """Random push/pop traffic against a counter model: ready/valid, capacity, simultaneous
    push and pop, reset clears the queue."""
    depth = int(os.environ["TESSERA_DEPTH"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.push__valid.value = 0
    dut.pop__ready.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    rnd = random.Random(1)
    count = 0
    seen_full = seen_empty_pop = 0
    for cycle in range(3000):
        bias = 0.75 if (cycle // 300) % 2 == 0 else 0.25  # alternate filling and draining
        push, pop = rnd.random() < bias, rnd.random() < 1 - bias
        dut.push__valid.value = int(push)
        dut.pop__ready.value = int(pop)
        await ReadOnly()
        assert int(dut.push__ready.value) == int(count < depth), (cycle, count)
        assert int(dut.pop__valid.value) == int(count > 0), (cycle, count)
        did_push, did_pop = push and count < depth, pop and count > 0
        seen_full += push and count == depth
        seen_empty_pop += pop and count == 0
        count += int(did_push) - int(did_pop)
        await RisingEdge(dut.clk)
    assert seen_full and seen_empty_pop, "traffic never reached full and empty"
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await ReadOnly()
    assert int(dut.pop__valid.value) == 0
