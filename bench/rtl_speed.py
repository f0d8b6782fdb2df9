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
* a token deadlock: cycles and wall time until the RTL reports error 7 (before its detector,
  the run went on to the 50 M-cycle default timeout: 26-52 s).

The current build is the device's default (``BuildOptions()``); ``--pgo`` makes it
profile-guided (``BuildOptions(pgo=True)``, trained on ``tessera.driver.verilator_pgo``'s
workload) and ``--threads N`` an N-thread Verilator model (each model thread spin-waits for the
others: on this 2-core machine 2 threads ran ResNet-18 at 0.11 M cycles/s even when quiet). The
bench prints what it used.

Run: ``python bench/rtl_speed.py [--config default] [--read-latency 16] [--pgo] [--threads 1]
[--no-resnet]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
    ap.add_argument("--pgo", action="store_true",
                    help="profile-guided current build (BuildOptions(pgo=True))")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, not {args.threads}")
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
        resnet18_speed(cfg, current)


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


def resnet18_speed(cfg: Config, current: BuildOptions) -> None:
    from tessera.compiler import zoo

    proto = zoo.resnet18()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config=cfg, calibration=cal)
    want = model.run(x, device="fsim")
    rows, devices = [], []
    for label, options in (("current", current), ("reference", REFERENCE_OPTIONS)):
        dev = open_device("verilator", cfg, build_options=options)
        devices.append(dev)
        timed = _Timed(dev)
        model.run(x, device=dev)  # warm-up: page faults, CPU kernel JIT
        timed.cycles, timed.wall = 0, 0.0
        t, c = time.perf_counter(), time.process_time()
        got = model.run(x, device=dev)
        total, cpu = time.perf_counter() - t, time.process_time() - c
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), "RTL differs from fsim"
        rows.append((label, timed.cycles, total, timed.wall, cpu))
    model.close()  # its executors free their buffers on the devices: close those after it
    for dev in devices:
        dev.close()
    for label, cycles, total, sim, cpu in rows:
        print(f"ResNet-18 on the RTL ({label} build): {cycles:,} cycles; whole run {total:.2f} s "
              f"= {cycles / total / 1e6:.2f} M cycles/s; in the simulator {sim:.2f} s = "
              f"{cycles / sim / 1e6:.2f} M cycles/s; process CPU {cpu:.2f} s = "
              f"{cycles / cpu / 1e6:.2f} M cycles per CPU second")
    (_, c0, t0, _, u0), (_, c1, t1, _, u1) = rows
    print(f"ResNet-18 RTL speed: {c0 / t0 / 1e6:.2f} M cycles/s whole run, {c0 / u0 / 1e6:.2f} M "
          f"per CPU second (target >= 1.5; reference build {c1 / t1 / 1e6:.2f} wall, "
          f"{c1 / u1 / 1e6:.2f} per CPU second, {(c0 / u0) / (c1 / u1):.2f}x per CPU second; "
          f"issue 9 start {ISSUE_START / 1e6:.2f}); cycles equal: {c0 == c1}")


if __name__ == "__main__":
    main()
