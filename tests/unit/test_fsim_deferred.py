"""Deferred ALU instructions (spec-notes 16) on the functional simulator: GEMMs may overlap them
only on other rows of the other accumulator half; anything else is a race."""

from __future__ import annotations

import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.sim.progen import overlap_program

TINY = Config.preset("tiny")


def _run(prog):
    with open_device("fsim", TINY) as dev:
        prog.place(dev)
        dev.run(prog.insn_addr, prog.insn_count)
        return prog.read_outputs(dev)


def test_overlap_on_the_other_half_gives_the_sequential_result():
    half = TINY.acc_depth // 2
    for rows in (half, half + 3, TINY.acc_depth - 8):
        want = _run(overlap_program(TINY, rows, deferred=False))
        assert _run(overlap_program(TINY, rows, deferred=True)) == want


@pytest.mark.parametrize("rows, what", [(4, "accumulator rows"), (20, "accumulator half 0")])
def test_a_gemm_overlapping_a_deferred_alu_is_a_race(rows, what):
    with pytest.raises(DeviceError, match=f"race on the {what}|race on {what}") as info:
        _run(overlap_program(TINY, rows, deferred=True))
    assert info.value.code is None and "deferred ALU instruction 5" in str(info.value)


@pytest.mark.parametrize("rows", [4, 20])
def test_a_fence_or_a_plain_alu_orders_them(rows):
    assert _run(overlap_program(TINY, rows, deferred=True, fence=True)) == \
        _run(overlap_program(TINY, rows, deferred=False))
