"""``CompiledModel.run(..., workers=N)``: a model's RTL run split across forked worker processes
must give the outputs, per-layer cycles and counters of one sequential RTL run (and fsim's), and
every way it could be silently wrong must be reported instead."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal

import numpy as np
import pytest

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.driver import open_device
from tessera.errors import DeviceError, InputError
from tessera.isa import MemInsn, MemType, Opcode, from_bytes, to_bytes
from tessera.runtime import parallel
from tessera.runtime.model import CompiledModel

pytestmark = pytest.mark.rtl


def _compiled(proto, seed: int):
    """``proto`` compiled for `default` on two seeded calibration batches, and one seeded
    input."""
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    return tcompile(proto, config="default", calibration=cal), x


@pytest.fixture(scope="module")
def case():
    """resnet_tiny on `default` (11 accelerator layers), one seeded input, and its sequential
    RTL and fsim profiles."""
    model, x = _compiled(zoo.resnet_tiny(), seed=11)
    want_f, prof_f = model.run(x, device="fsim", profile=True)
    want_r, prof_r = model.run(x, device="verilator", profile=True)
    for a, b in zip(want_f, want_r, strict=True):
        assert np.array_equal(a, b)
    yield model, x, want_r, prof_r, prof_f
    model.close()


def _dead(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_equal_sequential_rtl_and_fsim(case, workers):
    model, x, want, prof_r, prof_f = case
    got, prof = model.run(x, device="verilator", workers=workers, profile=True)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    run = model.last_parallel
    assert len(run.segments) == workers and run.segments[0][0] == 0
    assert run.segments[-1][1] == len(model.plan.steps)
    assert all(a[1] == b[0] for a, b in zip(run.segments, run.segments[1:]))
    assert sum(c for _, _, c in run.segments) == prof_r.totals()["cycles"]
    assert _dead(run.pids) and not multiprocessing.active_children()
    assert len(prof.layers) == len(prof_r.layers)
    for p, r, f in zip(prof.layers, prof_r.layers, prof_f.layers, strict=True):
        assert (p.name, p.kind) == (r.name, r.kind)
        if p.kind == "accel":
            assert p.cycles == r.cycles == f.cycles and p.predicted == f.cycles, p.name
            assert p.counters == r.counters, p.name
    assert prof.totals()["cycles"] == prof_r.totals()["cycles"]
    # without a profile: the same outputs
    again = model.run(x, device="verilator", workers=workers)
    for a, b in zip(again, want, strict=True):
        assert np.array_equal(a, b)


def test_split_is_balanced_and_contiguous():
    rng = np.random.default_rng(3)
    for _ in range(200):
        costs = [int(c) for c in rng.integers(1, 1000, rng.integers(1, 12))]
        parts = int(rng.integers(1, len(costs) + 1))
        starts = parallel.split(costs, parts)
        assert len(starts) == parts and starts[0] == 0 and starts == sorted(set(starts))
        ends = starts[1:] + [len(costs)]
        worst = max(sum(costs[a:b]) for a, b in zip(starts, ends))
        # brute force over every cut for small cases
        import itertools

        best = min(max(sum(costs[a:b]) for a, b in zip((0,) + cut, cut + (len(costs),)))
                   for cut in itertools.combinations(range(1, len(costs)), parts - 1))
        assert worst == best


def test_corrupted_seed_is_named(case, monkeypatch):
    model, x, *_ = case
    real = parallel._snapshot
    target: dict = {}

    def corrupt(ex, state):
        real(ex, state)
        if "row" not in target:  # the first call is boundary 0; corrupt boundary 1
            target["row"] = 0
            return
        if target["row"] == 0:
            target["row"] = 1
            # the first byte of the last arena tensor written before boundary 1
            name = next(n for n in ex.plan.slots if ex.plan.slots[n].region == "arena"
                        and ex.plan.slots[n].nbytes)
            target["addr"] = ex.addr[name] + 5
            state[ex.addr[name] + 5 - ex.arena.addr] ^= 0x5A

    monkeypatch.setattr(parallel, "_snapshot", corrupt)
    with pytest.raises(DeviceError) as err:
        model.run(x, device="verilator", workers=2)
    text = str(err.value)
    # worker 0 ends on it, worker 1 starts from it (the byte is never rewritten): either reports
    assert ("segment 0 " in text or "segment 1 " in text) and "1 byte(s)" in text, text
    assert f"the first at {target['addr']:#x} (tensor '" in text and ", byte 5 of" in text, text
    assert "differs from the functional simulator" in text
    assert _dead(model.last_parallel.pids) and not multiprocessing.active_children()


def test_stale_on_chip_state_is_detected(case):
    """A stream that reads an input buffer it did not load (it relies on the previous layer's
    leftovers, which SPEC §4 leaves undefined across reset) gives different bytes on the poisoned
    worker than on fsim's sequential run: a DeviceError, never a silently different output."""
    model, x, *_ = case
    plan = model.plan
    model.run(x, device="verilator", workers=2)
    first = model.last_parallel.segments[1][0]
    step = plan.steps[first]
    assert step.kind == "accel"
    insns = from_bytes(step.code, plan.config)
    # keep the synchronisation of every INP load but move no data
    insns = [dataclasses.replace(i, x_size=0, y_size=1, x_pad_0=0, x_pad_1=0, y_pad_0=0,
                                 y_pad_1=0)
             if isinstance(i, MemInsn) and i.opcode == Opcode.LOAD
             and i.memory_type == MemType.INP else i for i in insns]
    steps = list(plan.steps)
    steps[first] = dataclasses.replace(step, code=to_bytes(insns, plan.config))
    stale = CompiledModel(dataclasses.replace(plan, steps=steps), model.input_specs, model.meta)
    try:
        with pytest.raises(DeviceError) as err:
            stale.run(x, device="verilator", workers=2)
        assert "segment 1" in str(err.value), err.value
        assert _dead(stale.last_parallel.pids)
    finally:
        stale.close()


