"""Held-out models exported from PyTorch (torchvision, timm, Ultralytics, hand-built CRNNs),
compiled as exported: float path and int8 beside onnxruntime's.

    python bench/wild_models.py [--models NAME,...] [--exporters ts13,ts17,dyn18] [--int8]
                                [--calibration 4] [--test 4] [--list]
    python bench/wild_models.py --wheels [--rtl ppocrv3_det,ppocrv3_rec]

Needs ``torch`` (and ``torchvision``, ``timm``, ``ultralytics`` for their models; a model whose
library is missing is skipped with a message). These are not dependencies of Tessera: install
them by hand (``pip install torch torchvision timm ultralytics onnxscript``). No model file is
shipped or downloaded: every network is built with its library's own random initialisation
(seeded), its BatchNorm statistics are then set by a few forward passes in training mode over
generated images (``bench/quant_eval.py``'s inputs), so activations are scaled as in a trained
network, and it is exported with ``torch.onnx.export`` into
``$TESSERA_CACHE/wild_models/NAME-EXPORTER.onnx``: ``ts13``/``ts17`` are the TorchScript
exporter at opset 13/17, ``dyn18`` the dynamo exporter (``dynamo=True``) at opset 18.

Per model and exporter it prints the float path (``precision="float"``) against onnxruntime
float: the largest difference relative to the largest reference magnitude over every output.
With ``--int8`` it runs ``bench/real_models.py``'s evaluation on the first exporter: int8
compile, fsim run, int8 error against onnxruntime float, beside onnxruntime's own
``quantize_static`` int8 error (same calibration), and whether fsim equals the integer
reference. ``--wheels`` runs that evaluation on the trained PP-OCRv3 det/rec of an older wheel
(:data:`WHEEL_MODELS`), and ``--rtl NAME,...`` also runs those on the RTL (Verilator) beside fsim
(``bench/real_models.py --rtl``). A model that does not compile is reported with the compiler's
message. Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_eval as qe  # noqa: E402
import real_models as rm  # noqa: E402

from tessera.compiler.api import compile as tcompile  # noqa: E402
from tessera.compiler.wheels import WheelModel  # noqa: E402
from tessera.errors import TesseraError  # noqa: E402

EXPORTERS = {"ts13": (False, 13), "ts17": (False, 17), "dyn18": (True, 18)}


# -- the networks --------------------------------------------------------------------------------

def _tv(name: str, **kw) -> Callable:
    def build():
        import torchvision
        return torchvision.models.get_model(name, weights=None, **kw)
    return build


def _tv_seg(name: str) -> Callable:
    def build():
        import torch
        import torchvision

        class Out(torch.nn.Module):  # the dict output as one tensor
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(x)["out"]
        return Out(torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                                num_classes=21, aux_loss=None))
    return build


def _timm(name: str) -> Callable:
    def build():
        import timm
        return timm.create_model(name, pretrained=False)
    return build


def _yolo(yaml: str) -> Callable:
    def build():
        from ultralytics.nn.tasks import DetectionModel
        with contextlib.redirect_stdout(io.StringIO()):
            m = DetectionModel(yaml, verbose=False)
        for mod in m.modules():  # the export form of the head: one tensor, no NMS
            if hasattr(mod, "export"):
                mod.export = True
                mod.format = "onnx"
        return m
    return build


def _det_head(name: str) -> Callable:
    """A torchvision detector's backbone + head (no anchor decoding, no NMS)."""
    def build():
        import torch
        import torchvision

        class Head(torch.nn.Module):
            def __init__(self):
                super().__init__()
                m = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                                 num_classes=91)
                self.backbone, self.head = m.backbone, m.head

            def forward(self, x):
                out = self.head(list(self.backbone(x).values()))
                return out["bbox_regression"], out["cls_logits"]
        return Head()
    return build


