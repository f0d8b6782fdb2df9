"""fsim's token schedule: deadlocks as SPEC §6 error 7, and timeouts before anything executes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode, to_bytes
from tessera.regs import ErrorCode, Reg
from tessera.sim import timing

TINY = Config.preset("tiny")

# SPEC §5: (module, flag) -> queue, queues L2C 0, C2L 1, C2S 2, S2C 3.
_POPS = {0: {"pop_next": 1}, 1: {"pop_prev": 0, "pop_next": 3}, 2: {"pop_prev": 2}}
_PUSHES = {0: {"push_next": 0}, 1: {"push_prev": 1, "push_next": 2}, 2: {"push_prev": 3}}


def _sync_insn(module: int, flags: dict[str, int]):
    """An instruction of ``module`` that moves no data, with the given dependency flags."""
    if module == 0:
        return MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0, **flags)
    if module == 2:
        return MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, x_size=0, **flags)
    return GemmInsn(uop_bgn=0, uop_end=0, **flags)


def _random_flag_program(rng: np.random.Generator) -> list[tuple[int, dict[str, int]]]:
    """(module, flags) per pc: per-module streams with random flags, balanced so every queue
    sees as many pops as pushes (these still deadlock when the order is cyclic), sometimes with
    one flag flipped, then randomly interleaved."""
    streams = []
    for m in range(3):
        n = int(rng.integers(1, 14))
        names = list(_POPS[m]) + list(_PUSHES[m])
        streams.append([{k: int(rng.random() < 0.35) for k in names} for _ in range(n)])
    for q in range(4):
        (pm, pf), = [(m, fl) for m in range(3) for fl, t in _PUSHES[m].items() if t == q]
        (cm, cf), = [(m, fl) for m in range(3) for fl, t in _POPS[m].items() if t == q]
        while True:
            pushes = [i for i, d in enumerate(streams[pm]) if d[pf]]
            pops = [i for i, d in enumerate(streams[cm]) if d[cf]]
            if len(pushes) == len(pops):
                break
            if len(pushes) > len(pops):
                streams[pm][pushes[int(rng.integers(len(pushes)))]][pf] = 0
            else:
                streams[cm][pops[int(rng.integers(len(pops)))]][cf] = 0
    if rng.random() < 0.4:
        m = int(rng.integers(3))
        d = streams[m][int(rng.integers(len(streams[m])))]
        k = list(d)[int(rng.integers(len(d)))]
        d[k] ^= 1
    order = rng.permutation(np.repeat(np.arange(3), [len(s) for s in streams]))
    return [(int(m), streams[m].pop(0)) for m in order]


def _oracle(prog: list[tuple[int, dict[str, int]]], cap: int) -> int | None:
    """Independent reading of SPEC §5: a cycle-stepped machine in which every module makes at
    most one move per cycle, decided on the queue counts at the start of the cycle (pop all
    flagged queues -> execute; push all flagged queues -> retire). Returns the deadlock pc (the
    lowest pc among the unfinished modules' current instructions) or None."""
    pcs = [[pc for pc, (m, _) in enumerate(prog) if m == k] for k in range(3)]
    ptr, popped, count = [0, 0, 0], [False] * 3, [0] * 4
    while any(ptr[m] < len(pcs[m]) for m in range(3)):
        moves = []
        for m in range(3):
            if ptr[m] == len(pcs[m]):
                continue
            flags = prog[pcs[m][ptr[m]]][1]
            if not popped[m]:
                qs = [q for fl, q in _POPS[m].items() if flags.get(fl)]
                if all(count[q] > 0 for q in qs):
                    moves.append((m, qs, -1))
            else:
                qs = [q for fl, q in _PUSHES[m].items() if flags.get(fl)]
                if all(count[q] < cap for q in qs):
                    moves.append((m, qs, +1))
        if not moves:
            return min(pcs[m][ptr[m]] for m in range(3) if ptr[m] < len(pcs[m]))
        for m, qs, delta in moves:
            for q in qs:
                count[q] += delta
            if delta > 0:
                ptr[m] += 1
            popped[m] = delta < 0
    return None


def _run_sync(cfg: Config, prog, timeout=None):
    dev = open_device("fsim", cfg)
    code = to_bytes([_sync_insn(m, fl) for m, fl in prog] + [FinishInsn()], cfg)
    buf = dev.alloc(len(code))
    dev.write(buf.addr, code)
    return dev, buf, dev.run(buf.addr, len(prog) + 1, timeout_cycles=timeout)


@pytest.mark.parametrize("cap", [1, 2, 8])
def test_random_flag_programs_deadlock_exactly_like_the_oracle(cap):
    cfg = dataclasses.replace(TINY, dep_queue_depth=cap)
    outcomes = {"deadlock": 0, "done": 0}
    for seed in range(150):
        prog = _random_flag_program(np.random.default_rng(seed))
        want = _oracle(prog, cap)
        if want is None:
            _, _, stats = _run_sync(cfg, prog)
            assert stats.counters["insns_retired"] == len(prog) + 1, f"seed {seed}"
            outcomes["done"] += 1
            continue
        with pytest.raises(DeviceError, match=r"error 7 \(token deadlock\)") as info:
            _run_sync(cfg, prog)
        assert (info.value.code, info.value.pc) == (ErrorCode.TOKEN_DEADLOCK, want), \
            f"seed {seed}: {info.value}"
        outcomes["deadlock"] += 1
    assert min(outcomes.values()) >= 15, outcomes  # both outcomes are exercised


def test_deadlock_registers_and_message():
    # load 0 pushes L2C; compute 1 pops L2C and S2C (S2C never comes); store 2 pops C2S.
    prog = [(0, {"push_next": 1}), (1, {"pop_prev": 1, "pop_next": 1, "push_next": 1}),
            (2, {"pop_prev": 1})]
    with pytest.raises(DeviceError) as info:
        _run_sync(TINY, prog)
    assert (info.value.code, info.value.pc) == (7, 1)
    assert str(info.value) == ("error 7 (token deadlock) at instruction 1: compute instruction 1 "
                               "waits to pop S2C, which is empty; store instruction 2 waits to "
                               "pop C2S, which is empty")


def test_device_registers_read_the_deadlock_then_recover():
    dev = open_device("fsim", TINY)
    bad = to_bytes([_sync_insn(2, {"pop_prev": 1}), _sync_insn(1, {"pop_prev": 1}),
                    FinishInsn()], TINY)
    buf = dev.alloc(4096)
    dev.write(buf.addr, bad)
    dev.write_reg(Reg.INSN_ADDR, buf.addr)
    dev.write_reg(Reg.INSN_COUNT, 3)
    dev.write_reg(Reg.CONTROL, 1)  # a register-level start records the error like hardware
    assert dev.read_reg(Reg.CONTROL) & 0b110 == 0b110
    assert (dev.read_reg(Reg.ERROR_CODE), dev.read_reg(Reg.ERROR_PC)) == (7, 0)
    assert "store instruction 0 waits to pop C2S" in str(dev.last_error)
    dev.write(buf.addr, to_bytes([FinishInsn()], TINY))
    dev.run(buf.addr, 1)
    assert dev.read_reg(Reg.CONTROL) & 0b110 == 0b010 and dev.read_reg(Reg.ERROR_CODE) == 0


def test_executed_instruction_waiting_to_push_is_blocked():
    """Pops happen before execution and pushes after it (SPEC §5). With queues of 2: L2C and
    C2L start full; compute 5 pops L2C, executes, then waits on the full C2L; that frees L2C,
    so load 4 pushes and load 6 drains C2L. (Checking the push before popping would deadlock.)"""
    cfg = dataclasses.replace(TINY, dep_queue_depth=2)
    fill = [(0, {"push_next": 1}), (0, {"push_next": 1}), (1, {"push_prev": 1}),
            (1, {"push_prev": 1}), (0, {"push_next": 1}), (1, {"pop_prev": 1, "push_prev": 1})]
    prog = fill + [(0, {"pop_next": 1})]
    assert _oracle(prog, 2) is None
    _, _, stats = _run_sync(cfg, prog)
    assert stats.counters["insns_retired"] == len(prog) + 1
    # If load 6 pushes L2C instead, it blocks on the full L2C while compute 5 (executed) waits
    # to push C2L: a deadlock whose lowest blocked pc is the compute instruction's.
    stuck = fill + [(0, {"push_next": 1})]
    assert _oracle(stuck, 2) == 5
    with pytest.raises(DeviceError) as info:
        _run_sync(cfg, stuck)
    assert (info.value.code, info.value.pc) == (7, 5)
    assert str(info.value).endswith("load instruction 6 waits to push L2C, which is full (2 "
                                    "tokens); compute instruction 5 waits to push C2L, which "
                                    "is full (2 tokens)")


# -- timeouts ------------------------------------------------------------------------------


def _gemm_program(cfg: Config, iters: int):
    """One GEMM of ``iters`` x 4 x 2 steps over a 2-uop kernel, then FINISH."""
    return [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=0, y_size=1,
                    x_size=2, x_stride=2),
            GemmInsn(reset=1, uop_bgn=0, uop_end=2, iter_out=iters, iter_in=4), FinishInsn()]