@pytest.mark.parametrize("workers", [2, 3])
def test_a_result_sent_while_the_seed_pass_runs_is_kept(case, monkeypatch, workers):
    """A worker sends its result as soon as it has its "end", while the seed pass may still run
    the later segments (a short RTL segment beside a cold fsim one): the parent keeps it and
    goes on. (It once took any early message for an error and stopped seeding: the later
    workers then waited for their "end" forever.) Here the parent waits, after each "end",
    until that worker's result has arrived."""
    model, x, want, *_ = case
    real = parallel._tell

    def tell(conn, word):
        real(conn, word)
        if word == "end":
            assert conn.poll(60), "the worker sent no result within 60 s of its end"

    def hung(signum, frame):
        raise TimeoutError("the parallel run hung")

    monkeypatch.setattr(parallel, "_tell", tell)
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(90)
    try:
        got = model.run(x, device="verilator", workers=workers)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    assert _dead(model.last_parallel.pids) and not multiprocessing.active_children()


def test_child_error_is_reraised_and_children_reaped(case, monkeypatch):
    model, x, *_ = case

    def boom(dev, rng):
        raise DeviceError("poison failed on purpose")

    monkeypatch.setattr(parallel, "poison", boom)
    with pytest.raises(DeviceError, match=r"segment \d .* in worker pid \d+: poison failed on "
                                          r"purpose"):
        model.run(x, device="verilator", workers=2)
    assert _dead(model.last_parallel.pids) and not multiprocessing.active_children()


def test_interrupt_terminates_children(case, monkeypatch):
    """Ctrl-C in the parent while the workers run (here: during the seed pass, after the fork)."""
    model, x, *_ = case
    real = parallel._snapshot
    calls = []

    def interrupted(ex, state):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(ex, state)

    monkeypatch.setattr(parallel, "_snapshot", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.run(x, device="verilator", workers=2)
    assert _dead(model.last_parallel.pids) and not multiprocessing.active_children()


def test_argument_errors(case):
    model, x, *_ = case
    n_accel = sum(1 for s in model.plan.steps if s.kind == "accel")
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(InputError, match="workers must be an integer >= 1"):
            model.run(x, device="verilator", workers=bad)
    with pytest.raises(InputError, match="must be at most the model's 11 accelerator"):
        model.run(x, device="verilator", workers=n_accel + 1)
    with pytest.raises(InputError, match="device must be 'verilator', not 'fsim'"):
        model.run(x, device="fsim", workers=2)
    dev = open_device("fsim", model.config)
    try:
        with pytest.raises(InputError, match="not a Device object"):
            model.run(x, device=dev, workers=2)
    finally:
        dev.close()
    with pytest.raises(InputError, match="waveform"):
        model.run(x, device="verilator", workers=2, trace="x.fst")
    with pytest.raises(InputError, match="has no option 'bogus'"):
        model.run(x, device="verilator", workers=2, bogus=1)
    with pytest.raises(InputError, match="progress"):
        model.run(x, device="verilator", workers=2, progress=True)
    with pytest.raises(InputError, match="input"):  # feeds are checked first, as on workers=1
        model.run({"nope": x}, device="verilator", workers=2)


@pytest.mark.slow
def test_resnet18_two_workers_equal_sequential_rtl():
    """The bench's case (ResNet-18 224 on `default`, 7.47 M cycles): ~25 s."""
    model, x = _compiled(zoo.resnet18(), seed=2)
    try:
        want, prof_r = model.run(x, device="verilator", profile=True)
        got, prof = model.run(x, device="verilator", workers=2, profile=True)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)
        assert [p.cycles for p in prof.layers] == [r.cycles for r in prof_r.layers]
        assert prof.totals()["cycles"] == prof_r.totals()["cycles"]
        assert _dead(model.last_parallel.pids)
    finally:
        model.close()
