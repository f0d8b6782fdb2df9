"""An exact RTL run of a whole model split across worker processes (``workers=N``).

Every accelerator step of a plan is its own device run, and what a run computes depends only on
the device memory it reads (the on-chip buffers are reloaded by each stream; see below). So a
model run can be cut into N contiguous *segments* of steps, each simulated on the RTL by its own
process, provided each segment starts from the device memory the steps before it would have left:

1. **Seed pass.** The model runs on the functional simulator (the model's cached ``fsim``
   executor, with the verilator device's ``mem_bytes`` and DRAM knobs, so its layout and its
   cycle model match), step by step; the contents of every buffer the executor allocated (arena,
   params, each step's micro-ops and code: all the memory a stream can touch) are copied at each
   segment boundary, and every accelerator step's cycles (the cycle model's) are kept.
2. **Split.** The accelerator steps are divided into N contiguous groups minimising the largest
   group's cycles; a segment is its group plus the CPU steps before it (the last also those
   after). Segment 0 starts at the first step.
3. **Workers.** One forked process per segment creates its own Verilator device from the
   already built harness library, lays the plan out (the same allocations in the same order:
   the same addresses, checked against the seed executor's), fills the on-chip buffers with
   seeded random bytes (the *poison* program: UOP, INP, WGT and ACC loads of random data and an
   ALU pass that writes every out-buffer row), writes the segment's start state into every
   buffer and runs the segment's steps (CPU steps in that worker, as usual).
4. **Checks.** Each worker compares the RTL's device memory at its segment's end with the seed
   pass's copy at that point, byte for byte over every buffer, and every accelerator step's RTL
   cycles with the cycle model's. Any difference is a :class:`~tessera.errors.DeviceError`
   naming the segment, its steps, the first differing tensor (or step's code/micro-ops) and
   offset, and the steps of the segment that write that tensor; nothing is returned then.

Why the outputs equal those of one sequential RTL run (by induction over the segments). Let
``D_i`` be the seed pass's device memory at the start of segment ``i``; ``D_0`` is what a
sequential run starts from (layout plus inputs). Suppose the sequential RTL run reaches segment
``i`` with memory ``D_i``. Worker ``i`` ran the same steps on the same RTL from the same memory
``D_i``; the two runs differ only in the on-chip buffers at the segment's start (the previous
step's leftovers in the sequential run, random bytes in the worker). The worker's result equals
``D_{i+1}``, the functional simulator's result from its *own* leftovers (checked); a segment whose
result depended on the on-chip state at its start would, with overwhelming probability, not give
the same bytes from random buffers as from the simulator's real ones, so the check establishes
that the segment does not depend on it (SPEC §4: buffer contents "are undefined after reset until
written"; every stream the runtime builds loads its micro-ops, the micro-op cache being
invalidated per stream, and its operands before use). Hence the sequential run also leaves
``D_{i+1}``, with the same per-step cycles (checked against the cycle model, which depends on the
program only). After the last segment both hold the same outputs, which are read from the last
worker's device. The one thing not covered is a dependence that random data cannot reveal (an
on-chip value that is read but cannot change any byte of DRAM): such a value changes nothing a
run returns.

Processes are forked (``multiprocessing`` "fork" context): the plan, its JIT-compiled CPU
kernels and the seed copies are inherited, nothing is pickled on the way in; only each segment's
verdict, per-step figures and (for the last) the outputs come back through a pipe. Children are
started after the seed pass, so no simulator or BLAS thread of the parent is active across the
fork; the parent joins every child before it returns, and on any error or interrupt terminates
(then kills) the children still running and joins them. A child's error is re-raised in the
parent as the same Tessera exception type with the child's text and the segment named.
"""

from __future__ import annotations

import mmap
import multiprocessing
import multiprocessing.connection
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import wait as _wait
from typing import Any

import numpy as np

from tessera import errors
from tessera.driver import open_device, unknown_option
from tessera.errors import DeviceError, InputError
from tessera.isa import (
    AluInsn,
    AluOp,
    FinishInsn,
    MemInsn,
    MemType,
    Opcode,
    Uop,
    layout,
    to_bytes,
    uops_to_bytes,
)
from tessera.runtime.executor import Executor
from tessera.runtime.plan import Plan
from tessera.runtime.profile import LayerProfile, Profile