def _crnn(rnn: str) -> Callable:
    def build():
        from torch import nn

        class CRNN(nn.Module):  # conv features -> (bi)LSTM/GRU over the width -> CTC logits
            def __init__(self):
                super().__init__()
                def blk(i, o, pool):
                    return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                            nn.MaxPool2d(pool)]
                self.cnn = nn.Sequential(*blk(1, 32, 2), *blk(32, 64, 2),
                                         *blk(64, 96, (2, 1)), *blk(96, 128, (4, 1)))
                cls = nn.LSTM if rnn == "lstm" else nn.GRU
                self.rnn = cls(128, 64, num_layers=2, bidirectional=True)
                self.fc = nn.Linear(128, 37)

            def forward(self, x):
                f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # [W, N, C]
                y, _ = self.rnn(f)
                return self.fc(y).log_softmax(-1)
        return CRNN()
    return build


# name: (builder, input shape, data kind, norm)
MODELS: dict[str, tuple[Callable, tuple[int, ...], str, str]] = {
    "resnet50": (_tv("resnet50"), (1, 3, 96, 96), "image", "imagenet"),
    "mobilenet_v2": (_tv("mobilenet_v2"), (1, 3, 96, 96), "image", "imagenet"),
    "mobilenet_v3_large": (_tv("mobilenet_v3_large"), (1, 3, 96, 96), "image", "imagenet"),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), (1, 3, 96, 96), "image", "imagenet"),
    "efficientnet_b0": (_tv("efficientnet_b0"), (1, 3, 96, 96), "image", "imagenet"),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), (1, 3, 96, 96), "image", "imagenet"),
    "convnext_tiny": (_tv("convnext_tiny"), (1, 3, 64, 64), "image", "imagenet"),
    "shufflenet_v2": (_tv("shufflenet_v2_x0_5"), (1, 3, 96, 96), "image", "imagenet"),
    "squeezenet": (_tv("squeezenet1_1"), (1, 3, 96, 96), "image", "imagenet"),
    "densenet121": (_tv("densenet121"), (1, 3, 64, 64), "image", "imagenet"),
    "googlenet": (_tv("googlenet", aux_logits=False, init_weights=True), (1, 3, 96, 96),
                  "image", "imagenet"),
    "mnasnet": (_tv("mnasnet0_5"), (1, 3, 96, 96), "image", "imagenet"),
    "deeplabv3_mnv3": (_tv_seg("deeplabv3_mobilenet_v3_large"), (1, 3, 96, 96), "image",
                       "imagenet"),
    "lraspp_mnv3": (_tv_seg("lraspp_mobilenet_v3_large"), (1, 3, 96, 96), "image",
                    "imagenet"),
    "fcn_resnet50": (_tv_seg("fcn_resnet50"), (1, 3, 64, 64), "image", "imagenet"),
    "ssdlite_head": (_det_head("ssdlite320_mobilenet_v3_large"), (1, 3, 160, 160), "image",
                     "imagenet"),
    "retinanet_head": (_det_head("retinanet_resnet50_fpn"), (1, 3, 128, 128), "image", "imagenet"),
    "yolov5n": (_yolo("yolov5n.yaml"), (1, 3, 128, 128), "image", "unit"),
    "yolov8n": (_yolo("yolov8n.yaml"), (1, 3, 128, 128), "image", "unit"),
    "yolo11n": (_yolo("yolo11n.yaml"), (1, 3, 128, 128), "image", "unit"),
    "timm_efficientnet_b0": (_timm("tf_efficientnet_b0"), (1, 3, 96, 96), "image",
                             "imagenet"),
    "timm_mobilenetv3": (_timm("mobilenetv3_large_100"), (1, 3, 96, 96), "image", "imagenet"),
    "timm_resnet50d": (_timm("resnet50d"), (1, 3, 96, 96), "image", "imagenet"),
    "timm_rexnet": (_timm("rexnet_100"), (1, 3, 96, 96), "image", "imagenet"),
    "timm_ghostnet": (_timm("ghostnet_100"), (1, 3, 96, 96), "image", "imagenet"),
    "timm_regnety": (_timm("regnety_002"), (1, 3, 96, 96), "image", "imagenet"),
    "timm_convnext": (_timm("convnext_atto"), (1, 3, 64, 64), "image", "imagenet"),
    "crnn_lstm": (_crnn("lstm"), (1, 1, 32, 128), "text", "half"),
    "crnn_gru": (_crnn("gru"), (1, 1, 32, 128), "text", "half"),
}