def test_timeout_refuses_a_long_run_before_executing_it():
    dev = open_device("fsim", TINY)
    uops, out = dev.alloc(4096), dev.alloc(4096)
    dev.write(uops.addr, b"\0" * 8)
    insns = _gemm_program(TINY, 10_000)
    insns[0] = dataclasses.replace(insns[0], dram_base=uops.addr // 4)
    insns[1] = dataclasses.replace(insns[1], push_next=1)
    insns.insert(2, MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, pop_prev=1,
                            dram_base=out.addr // TINY.out_elem_bytes, y_size=1, x_size=2,
                            x_stride=2))
    dev.write(out.addr, b"\x55" * 8)
    code = to_bytes(insns, TINY)
    pbuf = dev.alloc(len(code))
    dev.write(pbuf.addr, code)
    # the device times out against the cycle model's prediction (at least the GEMM's steps)
    need = timing.predict(dev.sim.prepare(pbuf.addr, len(insns)), TINY,
                          insn_addr=pbuf.addr, insn_count=len(insns)).cycles
    assert need > 10_000 * 8
    with pytest.raises(DeviceError, match=f"would take {need} cycles > "
                                          f"timeout_cycles={need - 1}") as info:
        dev.run(pbuf.addr, len(insns), timeout_cycles=need - 1)
    assert info.value.code is None and info.value.pc is None
    assert dev.read(out.addr, 8) == b"\x55" * 8  # nothing executed: the STORE did not write
    assert dev.read_reg(Reg.CONTROL) == 0 and dev.read_reg(Reg.ERROR_CODE) == 0
    stats = dev.run(pbuf.addr, len(insns), timeout_cycles=need)  # exactly the prediction: runs
    assert stats.cycles == need
    assert stats.counters["gemm_reset_steps"] == 10_000 * 8
    assert dev.read(out.addr, 8) == b"\0" * 8


