"""The cycle model (``tessera.sim.timing``) against the RTL, and what it costs fsim.

    python bench/cycle_model.py [--programs 20] [--configs tiny,default,odd,wide]
                                [--models resnet_tiny:default,mobilenet_tiny:tiny]
                                [--resnet18] [--overhead]

Error table: per config, random well-synchronised programs (``sim/progen.py``) on random DRAM
timing (read latency 1-250 cycles, 0.1-1 beats per cycle), the model's CYCLES against the
verilator device's, mean and max relative error per program; per compiled model, the same per
accelerator layer (the fsim device's profile against the verilator device's). ``--resnet18``
adds ResNet-18 224x224 on ``default`` layer by layer (about half a minute of RTL simulation).
``--overhead``: ResNet-18 on the fsim device, the time spent in the model beside the run's
wall time, with a cold and a warm prediction cache.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tessera
from tessera.config import Config
from tessera.driver import open_device
from tessera.sim import timing
from tessera.sim.progen import random_program

EXTRA = {
    # 128-bit bus, batch 2, 8x8 array, small buffers, 4-token queues
    "odd": dict(mem_bus_bits=128, log_batch=1, log_block=3, log_uop_buff_size=11,
                log_inp_buff_size=13, log_wgt_buff_size=14, log_acc_buff_size=14,
                dep_queue_depth=4),
    # 32x32 array, 512-bit bus, 16-token queues
    "wide": dict(mem_bus_bits=512, log_block=5, log_uop_buff_size=11, log_inp_buff_size=13,
                 log_wgt_buff_size=16, log_acc_buff_size=15, dep_queue_depth=16),
    # 2x2 array, 32-bit bus, 2-token queues
    "narrow": dict(mem_bus_bits=32, log_block=1, dep_queue_depth=2),
}


def _config(name: str) -> Config:
    if name in EXTRA:
        return Config(**{**Config.preset("tiny").to_dict(), **EXTRA[name]})
    return Config.preset(name)


def _row(what: str, pairs: list[tuple[int, int]]) -> str:
    err = np.array([abs(m - r) / r for r, m in pairs])
    exact = sum(r == m for r, m in pairs)
    return (f"| {what} | {len(pairs)} | {err.mean():.3%} | {err.max():.3%} | "
            f"{exact}/{len(pairs)} |")


def programs(name: str, count: int) -> str:
    cfg = _config(name)
    rng = np.random.default_rng(2024)
    pairs = []
    for seed in range(count):
        dram = timing.DramTiming(int(rng.choice([1, 4, 16, 40, 100, 250])),
                                 float(rng.choice([1.0, 1.0, 0.7, 0.5, 0.25, 0.1])))
        prog = random_program(cfg, np.random.default_rng(seed), rounds=2 + seed % 11)
        with open_device("verilator", cfg, mem_bytes=1 << 24, read_latency=dram.read_latency,
                         beats_per_cycle=dram.beats_per_cycle) as dev:
            prog.place(dev)
            rtl = dev.run(prog.insn_addr, prog.insn_count).cycles
        dec = timing.decode_stream(prog.code(), cfg)
        pred = timing.predict(dec, cfg, dram, insn_addr=prog.insn_addr,
                              insn_count=prog.insn_count).cycles
        pairs.append((rtl, pred))
    return _row(f"`{name}` ({cfg.summary()}, queues {cfg.dep_queue_depth}): random programs, "
                f"random DRAM timing", pairs)


def layers(model_name: str, config: str, dram: timing.DramTiming) -> str:
    from tessera.compiler import zoo

    proto = getattr(zoo, model_name)()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config=config, calibration=cal)
    knobs = dict(read_latency=dram.read_latency, beats_per_cycle=dram.beats_per_cycle)
    _, want = model.run(x, device="verilator", profile=True, **knobs)
    _, got = model.run(x, device="fsim", profile=True, **knobs)
    model.close()
    pairs = [(w.cycles, g.cycles) for g, w in zip(got.layers, want.layers) if w.kind == "accel"]
    total = (sum(r for r, _ in pairs), sum(m for _, m in pairs))
    return _row(f"{model_name} on `{config}`, latency {dram.read_latency}, "
                f"{dram.beats_per_cycle} beats/cycle: per layer (whole model: RTL {total[0]}, "
                f"model {total[1]})", pairs)


def overhead() -> None:
    from tessera.compiler import zoo

    proto = zoo.resnet18()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config="default", calibration=cal)
    spent = [0.0]
    predict = timing.predict

    def timed(*args, **kwargs):
        t0 = time.process_time()
        try:
            return predict(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - t0

    timing.predict = timed
    try:
        for label in ("cold cache", "warm cache"):
            if label == "cold cache":
                timing.clear_cache()
            spent[0] = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            _, prof = model.run(x, device="fsim", profile=True)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"ResNet-18 on fsim ({label}): run {wall:.3f} s wall / {cpu:.3f} s CPU, "
                  f"cycle model {spent[0] * 1e3:.1f} ms CPU = {spent[0] / cpu:.1%} of the "
                  f"run's CPU time; {prof.totals()['cycles']} cycles predicted")
    finally:
        timing.predict = predict
        model.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=20)
    ap.add_argument("--configs", default="tiny,default,odd,wide,narrow")
    ap.add_argument("--models", default="resnet_tiny:default,mobilenet_tiny:tiny,"
                                        "small_cnn:default")
    ap.add_argument("--resnet18", action="store_true")
    ap.add_argument("--overhead", action="store_true")
    args = ap.parse_args()
    print("| what | runs | mean error | max error | exact |")
    print("|---|---|---|---|---|")
    for name in filter(None, args.configs.split(",")):
        print(programs(name, args.programs), flush=True)
    drams = [timing.DramTiming(16, 1.0), timing.DramTiming(40, 0.5)]
    for k, spec in enumerate(filter(None, args.models.split(","))):
        model_name, config = spec.split(":")
        print(layers(model_name, config, drams[k % 2]), flush=True)
    if args.resnet18:
        print(layers("resnet18", "default", timing.DramTiming(16, 1.0)), flush=True)
        print(layers("resnet18", "default", timing.DramTiming(60, 0.5)), flush=True)
    if args.overhead:
        overhead()


if __name__ == "__main__":
    main()