# trained models in wheels that bench/real_models.py does not list (older releases)
_V3 = ("rapidocr-onnxruntime", "1.2.3")
WHEEL_MODELS = [
    rm.Spec("ppocrv3_det",
            WheelModel(*_V3, "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx"),
            {"x": (1, 3, 256, 256)}, "image"),
    rm.Spec("ppocrv3_rec",
            WheelModel(*_V3, "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx"),
            {"x": (1, 3, 48, 320)}, "text", "half"),
]


def _inputs(shape, data, norm, rng, n) -> list[np.ndarray]:
    spec = rm.Spec("x", "", {"x": shape}, data, norm)
    return [f["x"] for f in rm.make_inputs(spec, rng, n)]


def export(name: str, exporter: str, cache: Path) -> Path:
    """The ONNX file of ``name`` exported by ``exporter`` (built and exported on first use)."""
    out = cache / f"{name}-{exporter}.onnx"
    if out.exists():
        return out
    import torch
    build, shape, data, norm = MODELS[name]
    torch.set_num_threads(1)  # the machine is shared; export time is not measured
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # Ultralytics greets on first import
        net = build()
    imgs = _inputs(shape, data, norm, np.random.default_rng(1), 8)
    for m in net.modules():  # BN statistics from the generated inputs (cumulative average)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, 8, 4):
            net(torch.from_numpy(np.concatenate(imgs[i:i + 4])))
    net.eval()
    dynamo, opset = EXPORTERS[exporter]
    cache.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(imgs[0])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        kw = {"dynamo": True, "external_data": False} if dynamo else {"dynamo": False}
        torch.onnx.export(net, (x,), str(out), input_names=["x"], opset_version=opset, **kw)
    return out


def float_check(path: Path, shape, data, norm) -> dict:
    proto = onnx.load(str(path))
    feeds = [{"x": x} for x in _inputs(shape, data, norm, np.random.default_rng(2), 2)]
    sess = qe.ort_float(proto)
    t0 = time.perf_counter()
    model = tcompile(proto, precision="float")
    row = {"compile_s": time.perf_counter() - t0, "rel": 0.0, "err": 0.0}
    names = [o.name for o in sess.get_outputs()]
    for f in feeds:
        want = sess.run(None, f)
        got = dict(zip(model.output_names, model.run(f), strict=True))
        for n, w in zip(names, want, strict=True):
            g = got[n]
            row["rel"] = max(row["rel"], float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)),
                                                                             1e-30)))
    return row


def _print_int8(name: str, r: dict) -> None:
    if "error" in r:
        print(f"{name:22s} does not compile: {r['error']}", flush=True)
        return
    o = r.get("ort")
    print(f"{name:22s} {r['compile_s']:9.1f} {r['accel_share']:10.1%} {r['ours']:7.4f} "
          f"{o if o is not None else float('nan'):7.4f} "
          f"{(r['ours'] / o) if o else float('nan'):6.2f}  "
          f"{'yes' if r['fsim_eq_ref'] else 'NO'}", flush=True)
    if "ort_error" in r:
        print(f"{'':22s} onnxruntime int8 failed: {r['ort_error']}", flush=True)
    if "rtl_cycles" in r:  # --rtl: bench/real_models.py's rtl_check of test input 0
        print(f"{'':22s} RTL == fsim: {'yes' if r['rtl_eq_fsim'] else 'NO'}; RTL "
              f"{r['rtl_cycles']:,d} cycles, cycle model {r['model_cycles']:,d}; RTL run "
              f"{r['rtl_s']:.1f} s wall, {r['rtl_cpu_s']:.1f} s CPU", flush=True)


_INT8_HEAD = (f"{'model':22s} {'compile s':>9s} {'accel MACs':>10s} {'ours':>7s} {'ort':>7s} "
              f"{'ratio':>6s}  fsim=ref")