__all__ = ["run_parallel", "split", "ParallelRun", "POISON_SEED"]

POISON_SEED = 0x7E55E7A
"""Seed of the random on-chip contents written before each segment (plus the segment index)."""

_FSIM_OPTIONS = ("mem_bytes", "read_latency", "beats_per_cycle")
_JOIN_SECONDS = 5.0


@dataclass
class ParallelRun:
    """What the last :func:`run_parallel` measured: the segments (first, stop step indices,
    cycles); the parent's wall seconds in the seed pass (cycle predictions, inputs, fsim steps
    and copies), forking, waiting for the workers after the seed pass, and in all; each
    worker's wall seconds in device creation + layout + poison, waiting for its start state,
    its steps, its final compare, and its CPU seconds."""

    segments: list[tuple[int, int, int]] = field(default_factory=list)
    seed_seconds: float = 0.0
    fork_seconds: float = 0.0
    wait_seconds: float = 0.0
    total_seconds: float = 0.0
    worker_setup: list[float] = field(default_factory=list)
    worker_wait: list[float] = field(default_factory=list)
    worker_steps: list[float] = field(default_factory=list)
    worker_compare: list[float] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def split(costs: list[int], parts: int) -> list[int]:
    """Cut ``costs`` into ``parts`` contiguous non-empty groups whose largest sum is as small as
    possible; returns the index of each group's first element (the first is 0)."""
    n = len(costs)
    assert 1 <= parts <= n

    def groups(cap: int) -> list[int]:
        starts, acc = [0], 0
        for k, c in enumerate(costs):
            if acc + c > cap and k > starts[-1]:
                starts.append(k)
                acc = 0
            acc += c
        return starts

    lo, hi = max(costs), sum(costs)
    while lo < hi:  # the smallest cap that needs at most `parts` groups
        mid = (lo + hi) // 2
        if len(groups(mid)) <= parts:
            hi = mid
        else:
            lo = mid + 1
    starts = groups(lo)
    while len(starts) < parts:  # fewer groups than asked: split one (never raises the largest)
        ends = starts[1:] + [n]
        k = next(i for i in range(len(starts)) if ends[i] - starts[i] >= 2)
        starts.insert(k + 1, ends[k] - 1)
    return starts


def _check_workers(workers: object, device: object, n_accel: int,
                   options: Mapping[str, Any], progress: bool) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, not {workers!r}")
    w = int(workers)
    if w == 1:
        return w
    if not isinstance(device, str):
        raise InputError(f"workers={w} needs device='verilator' (each worker opens its own "
                         f"device), not a Device object {device!r}")
    if device != "verilator":
        raise InputError(f"workers={w} runs the RTL: device must be 'verilator', not "
                         f"{device!r}")
    problem = unknown_option("verilator", options)
    if problem:  # before any fork: the children would each fail on it
        raise InputError(problem)
    if options.get("trace") is not None:
        raise InputError(f"workers={w} cannot write a waveform (trace=); run with workers=1")
    if progress:
        raise InputError(f"progress=True is not supported with workers={w}")
    if w > n_accel:
        raise InputError(f"workers must be at most the model's {n_accel} accelerator steps, "
                         f"not {w}")
    return w


