"""RTL speed bench (default config): measured in one run, printed side by side.

* GEMM throughput: a compute-bound stream of GEMM instructions (operands already in SRAM from a
  set-up run) — GEMM micro-op steps per cycle (target >= 0.95);
* load efficiency: streaming INP and WGT loads — payload bytes per cycle as a fraction of the
  memory bus width (target >= 0.9);
* simulator speed: Verilated cycles per wall-clock second on one core (target >= 300,000),
  and the functional simulator's wall time on the same GEMM stream, with the ratio.

Run: ``python bench/rtl_speed.py [--config default] [--read-latency 16]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tessera.config import Config
from tessera.driver import Device, open_device
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode, Uop, to_bytes, uops_to_bytes


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
    args = ap.parse_args()
    cfg = Config.resolve(args.config)
    print(f"config {args.config}: {cfg.summary()}")

    t0 = time.perf_counter()
    vdev = open_device("verilator", cfg, mem_bytes=1 << 26, read_latency=args.read_latency)
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


if __name__ == "__main__":
    main()