def _wheels(ev: SimpleNamespace, cache: Path) -> None:
    print(f"int8 of trained wheel models: {ev.calibration} calibration / {ev.test} test inputs, "
          f"{ev.method}\n{_INT8_HEAD}", flush=True)
    for spec in WHEEL_MODELS:
        try:
            _print_int8(spec.name, rm.evaluate(spec, rm.fetch(spec), ev))
        except Exception:  # noqa: BLE001 - one model's crash must not stop the others
            print(f"{spec.name:22s} CRASH: {traceback.format_exc()[-600:]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--exporters", default="ts13,ts17,dyn18")
    ap.add_argument("--int8", action="store_true", help="also int8 on fsim (first exporter)")
    ap.add_argument("--no-float", action="store_true", help="skip the float-path table")
    ap.add_argument("--calibration", type=int, default=4)
    ap.add_argument("--test", type=int, default=4)
    ap.add_argument("--method", default="mse")
    ap.add_argument("--config", default="default")
    ap.add_argument("--wheels", action="store_true",
                    help="int8 of the trained models of older wheels instead (WHEEL_MODELS)")
    ap.add_argument("--rtl", default="", help="with --wheels: models also run on Verilator")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, (_, shape, data, _) in MODELS.items():
            print(f"{name:22s} {str(shape):18s} {data}")
        return
    ev = SimpleNamespace(calibration=args.calibration, test=args.test, method=args.method,
                         config=args.config, rtl=set(filter(None, args.rtl.split(","))))
    base = os.environ.get("TESSERA_CACHE")
    cache = (Path(base) if base else Path.home() / ".cache" / "tessera") / "wild_models"
    if args.wheels:
        _wheels(ev, cache)
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        print("wild_models: torch is not importable; install torch (and torchvision, timm, "
              "ultralytics, onnxscript) to run this benchmark")
        return
    names = [n for n in filter(None, args.models.split(","))] or list(MODELS)
    unknown = set(names) - set(MODELS)
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; known: {', '.join(MODELS)}")
    exporters = args.exporters.split(",")
    print(f"{'model':22s} {'exporter':8s} {'float max rel':>13s} {'compile s':>9s}", flush=True)
    for name in [] if args.no_float else names:
        _, shape, data, norm = MODELS[name]
        for exp in exporters:
            try:
                path = export(name, exp, cache)
            except ImportError as exc:
                print(f"{name:22s} {exp:8s} skipped: {exc}", flush=True)
                break
            except Exception as exc:  # noqa: BLE001 - an exporter failing is reported
                print(f"{name:22s} {exp:8s} export failed: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:100] if str(exc) else ''}", flush=True)
                continue
            try:
                r = float_check(path, shape, data, norm)
            except TesseraError as exc:
                print(f"{name:22s} {exp:8s} does not compile: "
                      f"{' '.join(str(exc).split())[:300]}", flush=True)
                continue
            except Exception:  # noqa: BLE001 - one model's crash must not stop the others
                print(f"{name:22s} {exp:8s} CRASH: {traceback.format_exc()[-600:]}", flush=True)
                continue
            print(f"{name:22s} {exp:8s} {r['rel']:13.2e} {r['compile_s']:9.1f}", flush=True)
    if not args.int8:
        return
    print(f"\nint8 ({exporters[0]}): {args.calibration} calibration / {args.test} test inputs, "
          f"{args.method}\n{_INT8_HEAD}", flush=True)
    for name in names:
        _, shape, data, norm = MODELS[name]
        try:
            path = export(name, exporters[0], cache)
        except Exception as exc:  # noqa: BLE001 - reported above for the float table
            print(f"{name:22s} export failed: {type(exc).__name__}", flush=True)
            continue
        try:
            _print_int8(name, rm.evaluate(rm.Spec(name, "", {"x": shape}, data, norm), path,
                                          ev))
        except Exception:  # noqa: BLE001
            print(f"{name:22s} CRASH: {traceback.format_exc()[-600:]}", flush=True)


if __name__ == "__main__":
    main()