def run_parallel(model: Any, feeds: dict[str, np.ndarray], workers: int, device: object,
                 profile: bool, progress: bool, timeout_cycles: int | None,
                 options: dict[str, Any]) -> tuple[list[np.ndarray], Profile | None] | None:
    """Run ``model`` (a :class:`~tessera.runtime.model.CompiledModel`) on ``workers`` Verilator
    devices in parallel, exactly (module docstring); ``feeds`` are already checked. None
    (nothing run) when ``workers`` is a valid 1: the caller runs the model itself."""
    plan: Plan = model.plan
    accel = [k for k, s in enumerate(plan.steps) if s.kind == "accel"]
    w = _check_workers(workers, device, len(accel), options, progress)
    if w == 1:
        return None
    from tessera.driver.verilator import harness_library

    stats = model.last_parallel = ParallelRun()
    t0 = time.perf_counter()
    build_keys = ("trace", "build_dir", "build_options", "verilog")
    lib_key = tuple((k, repr(options.get(k))) for k in build_keys)
    libs = model._harness_libraries
    library = options.get("library")
    if library is None:
        if lib_key not in libs:  # build (or find in the cache) once, before any fork
            libs[lib_key] = harness_library(
                plan.config, build_dir=options.get("build_dir"),
                build_options=options.get("build_options"), verilog=options.get("verilog"))
        library = libs[lib_key]
    child_options = {k: v for k, v in options.items() if k not in build_keys}
    child_options["library"] = library
    fsim_options = {k: options[k] for k in _FSIM_OPTIONS if k in options}

    # 1. split on the cycle model's cycles (they depend on the programs only: computed once),
    # then the seed pass on fsim, copying device memory at the boundaries
    fex: Executor = model._executor("fsim", fsim_options)
    predicted = model._predicted_cycles
    pkey = tuple(sorted((k, repr(v)) for k, v in fsim_options.items()))
    if pkey not in predicted:
        predicted[pkey] = _predict(fex, accel)
    expected: dict[int, int] = predicted[pkey]
    firsts = split([expected[k] for k in accel], w)
    bounds = [0] + [accel[i] for i in firsts[1:]] + [len(plan.steps)]
    fex.write_inputs(feeds)
    sizes = [b.size for b in fex.buffers]
    layout_addrs = [(b.addr, b.size) for b in fex.buffers]
    # the states at the W+1 boundaries, in memory shared with the children (MAP_SHARED)
    shared = mmap.mmap(-1, (w + 1) * sum(sizes))
    states = np.frombuffer(shared, np.uint8).reshape(w + 1, sum(sizes))
    _snapshot(fex, states[0])
    stats.seed_seconds = time.perf_counter() - t0

    # 2. fork the workers at once (their device set-up overlaps the seed pass); worker j starts
    # when the seed pass has reached boundary j and checks its end once it has reached j + 1
    ctx = multiprocessing.get_context("fork")
    procs: list[tuple[Any, Any]] = []
    results: dict[int, dict[str, Any]] = {}
    t1 = time.perf_counter()
    try:
        for j in range(w):
            here, there = ctx.Pipe(duplex=True)
            job = _Job(j, w, bounds[j], bounds[j + 1], states, expected, layout_addrs,
                       child_options, profile, timeout_cycles)
            p = ctx.Process(target=_worker, args=(there, model, job), daemon=True,
                            name=f"tessera-segment-{j}")
            p.start()
            stats.pids.append(p.pid)
            there.close()
            procs.append((p, here))
        _tell(procs[0][1], "start")
        stats.fork_seconds = time.perf_counter() - t1
        t2 = time.perf_counter()
        run_stats: dict = {}
        pending = {conn: j for j, (_, conn) in enumerate(procs)}

        def collect(timeout: float | None) -> None:
            """Read what the workers have sent (waiting up to ``timeout``): a worker's result
            is kept; its error, or its death without a result, is raised at once. (Before its
            "end" a worker sends nothing but an error; after it, its result may come while
            the seed pass still runs the later segments.)"""
            for conn in _wait(list(pending), timeout=timeout):
                j = pending.pop(conn)
                try:
                    msg = conn.recv()
                except EOFError:
                    p = procs[j][0]
                    p.join(_JOIN_SECONDS)
                    raise DeviceError(f"the worker of segment {j} ({_seg_text(plan, bounds, j)}"
                                      f", pid {p.pid}) died without a result (exit code "
                                      f"{p.exitcode})") from None
                if msg["status"] != "ok":
                    raise _reraise(msg, j, _seg_text(plan, bounds, j))
                results[j] = msg

        for j in range(w):
            collect(0)
            fex.run_steps(bounds[j], bounds[j + 1], timeout_cycles=timeout_cycles,
                          stats=run_stats)
            _snapshot(fex, states[j + 1])
            _tell(procs[j][1], "end")
            if j + 1 < w:
                _tell(procs[j + 1][1], "start")
        _check_cycles(plan, run_stats, expected, "fsim")
        t3 = time.perf_counter()
        stats.seed_seconds += t3 - t2
        while pending:
            collect(None)
        stats.wait_seconds = time.perf_counter() - t3
    finally:
        _stop(procs)  # (the shared copies are unmapped once the last reference goes)
    for j in range(w):
        seg_cycles = sum(expected[k] for k in accel if bounds[j] <= k < bounds[j + 1])
        stats.segments.append((bounds[j], bounds[j + 1], seg_cycles))
        r = results[j]
        stats.worker_setup.append(r["setup"])
        stats.worker_wait.append(r["wait"])
        stats.worker_steps.append(r["steps"])
        stats.worker_compare.append(r["compare"])
        stats.worker_cpu.append(r["cpu"])
    stats.total_seconds = time.perf_counter() - t0
    outputs = results[w - 1]["outputs"]
    prof = None
    if profile:
        layers: list[LayerProfile] = [rec for j in range(w) for rec in results[j]["layers"]]
        for rec, k in zip(layers, range(len(plan.steps)), strict=True):
            if k in fex.code:  # the roofline counts the fetched instructions
                rec.program = (fex.code_bytes[k], *fex.code[k])
        prof = Profile("verilator", plan.config, layers, fex.dev.dram_timing)
    return outputs, prof


