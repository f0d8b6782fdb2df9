"""Accelerator performance figures beside their targets, measured in one run (issue 9 parts 1,
2 and 7; issue 10 part 4).

    python bench/performance.py [--device verilator|fsim]
        [--models resnet18,mobilenet_v1,regnet_x_400mf,resnext_tiny]

- **ResNet-18 224x224 on `default`**: GEMM utilisation over the accelerator layers (useful MACs
  / (cycles x BATCH*BLOCK_IN*BLOCK_OUT)) beside the 90% target and VTA's 88%; per layer the
  roofline bound (the larger of MACs / (BATCH*BLOCK_IN*BLOCK_OUT) and the layer's measured
  DRAM bytes / bus bytes per cycle, each direction on its own channel), the attainment (bound /
  cycles) beside the 85% floor, and the cost model's prediction beside the measured cycles. On
  ``verilator`` the outputs are also checked against fsim bit for bit.
- **MobileNetV1 224x224 on `default`**: the share of MACs on the accelerator beside the 99%
  target, and its accelerator time at the config's clock beside the accelerator + CPU time of
  the same model compiled with its depthwise layers on the host (measured in this run).
- **RegNetX-400MF 224x224 on `default`** (group width 16; ``--models regnet_x_400mf``) and
  ``resnext_tiny`` (group widths 4/8/16/24): the same figures with its grouped convolutions on
  the accelerator (weights zero off the groups; the share of their executed MACs that is
  useful is printed) beside the same model compiled with them on the host, as before.
- **Lowering time** (one core's CPU seconds from the quantised graph to the plan) of each model.

The cycles of ``--device fsim`` come from the cycle model of the RTL (``sim/timing``), which
matches Verilator to the cycle on these models (``tests/rtl/test_timing_model.py``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.compiler.lower import HostModel, build_plan, lowering_passes
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline
from tessera.compiler.quant import Quantize
from tessera.config import Config

UTIL_TARGET, VTA_UTIL, FLOOR, MAC_SHARE_TARGET = 0.90, 0.88, 0.85, 0.99


def _io(proto, n_cal: int):
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n_cal)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    return cal, x


def _lowering_seconds(proto, cal, cfg: Config) -> float:
    """CPU seconds of the lowering passes and build_plan (the quantised graph is made first)."""
    from tessera.compiler.frontend import import_onnx

    g = run_pipeline(import_onnx(proto), [*GRAPH_PASSES, Quantize(cal, "mse")])
    t0 = time.process_time()
    build_plan(run_pipeline(g, list(lowering_passes(cfg))), cfg)
    return time.process_time() - t0


def resnet18(device: str, n_cal: int) -> None:
    cfg = Config.preset("default")
    proto = zoo.resnet18()
    cal, x = _io(proto, n_cal)
    model = tcompile(proto, config=cfg, calibration=cal)
    t0 = time.perf_counter()
    outs, prof = model.run(x, device=device, profile=True)
    wall = time.perf_counter() - t0
    same = ""
    if device != "fsim":
        want = model.run(x, device="fsim")
        same = f"; outputs equal fsim: {all(np.array_equal(a, b) for a, b in zip(outs, want))}"
    macs_step = cfg.macs_per_gemm_step
    bus = cfg.mem_bus_bytes
    print(f"== ResNet-18 224x224 on default, {device} ({wall:.1f} s){same}")
    print(f"{'layer':<10} {'cycles':>9} {'predicted':>9} {'util':>6} {'bound':>8} "
          f"{'attain':>7}  (floor {FLOOR:.0%})")
    worst = (1.0, "")
    for p in prof.layers:
        if p.kind != "accel":
            continue
        c = p.counters
        bound = max(p.macs / macs_step, c["dram_read_bytes"] / bus, c["dram_write_bytes"] / bus)
        att = bound / p.cycles
        worst = min(worst, (att, p.name))
        flag = "" if att >= FLOOR else "  < floor"
        print(f"{p.name:<10} {p.cycles:>9} {p.info.get('est_cycles', 0):>9} "
              f"{p.utilisation(cfg):>6.1%} {bound:>8.0f} {att:>7.1%}{flag}")
    t = prof.totals()
    print(f"total cycles {t['cycles']:,}; GEMM utilisation {t['utilisation']:.1%} "
          f"(target {UTIL_TARGET:.0%}, VTA {VTA_UTIL:.0%}); lowest attainment "
          f"{worst[0]:.1%} ({worst[1]}; floor {FLOOR:.0%})")
    print(f"lowering: {_lowering_seconds(proto, cal, cfg):.2f} CPU s")
    model.close()


def mobilenet(device: str, n_cal: int) -> None:
    cfg = Config.preset("default")
    proto = zoo.mobilenet_v1()
    cal, x = _io(proto, n_cal)
    print(f"== MobileNetV1 224x224 on default, {device}")
    rows = {}
    for label, host in (("depthwise on the accelerator", None),
                        ("depthwise on the host", HostModel(link_bytes_per_s=float("inf")))):
        model = tcompile(proto, config=cfg, calibration=cal, host=host)
        model.run(x, device=device, profile=True)  # warm the CPU kernels
        _, prof = model.run(x, device=device, profile=True)
        t = prof.totals()
        share = t["accel_macs"] / (t["accel_macs"] + t["cpu_macs"])
        accel_ms = t["cycles"] / (cfg.clock_mhz * 1e3)
        rows[label] = (share, t["cycles"], accel_ms, t["cpu_wall_ms"])
        print(f"{label}: {share:.2%} of MACs on the accelerator; {t['cycles']:,} cycles = "
              f"{accel_ms:.1f} ms at {cfg.clock_mhz:g} MHz; host ops {t['cpu_wall_ms']:.1f} ms")
        model.close()
    share, _, accel_ms, cpu_ms = rows["depthwise on the accelerator"]
    _, _, ref_accel, ref_cpu = rows["depthwise on the host"]
    print(f"MAC share {share:.2%} (target {MAC_SHARE_TARGET:.0%}; 96.9% before); accelerator "
          f"{accel_ms:.1f} ms vs {ref_accel + ref_cpu:.1f} ms accelerator + host with the "
          f"depthwise layers on the host ({ref_accel:.1f} + {ref_cpu:.1f}); end to end "
          f"{accel_ms + cpu_ms:.1f} ms vs {ref_accel + ref_cpu:.1f} ms (host times are this "
          f"machine's wall clock)")
    print(f"lowering: {_lowering_seconds(proto, cal, cfg):.2f} CPU s")


def grouped(name: str, device: str, n_cal: int) -> None:
    """A model with grouped convolutions: on the accelerator vs on the host (as before)."""
    cfg = Config.preset("default")
    proto = getattr(zoo, name)()
    cal, x = _io(proto, n_cal)
    print(f"== {name} on default, {device}")
    free = float("inf")
    rows = {}
    for label, host in (("grouped on the accelerator", None),
                        ("grouped on the host", HostModel(free, free, free))):
        model = tcompile(proto, config=cfg, calibration=cal, host=host)
        model.run(x, device=device, profile=True)  # warm the CPU kernels
        t1 = time.process_time()
        _, prof = model.run(x, device=device, profile=True)
        cpu_s = time.process_time() - t1
        t = prof.totals()
        share = t["accel_macs"] / (t["accel_macs"] + t["cpu_macs"])
        accel_ms = t["cycles"] / (cfg.clock_mhz * 1e3)
        where = dict((r[0], r[2]) for r in model.meta["partition"])
        grp = [p for p in prof.layers if p.kind == "accel" and "grouped (" in where.get(p.name, "")]
        useful = (sum(p.macs for p in grp) / sum(p.gemm_steps * cfg.macs_per_gemm_step
                                                 for p in grp)) if grp else 0.0
        rows[label] = (share, accel_ms, t["cpu_wall_ms"])
        print(f"{label}: {share:.2%} of MACs on the accelerator; {t['cycles']:,} cycles = "
              f"{accel_ms:.1f} ms at {cfg.clock_mhz:g} MHz (GEMM utilisation "
              f"{t['utilisation']:.1%}); host ops {t['cpu_wall_ms']:.1f} ms wall "
              f"({cpu_s:.2f} CPU s for the whole run incl. the simulator)"
              + (f"; {len(grp)} grouped layers on the accelerator, {useful:.1%} of their "
                 f"executed MACs useful" if grp else ""))
        model.close()
    share, accel_ms, cpu_ms = rows["grouped on the accelerator"]
    ref_share, ref_accel, ref_cpu = rows["grouped on the host"]
    print(f"MAC share {share:.2%} vs {ref_share:.2%} before; accelerator + host "
          f"{accel_ms:.1f} + {cpu_ms:.1f} = {accel_ms + cpu_ms:.1f} ms vs {ref_accel:.1f} + "
          f"{ref_cpu:.1f} = {ref_accel + ref_cpu:.1f} ms with the grouped layers on the host "
          f"(host times are this machine's wall clock)")
    print(f"lowering: {_lowering_seconds(proto, cal, cfg):.2f} CPU s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="verilator", choices=("verilator", "fsim"))
    ap.add_argument("--models", default="resnet18,mobilenet_v1,regnet_x_400mf")
    ap.add_argument("--calibration", type=int, default=4)
    args = ap.parse_args()
    models = set(args.models.split(","))
    if "resnet18" in models:
        resnet18(args.device, args.calibration)
    if "mobilenet_v1" in models:
        mobilenet("fsim" if args.device == "fsim" else args.device, args.calibration)
    for name in ("regnet_x_400mf", "resnext_tiny"):
        if name in models:
            grouped(name, args.device, args.calibration)


if __name__ == "__main__":
    main()
