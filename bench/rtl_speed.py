"""RTL speed bench (default config): measured in one run, printed side by side.

* GEMM throughput: a compute-bound stream of GEMM instructions (operands already in SRAM from a
  set-up run) — GEMM micro-op steps per cycle (target >= 0.95);
* load efficiency: streaming INP and WGT loads — payload bytes per cycle as a fraction of the
  memory bus width (target >= 0.9);
* simulator speed: Verilated cycles per wall-clock second on one core (target >= 300,000),
  and the functional simulator's wall time on the same GEMM stream, with the ratio;
* ResNet-18 (224x224, ``tessera.compile`` of ``tessera.compiler.zoo.resnet18``) on the RTL:
  cycles per second of the whole run and of the simulator alone (time inside the device's
  runs), for the current build options and, in the same run, for the build options of before
  issue 9 part 5 (``REFERENCE_OPTIONS``), with the cycle totals of both (they must be equal)
  and the issue's measured starting point (0.92 M cycles/s). Target: >= 1.5 M cycles/s;
* ResNet-18 split across ``--workers N`` (default 2) worker processes
  (``model.run(..., workers=N)``, :mod:`tessera.runtime.parallel`): wall-clock cycles per second
  of the whole parallel run (seed pass, fork, device set-up, the segments, the compares), its
  cycles (equal to the sequential run's) and outputs (equal), the cycles per CPU second of each
  worker, and the overheads; ``--rounds R`` (default 3) alternates sequential and parallel runs
  and prints each figure's median and range. **The target line (>= 1.5 M cycles/s) is this
  wall-clock figure with N worker processes on this machine** (it needs N free cores: the bench
  prints the CPU count and the load average; measure on a quiet machine);
* a token deadlock: cycles and wall time until the RTL reports error 7 (before its detector,
  the run went on to the 50 M-cycle default timeout: 26-52 s).

The current build is profile-guided by default (``BuildOptions(pgo=True)``, trained on
``tessera.driver.verilator_pgo``'s workload; the first such build of a config takes 1.5-3
minutes and is cached); ``--no-pgo`` uses the device's default build (``BuildOptions()``, what
``model.run(device="verilator")`` uses unless told otherwise) and ``--threads N`` an N-thread
Verilator model (each model thread spin-waits for the others: on this 2-core machine 2 threads
ran ResNet-18 at 0.11 M cycles/s even when quiet). The bench prints what it used.

Run: ``python bench/rtl_speed.py [--config default] [--read-latency 16] [--no-pgo]
[--threads 1] [--workers 2] [--rounds 3] [--no-resnet]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np

import tessera
from tessera.config import Config
from tessera.driver import Device, DeviceError, open_device
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode, Uop, to_bytes, uops_to_bytes
from tessera.sim.verilator_build import BuildOptions

REFERENCE_OPTIONS = BuildOptions(
    opt_fast="-O2", opt_slow="-O1", opt_global="-O2",
    verilator_args=("-O3", "--x-assign", "fast", "--x-initial", "fast", "--threads", "1",
                    "-Wno-fatal", "-Wno-lint", "-Wno-style", "--no-timing"),
    defines=(("TH_TWO_EVALS", "1"),), registered_reset=False, pgo=False, fast_primitives=False)
"""The build before issue 9 part 5: the same Verilator and C++ options, the harness's two
model evaluations per cycle (``TH_TWO_EVALS``; the current harness skips the low-clock one
while no input has a combinational path) and ``rst`` straight to the core (the current build
registers it once, :func:`~tessera.sim.verilator_build.registered_reset`), no profile-guided
compilation and Verilator's own sign extensions and signed products (the current build compiles
the core with ``sim/native/verilated_fastops.h``). The core's Verilog is today's in both builds."""
ISSUE_START = 0.92e6  # cycles/s of the whole ResNet-18 run when issue 9 was written


def _program(dev: Device, insns) -> tuple[int, int]:
    code = to_bytes(list(insns) + [FinishInsn()], dev.config)
    buf = dev.alloc(len(code))
    dev.write(buf.addr, code)
    return buf.addr, len(insns) + 1


def _setup(dev: Device, n_uops: int) -> None:
    """Fill inp, wgt and uop buffers (the compute stream reads them without loading)."""
    cfg, rng = dev.config, np.random.default_rng(0)
    n_inp, n_wgt = min(cfg.inp_depth, 256), min(cfg.wgt_depth, 256)
    inp = dev.alloc(n_inp * cfg.inp_elem_bytes)
    wgt = dev.alloc(n_wgt * cfg.wgt_elem_bytes)
    dev.write(inp.addr, rng.integers(0, 256, inp.size, dtype=np.uint8))
    dev.write(wgt.addr, rng.integers(0, 256, wgt.size, dtype=np.uint8))
    uops = [Uop(dst_idx=k, src_idx=k % n_inp, wgt_idx=(3 * k) % n_wgt) for k in range(n_uops)]
    ubuf = dev.alloc(4 * n_uops)
    dev.write(ubuf.addr, uops_to_bytes(uops, cfg))
    addr, n = _program(dev, [
        MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=ubuf.addr // 4,
                y_size=1, x_size=n_uops, x_stride=n_uops),
        MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, dram_base=inp.addr //
                cfg.inp_elem_bytes, y_size=1, x_size=n_inp, x_stride=n_inp),
        MemInsn(opcode=Opcode.LOAD, memory_type=MemType.WGT, dram_base=wgt.addr //
                cfg.wgt_elem_bytes, y_size=1, x_size=n_wgt, x_stride=n_wgt),
    ])
    dev.run(addr, n)


def gemm_stream(cfg: Config, n_uops: int = 64, iters: tuple[int, int] = (16, 8),
                n_insns: int = 8) -> list:
    """``n_insns`` GEMMs of ``iters[0] x iters[1] x n_uops`` steps, no hazards nearer than
    ``n_uops`` steps."""
    it_out, it_in = iters
    return [GemmInsn(uop_bgn=0, uop_end=n_uops, iter_out=it_out, iter_in=it_in,
                     dst_factor_out=n_uops, dst_factor_in=0, src_factor_out=1, src_factor_in=2,
                     wgt_factor_out=1, wgt_factor_in=0)
            for _ in range(n_insns)]


def load_stream(dev: Device) -> tuple[int, int, int]:
    """A program of large INP and WGT loads; returns (insn_addr, insn_count, payload bytes)."""
    cfg = dev.config
    n_inp, n_wgt = cfg.inp_depth, min(cfg.wgt_depth, 512)
    inp = dev.alloc(n_inp * cfg.inp_elem_bytes)
    wgt = dev.alloc(n_wgt * cfg.wgt_elem_bytes)
    insns = []
    for _ in range(2):
        insns.append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP,
                             dram_base=inp.addr // cfg.inp_elem_bytes, y_size=1, x_size=n_inp,
                             x_stride=n_inp))
        insns.append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.WGT,
                             dram_base=wgt.addr // cfg.wgt_elem_bytes, y_size=1, x_size=n_wgt,
                             x_stride=n_wgt))
    addr, n = _program(dev, insns)
    return addr, n, 2 * (inp.size + wgt.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--read-latency", type=int, default=16)
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 figure")
    ap.add_argument("--threads", type=int, default=1,
                    help="Verilator model threads of the current build (default 1)")
    ap.add_argument("--pgo", dest="pgo", action="store_true", default=True,
                    help="profile-guided current build (BuildOptions(pgo=True); the default)")
    ap.add_argument("--no-pgo", dest="pgo", action="store_false",
                    help="the device's default build (BuildOptions()) as the current build")
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes of the parallel ResNet-18 run (default 2)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating sequential/parallel ResNet-18 rounds (default 3)")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, not {args.threads}")
    if args.workers < 2:
        ap.error(f"--workers must be >= 2, not {args.workers}")
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, not {args.rounds}")
    cfg = Config.resolve(args.config)
    print(f"config {args.config}: {cfg.summary()}")
    current = with_threads(BuildOptions(pgo=args.pgo), args.threads)
    print(f"current build: {args.threads} Verilator model thread(s), pgo={current.pgo}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    t0 = time.perf_counter()
    vdev = open_device("verilator", cfg, mem_bytes=1 << 26, read_latency=args.read_latency,
                       build_options=current)
    print(f"verilator device ready in {time.perf_counter() - t0:.1f} s (build or cache hit)")
    fdev = open_device("fsim", cfg, mem_bytes=1 << 26)

    # -- GEMM stream ----------------------------------------------------------------------------
    stream = gemm_stream(cfg)
    results = {}
    for dev in (vdev, fdev):
        _setup(dev, 64)
        addr, n = _program(dev, stream)
        dev.run(addr, n)  # warm-up (first-touch pages, fsim caches)
        t = time.perf_counter()
        stats = dev.run(addr, n)
        results[dev.kind] = (stats, time.perf_counter() - t)
    vstats, vwall = results["verilator"]
    fstats, fwall = results["fsim"]
    steps = vstats.counters["gemm_steps"]
    assert steps == fstats.counters["gemm_steps"]
    print(f"GEMM stream: {steps} micro-op steps in {vstats.cycles} cycles = "
          f"{steps / vstats.cycles:.3f} uops/cycle (target >= 0.95)")
    print(f"Verilated speed: {vstats.cycles / vwall:,.0f} cycles/s on one core "
          f"(target >= 300,000); wall {vwall * 1e3:.1f} ms")
    print(f"fsim on the same stream: {fwall * 1e3:.1f} ms; verilator/fsim wall ratio "
          f"{vwall / fwall:.1f}x")

    # -- load stream ----------------------------------------------------------------------------
    addr, n, payload = load_stream(vdev)
    vdev.run(addr, n)
    t = time.perf_counter()
    stats = vdev.run(addr, n)
    lwall = time.perf_counter() - t
    assert stats.counters["dram_read_bytes"] == payload
    bpc = payload / stats.cycles
    print(f"load stream: {payload} bytes in {stats.cycles} cycles = {bpc:.2f} bytes/cycle = "
          f"{bpc / cfg.mem_bus_bytes:.3f} of the {cfg.mem_bus_bits}-bit bus (target >= 0.9); "
          f"read latency {args.read_latency} cycles; {stats.cycles / lwall:,.0f} cycles/s")
    vdev.close()
    fdev.close()

    deadlock_latency(cfg, current)
    if not args.no_resnet:
        resnet18_speed(cfg, current, args.workers, args.rounds)


def with_threads(options: BuildOptions, threads: int) -> BuildOptions:
    """``options`` with Verilator's ``--threads`` set to ``threads``."""
    args = list(options.verilator_args)
    if "--threads" in args:
        args[args.index("--threads") + 1] = str(threads)
    else:
        args += ["--threads", str(threads)]
    return dataclasses.replace(options, verilator_args=tuple(args))


