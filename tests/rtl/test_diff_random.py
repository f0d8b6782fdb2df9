"""Differential testing: seeded random well-synchronised programs on ``verilator`` vs ``fsim``.

Programs come from ``tessera.sim.progen`` (all opcodes and memory types incl. ACC_8BIT, padding,
every ALU op in imm and src forms with negative shifts, back-to-back micro-ops on one accumulator
row, multi-round double-buffered load/compute/store with tokens). Every allocated byte of DRAM
and every architectural counter must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from rtlutil import free_all, memory_diff, open_pair, run

from tessera.config import Config
from tessera.sim.progen import random_program

TIMEOUT = 5_000_000


def _check(cfg: Config, seed: int, rounds: int, vdev, fdev) -> int:
    progs = [random_program(cfg, np.random.default_rng(seed), rounds=rounds) for _ in range(2)]
    progs[0].place(vdev)
    progs[1].place(fdev)
    got = run(vdev, progs[0].insn_addr, progs[0].insn_count, TIMEOUT)
    want = run(fdev, progs[1].insn_addr, progs[1].insn_count, TIMEOUT)
    where = f"{cfg.summary()} seed={seed} rounds={rounds}"
    assert want.error is None, f"progen made a bad program ({where}): {want.error}"
    assert got.error is None, f"verilator failed where fsim succeeded ({where}): {got.error}"
    diff = memory_diff(vdev, fdev)
    assert not diff, f"DRAM differs ({where}):\n" + "\n".join(diff)
    assert got.counters == want.counters, f"counters differ ({where})"
    return got.cycles


TINY_SEEDS = range(100)


@pytest.mark.parametrize("chunk", range(4))
def test_tiny_random_programs(chunk):
    """100 programs on ``tiny`` (25 per test, on one device pair that is reused)."""
    cfg = Config.preset("tiny")
    vdev, fdev = open_pair(cfg)
    with vdev, fdev:
        for seed in TINY_SEEDS[chunk::4]:
            rounds = 2 + seed % 11
            _check(cfg, seed, rounds, vdev, fdev)
            free_all(vdev)
            free_all(fdev)


@pytest.mark.parametrize("latency,bpc", [(1, 1.0), (60, 0.25)])
def test_tiny_dram_timing_does_not_change_results(latency, bpc):
    cfg = Config.preset("tiny")
    vdev, fdev = open_pair(cfg, read_latency=latency, beats_per_cycle=bpc)
    with vdev, fdev:
        for seed in (1000, 1001, 1002):
            _check(cfg, seed, 6, vdev, fdev)
            free_all(vdev)
            free_all(fdev)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_random_programs(seed):
    cfg = Config.preset("default")
    vdev, fdev = open_pair(cfg)
    with vdev, fdev:
        _check(cfg, 500 + seed, 3 + 2 * seed, vdev, fdev)