def test_timeout_of_a_deadlock_counts_only_what_executes():
    """A program that deadlocks after a long GEMM: the time to the deadlock covers the GEMM
    (which executes) but not the much longer one stuck behind the deadlock."""
    dev = open_device("fsim", TINY)
    uops = dev.alloc(4096)
    dev.write(uops.addr, b"\0" * 8)
    insns = _gemm_program(TINY, 1000)[:2]
    insns[0] = dataclasses.replace(insns[0], dram_base=uops.addr // 4)
    insns += [GemmInsn(uop_bgn=0, uop_end=2, iter_out=5000, iter_in=4, reset=1, pop_prev=1),
              FinishInsn()]
    code = to_bytes(insns, TINY)
    pbuf = dev.alloc(len(code))
    dev.write(pbuf.addr, code)
    pred = timing.predict(dev.sim.prepare(pbuf.addr, 4), TINY, insn_addr=pbuf.addr,
                          insn_count=4)
    assert pred.cycles is None and 8000 < pred.blocked_at < 40_000
    with pytest.raises(DeviceError, match="timed out"):
        dev.run(pbuf.addr, 4, timeout_cycles=pred.blocked_at - 1)
    with pytest.raises(DeviceError, match="token deadlock") as info:
        dev.run(pbuf.addr, 4, timeout_cycles=pred.blocked_at)
    assert (info.value.code, info.value.pc) == (7, 2)