def deadlock_latency(cfg: Config, options: BuildOptions) -> None:
    """Wall time and cycles until a token deadlock is reported (no timeout given)."""
    with open_device("verilator", cfg, mem_bytes=1 << 24, build_options=options) as dev:
        addr, n = _program(dev, [GemmInsn(uop_bgn=0, uop_end=0, pop_prev=1)])
        t = time.perf_counter()
        try:
            dev.run(addr, n)
            raise AssertionError("the deadlocking program ran to completion")
        except DeviceError as exc:
            wall = time.perf_counter() - t
            assert exc.code == 7, exc
        print(f"token deadlock: error 7 after {dev.read_reg(0x14)} cycles, {wall * 1e3:.1f} ms "
              f"wall (before the detector: the 50 M-cycle default timeout, 26-52 s)")


class _Timed:
    """Wraps a Device's ``run`` to add up the cycles and the wall time inside the simulator."""

    def __init__(self, dev: Device):
        self.dev, self.cycles, self.wall, self._run = dev, 0, 0.0, dev.run
        dev.run = self.run

    def run(self, *args, **kwargs):
        stats = self._run(*args, **kwargs)
        self.cycles += stats.cycles
        self.wall += stats.wall_seconds
        return stats


def _spread(values: list[float]) -> str:
    """Median and range of ``values`` (one value: itself)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def resnet18_speed(cfg: Config, current: BuildOptions, workers: int, rounds: int) -> None:
    from tessera.compiler import zoo

    proto = zoo.resnet18()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config=cfg, calibration=cal)
    want = model.run(x, device="fsim")

    def equal(got) -> bool:
        return all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))

    # the reference build, once
    ref = open_device("verilator", cfg, build_options=REFERENCE_OPTIONS)
    timed = _Timed(ref)
    model.run(x, device=ref)  # warm-up: page faults, CPU kernel JIT
    timed.cycles, timed.wall = 0, 0.0
    t, c = time.perf_counter(), time.process_time()
    assert equal(model.run(x, device=ref)), "RTL (reference build) differs from fsim"
    ref_row = (timed.cycles, time.perf_counter() - t, timed.wall, time.process_time() - c)

    # the current build: sequential and parallel runs, alternating
    dev = open_device("verilator", cfg, build_options=current)
    timed = _Timed(dev)
    model.run(x, device=dev)  # warm-up
    model.run(x, device="verilator", build_options=current, workers=workers)  # warm-up
    seq, par = [], []
    for _ in range(rounds):
        timed.cycles, timed.wall = 0, 0.0
        t, c = time.perf_counter(), time.process_time()
        assert equal(model.run(x, device=dev)), "RTL differs from fsim"
        seq.append((timed.cycles, time.perf_counter() - t, timed.wall, time.process_time() - c))
        t = time.perf_counter()
        got = model.run(x, device="verilator", build_options=current, workers=workers)
        wall = time.perf_counter() - t
        run = model.last_parallel
        par.append((sum(cyc for _, _, cyc in run.segments), wall, equal(got), run))
    model.close()  # its executors free their buffers on the devices: close those after it
    dev.close()
    ref.close()

    label = f"current build{', pgo' if current.pgo else ''}"
    cycles = seq[0][0]
    assert all(r[0] == cycles for r in seq), "sequential runs differ in cycles"
    s_wall = [cyc / tot / 1e6 for cyc, tot, _, _ in seq]
    s_sim = [cyc / sim / 1e6 for cyc, _, sim, _ in seq]
    s_cpu = [cyc / cpu / 1e6 for cyc, _, _, cpu in seq]
    print(f"ResNet-18 on the RTL, one process ({label}): {cycles:,} cycles; over {rounds} "
          f"run(s): whole run {_spread(s_wall)} M cycles/s, in the simulator "
          f"{_spread(s_sim)} M cycles/s, {_spread(s_cpu)} M cycles per CPU second")
    rc, rt, rs, ru = ref_row
    print(f"ResNet-18 on the RTL, one process (reference build): {rc:,} cycles; whole run "
          f"{rt:.2f} s = {rc / rt / 1e6:.2f} M cycles/s; in the simulator {rc / rs / 1e6:.2f} "
          f"M cycles/s; process CPU {ru:.2f} s = {rc / ru / 1e6:.2f} M cycles per CPU second")
    p_wall = [cyc / wall / 1e6 for cyc, wall, _, _ in par]
    per_core = [seg[2] / cpu / 1e6 for *_, run in par
                for seg, cpu in zip(run.segments, run.worker_cpu, strict=True)]
    p_cycles = {cyc for cyc, *_ in par}
    outs_equal = all(eq for _, _, eq, _ in par)
    last = par[-1][3]
    segs = ", ".join(f"steps {a}..{b - 1}: {cyc:,}" for a, b, cyc in last.segments)
    print(f"ResNet-18 on the RTL, {workers} worker processes ({label}): cycles {sorted(p_cycles)} "
          f"(equal to the sequential run's: {p_cycles == {cycles}}; every layer's RTL cycles "
          f"checked against the cycle model), outputs equal: {outs_equal}; wall-clock "
          f"{_spread(p_wall)} M cycles/s; per worker {_spread(per_core)} M cycles per CPU "
          f"second; segments {segs}")
    print(f"  overheads (last run, wall s): seed pass {last.seed_seconds:.3f} (fsim, beside the "
          f"workers), fork {last.fork_seconds:.3f}, worker set-up "
          f"{max(last.worker_setup):.3f} (device, layout, poison), waiting for the start state "
          f"{max(last.worker_wait):.3f}, compare {max(last.worker_compare):.3f}; segments "
          f"{max(last.worker_steps):.2f} of {last.total_seconds:.2f} s in all")
    load = os.getloadavg()[0]
    print(f"ResNet-18 RTL speed: {statistics.median(p_wall):.2f} M cycles/s wall-clock with "
          f"{workers} worker processes on this machine ({os.cpu_count()} CPUs, load average "
          f"{load:.1f}) (target >= 1.5); one process {statistics.median(s_wall):.2f} M cycles/s "
          f"wall ({statistics.median(p_wall) / statistics.median(s_wall):.2f}x), "
          f"{statistics.median(s_cpu):.2f} M per CPU second ({label}); reference build "
          f"{rc / ru / 1e6:.2f} per CPU second "
          f"({statistics.median(s_cpu) / (rc / ru / 1e6):.2f}x); "
          f"issue 9 start {ISSUE_START / 1e6:.2f}; cycles equal: {cycles == rc}")


if __name__ == "__main__":
    main()