def _predict(ex: Executor, accel: list[int]) -> dict[int, int]:
    """The cycle model's cycles of every accelerator step as laid out by ``ex`` (an fsim
    executor: its DRAM knobs), or DeviceError for a step it cannot time."""
    from tessera.sim import timing

    cfg, dram = ex.cfg, ex.dev.dram_timing
    out = {}
    for k in accel:
        addr, count = ex.code[k]
        pred = timing.predict(timing.decode_stream(ex.code_bytes[k], cfg), cfg, dram,
                              insn_addr=addr, insn_count=count)
        if pred.cycles is None:
            raise DeviceError(f"step {k} ({ex.plan.steps[k].name!r}): the cycle model gives no "
                              f"cycle count ({pred.blocked}); its stream would deadlock the "
                              f"RTL's bounded queues (spec-notes 2): run it with workers=1")
        out[k] = int(pred.cycles)
    return out


def _parts(ex: Executor, state: np.ndarray):
    """(device view, the part of ``state`` that holds it) for every buffer of ``ex``."""
    at = 0
    for buf in ex.buffers:
        yield ex.dev.host_view(buf), state[at:at + buf.size]
        at += buf.size


def _snapshot(ex: Executor, state: np.ndarray) -> None:
    for view, part in _parts(ex, state):
        part[:] = view


def _restore(ex: Executor, state: np.ndarray) -> None:
    for view, part in _parts(ex, state):
        view[:] = part


def _tell(conn: Any, word: str) -> None:
    """Send ``word`` to a worker; one that has already failed (closed its end) has sent its
    error, which the parent reads next."""
    try:
        conn.send(word)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _seg_text(plan: Plan, bounds: list[int], j: int) -> str:
    a, b = bounds[j], bounds[j + 1] - 1
    return f"steps {a}..{b}, {plan.steps[a].name!r} .. {plan.steps[b].name!r}"


def _stop(procs: list[tuple[Any, Any]]) -> None:
    """Terminate the children still running, then join all (kill what does not stop)."""
    for p, _ in procs:
        if p.is_alive():
            p.terminate()
    for p, conn in procs:
        p.join(_JOIN_SECONDS)
        if p.is_alive():
            p.kill()
            p.join()
        conn.close()


def _reraise(msg: dict[str, Any], j: int, seg: str) -> BaseException:
    cls = getattr(errors, msg["type"], None)
    text = f"segment {j} ({seg}) in worker pid {msg['pid']}: {msg['text']}"
    if isinstance(cls, type) and issubclass(cls, errors.TesseraError):
        if issubclass(cls, (DeviceError, errors.SimError)):
            return cls(text, code=msg.get("code"), pc=msg.get("pc"))
        try:
            return cls(text)
        except TypeError:
            pass
    return DeviceError(f"{text} ({msg['type']})\n{msg['traceback']}")


@dataclass
class _Job:
    index: int
    count: int
    start: int
    stop: int
    states: np.ndarray  # (W+1, bytes) in shared memory: row j is boundary j
    expected: dict[int, int]
    layout: list[tuple[int, int]]
    options: dict[str, Any]
    profile: bool
    timeout_cycles: int | None


def _worker(conn: Any, model: Any, job: _Job) -> None:
    """A forked child: run one segment on a fresh Verilator device, check it, send the verdict."""
    dev = ex = None
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        plan: Plan = model.plan
        dev = open_device("verilator", plan.config, **job.options)
        ex = Executor(plan, dev)
        got = [(b.addr, b.size) for b in ex.buffers]
        if got != job.layout:
            raise DeviceError(f"the worker's layout differs from the seed pass's: buffers "
                              f"{got[:4]}... vs {job.layout[:4]}...")
        poison(dev, np.random.default_rng(POISON_SEED + job.index))
        t1 = time.perf_counter()
        _expect(conn, "start")
        t2 = time.perf_counter()
        _restore(ex, job.states[job.index])
        run_stats: dict = {}
        layers = ex.run_steps(job.start, job.stop, profile=job.profile,
                              timeout_cycles=job.timeout_cycles, stats=run_stats,
                              predicted=job.expected)
        t3 = time.perf_counter()
        _check_cycles(plan, run_stats, job.expected, "the RTL")
        _expect(conn, "end")
        t4 = time.perf_counter()
        _compare(ex, job)
        outputs = ex.read_outputs() if job.index == job.count - 1 else None
        t5 = time.perf_counter()
        for rec in layers:
            rec.program = None  # the parent has the code; do not send it back
        conn.send({"status": "ok", "outputs": outputs, "layers": layers, "setup": t1 - t0,
                   "wait": t2 - t1, "steps": t3 - t2, "compare": t5 - t4,
                   "cpu": time.process_time() - c0})
    except BaseException as exc:  # everything goes back to the parent, which re-raises it
        conn.send({"status": "error", "type": type(exc).__name__, "text": str(exc),
                   "code": getattr(exc, "code", None), "pc": getattr(exc, "pc", None),
                   "pid": os.getpid(), "traceback": traceback.format_exc()})
    finally:
        if ex is not None:
            ex.close()
        if dev is not None:
            dev.close()
        conn.close()


def _expect(conn: Any, word: str) -> None:
    msg = conn.recv()
    assert msg == word, (msg, word)


def _check_cycles(plan: Plan, got: dict, expected: dict[int, int], who: str) -> None:
    """Every accelerator step in ``got`` (step -> RunStats) ran in the cycle model's cycles."""
    for k, st in got.items():
        if st.cycles != expected[k]:
            raise DeviceError(f"step {k} ({plan.steps[k].name!r}): {who} took {st.cycles} "
                              f"cycles, the cycle model predicted {expected[k]}")


def _compare(ex: Executor, job: _Job) -> None:
    """Device memory after the segment must equal the seed pass's, byte for byte."""
    for buf, (got, want) in zip(ex.buffers, _parts(ex, job.states[job.index + 1]),
                                strict=True):
        if np.array_equal(got, want):
            continue
        diff = np.flatnonzero(got != want)
        addr = buf.addr + int(diff[0])
        raise DeviceError(f"after the segment's last step the RTL's device memory differs from "
                          f"the functional simulator's: {diff.size} byte(s) in the buffer at "
                          f"{buf.addr:#x}, the first at {addr:#x} ({describe(ex, addr, job)}: "
                          f"RTL {int(got[diff[0]])}, fsim {int(want[diff[0]])})")


def describe(ex: Executor, addr: int, job: _Job | None = None) -> str:
    """What device address ``addr`` holds in ``ex``'s layout: a tensor and byte offset (and
    the steps of ``job``'s segment that write it), or a step's code or micro-ops."""
    plan = ex.plan
    # arena slots share memory by liveness: prefer the tensors this segment's steps write
    holders = [(name, base) for name, base in ex.addr.items()
               if base <= addr < base + plan.slots[name].nbytes]
    steps = range(job.start, job.stop) if job is not None else range(0)
    written = [(name, base, [plan.steps[k].name for k in steps if name in plan.steps[k].outputs])
               for name, base in holders]
    written = [h for h in written if h[2]] or [(n, b, []) for n, b in holders]
    if written:
        parts = []
        for name, base, writers in written[-2:]:
            text = f"tensor {name!r}, byte {addr - base} of {plan.slots[name].nbytes}"
            if job is not None:
                text += (f", written in this segment by {writers}" if writers
                         else ", written by no step of this segment")
            parts.append(text)
        return "; ".join(parts)
    for k, (caddr, count) in ex.code.items():
        if caddr <= addr < caddr + 16 * count:
            return f"the code of step {k} ({plan.steps[k].name!r}), byte {addr - caddr}"
    for k, uaddr in ex.uop_addr.items():
        if uaddr <= addr < uaddr + max(len(plan.steps[k].uop_words), 4):
            return f"the micro-ops of step {k} ({plan.steps[k].name!r}), byte {addr - uaddr}"
    return "no tensor: padding between slots"


def poison(dev: Any, rng: np.random.Generator) -> None:
    """Fill the device's on-chip buffers with random bytes from ``rng``: UOP, INP, WGT and ACC
    loads of random DRAM data, and an ALU pass (ADD of 0 over every accumulator row with an out
    row) that writes every out-buffer row the low bytes of those accumulators. Leaves device
    memory and its allocations as they were."""
    cfg = dev.config
    lim = layout(cfg).limits
    types = [(MemType.INP, cfg.inp_depth, cfg.inp_elem_bytes),
             (MemType.WGT, cfg.wgt_depth, cfg.wgt_elem_bytes),
             (MemType.ACC, cfg.acc_depth, cfg.acc_elem_bytes),
             (MemType.UOP, cfg.uop_depth, 4)]
    data_bytes = max(d * e for _, d, e in types)
    rows = min(cfg.acc_depth, cfg.out_depth)
    chunk = min(rows, lim.max_iter)
    alu_uops = [Uop(dst_idx=i, src_idx=i, wgt_idx=0) for i in range(0, rows, chunk)]
    uop_off = -(-data_bytes // 4096) * 4096
    uop_bytes = uops_to_bytes(alu_uops, cfg)
    insns: list = []

    def load(mt: int, n: int, elem: int, dram: int, base: int = 0) -> None:
        step = min(n, lim.max_x_size)
        for s in range(0, n, step):
            x = min(step, n - s)
            insns.append(MemInsn(opcode=Opcode.LOAD, memory_type=mt, sram_base=base + s,
                                 dram_base=dram // elem + s, y_size=1, x_size=x, x_stride=x))

    buf = dev.alloc(uop_off + len(uop_bytes) + 4096, align=max(4096, cfg.dram_align))
    try:
        dev.write(buf.addr, rng.integers(0, 256, data_bytes, dtype=np.uint8))
        dev.write(buf.addr + uop_off, uop_bytes)
        for mt, n, elem in types[:3]:
            load(mt, n, elem, buf.addr)
        load(MemType.UOP, len(alu_uops), 4, buf.addr + uop_off)
        for u, first in enumerate(range(0, rows, chunk)):
            insns.append(AluInsn(uop_bgn=u, uop_end=u + 1, iter_out=min(chunk, rows - first),
                                 dst_factor_out=1, src_factor_out=1, alu_opcode=AluOp.ADD,
                                 use_imm=1, imm=0))
        load(MemType.UOP, cfg.uop_depth, 4, buf.addr)
        code = to_bytes(insns + [FinishInsn()], cfg)
        cbuf = dev.alloc(len(code), align=max(4096, cfg.dram_align))
        try:
            dev.write(cbuf.addr, code)
            dev.run(cbuf.addr, len(insns) + 1)
        finally:
            dev.free(cbuf)
    finally:
        dev.free(buf)
