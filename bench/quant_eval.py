"""Shared by bench/real_models.py and bench/calibration_study.py: onnxruntime's references, the
accuracy metric, and calibration inputs that look like natural images, text lines or speech.

Metric (as in tests/unit/test_compile_e2e.py): relative error
``||y - y_float|| / ||y_float - mean(y_float)||`` over a set of test inputs, where ``y_float`` is
onnxruntime's float output (the mean is over the test inputs, so the denominator is the
input-dependent part of the output).

onnxruntime's int8 reference is ``quantize_static`` (QDQ, ``per_channel=True``, the same
calibration batches), run by onnxruntime: ``ort_int8(..., pre=False)`` is its default flow
(MinMax calibration, the model as given), ``pre=True`` first runs its recommended
``quant_pre_process`` (shape inference and graph optimisation, which folds BatchNorm into the
convolutions) — a stronger reference.

Inputs (no data set is downloaded; everything is generated from a seed):

* ``natural_images``: 1/f^2 (pink-noise) luminance fields, the power spectrum of natural
  images, plus random rectangles and ellipses with hard edges and a few dark text-like strokes,
  colour channels correlated, values in [0, 255];
* ``text_lines``: light, slightly textured backgrounds with rows of dark glyph-like strokes
  (bars, arcs, dots) of a consistent height, as OCR recognisers and classifiers see;
* ``speech_like``: 16 kHz audio with voiced segments (harmonics of a gliding pitch, formant-like
  envelopes), fricative noise bursts and silences, values in [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as _ort

_ort.set_default_logger_severity(3)  # its graph warnings drown the tables

__all__ = ["rel_error", "ort_float", "ort_int8", "natural_images", "text_lines", "speech_like",
           "Reader"]


def rel_error(y: np.ndarray, f: np.ndarray) -> float:
    den = float(np.linalg.norm(f - f.mean(axis=0)))
    return float(np.linalg.norm(np.asarray(y, np.float64) - f)) / max(den, 1e-30)


class Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, batches: Sequence[dict]):
        self.it = iter(batches)

    def get_next(self):
        return next(self.it, None)


def ort_float(model: onnx.ModelProto):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def ort_int8(model: onnx.ModelProto, batches: Sequence[dict], *, pre: bool = False,
             method: str = "MinMax", input_shapes: dict | None = None):
    """onnxruntime session of ``quantize_static(model)`` (QDQ, per channel, ``method``)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        fp, qp = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        m = fix_shapes(model, input_shapes) if input_shapes else model
        m = per_axis_opset(m)
        onnx.save(m, fp)
        with contextlib.redirect_stdout(io.StringIO()):
            if pre:
                quant_pre_process(fp, fp)
            quantize_static(fp, qp, Reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, calibrate_method=getattr(CalibrationMethod, method))
        return ort.InferenceSession(qp, providers=["CPUExecutionProvider"])


def per_axis_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` converted to opset 13 if it is older: onnxruntime's per-channel QDQ writes
    DequantizeLinear with ``axis`` (opset 13) but keeps the model's opset, so the quantised
    opset-11/12 models it writes do not load."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if version >= 13:
        return model
    from onnx import version_converter
    return version_converter.convert_version(model, 13)


def fix_shapes(model: onnx.ModelProto, shapes: dict[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the static ``shapes``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name], strict=True):
                d.Clear()
                d.dim_value = int(v)
    return m


# -- inputs -------------------------------------------------------------------------------------

def _pink(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f
    img = np.fft.irfft2(spec, s=(h, w))
    return (img - img.mean()) / (img.std() + 1e-9)


def _shapes(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    c, h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(count):
        colour = rng.uniform(0, 255, (c, 1))
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.03, 0.3) * h, rng.uniform(0.03, 0.3) * w
        if rng.random() < 0.5:
            mask = (np.abs(yy - y0) < ry) & (np.abs(xx - x0) < rx)
        else:
            mask = ((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 < 1
        img[:, mask] = 0.3 * img[:, mask] + 0.7 * colour


def _strokes(rng: np.random.Generator, img: np.ndarray, count: int, height: float,
             y_centre: float | None = None, dark: float = 30.0) -> None:
    c, h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    x = rng.uniform(0, w * 0.1)
    yc = rng.uniform(height, h - height) if y_centre is None else y_centre
    for _ in range(count):
        kind = rng.integers(0, 3)
        t = max(1.0, height * 0.12)
        if kind == 0:  # vertical bar
            mask = (np.abs(xx - x) < t) & (np.abs(yy - yc) < height / 2)
        elif kind == 1:  # arc
            r = height * rng.uniform(0.25, 0.5)
            d = np.sqrt((xx - x) ** 2 + (yy - yc) ** 2)
            mask = (np.abs(d - r) < t) & (xx > x - r * rng.uniform(-1, 1))
        else:  # horizontal bar / dot
            mask = (np.abs(yy - yc - rng.uniform(-0.4, 0.4) * height) < t) \
                & (np.abs(xx - x - height * 0.2) < height * rng.uniform(0.1, 0.35))
        img[:, mask] = dark + rng.uniform(0, 20)
        x += height * rng.uniform(0.25, 0.7)
        if x > w:
            break


def natural_images(rng: np.random.Generator, n: int, channels: int, h: int, w: int
                   ) -> np.ndarray:
    """``n`` images ``[n, channels, h, w]`` in [0, 255] (module docstring)."""
    out = np.empty((n, channels, h, w), np.float32)
    for k in range(n):
        base = _pink(rng, h, w)
        tint = rng.uniform(0.6, 1.4, (channels, 1, 1))
        img = 128 + 45 * (base[None] * tint + 0.35 * np.stack(
            [_pink(rng, h, w) for _ in range(channels)]))
        _shapes(rng, img, int(rng.integers(3, 9)))
        if rng.random() < 0.5:
            _strokes(rng, img, int(rng.integers(5, 25)), rng.uniform(0.04, 0.12) * h)
        out[k] = np.clip(img, 0, 255)
    return out


def text_lines(rng: np.random.Generator, n: int, channels: int, h: int, w: int) -> np.ndarray:
    """``n`` text-line crops ``[n, channels, h, w]`` in [0, 255] (module docstring)."""
    out = np.empty((n, channels, h, w), np.float32)
    for k in range(n):
        img = rng.uniform(170, 250) + 8 * _pink(rng, h, w)[None] * np.ones((channels, 1, 1))
        img = img + rng.uniform(-15, 15, (channels, 1, 1))
        _strokes(rng, img, 400, h * rng.uniform(0.45, 0.75), y_centre=h / 2,
                 dark=rng.uniform(0, 70))
        out[k] = np.clip(img, 0, 255)
    return out


def speech_like(rng: np.random.Generator, n: int, samples: int, rate: int = 16000
                ) -> np.ndarray:
    """``n`` clips ``[n, samples]`` of speech-like audio in [-1, 1] (module docstring)."""
    out = np.zeros((n, samples), np.float32)
    t = np.arange(samples) / rate
    for k in range(n):
        sig = np.zeros(samples)
        pos = 0
        while pos < samples:
            length = int(rng.uniform(0.08, 0.4) * rate)
            seg = slice(pos, min(samples, pos + length))
            kind = rng.random()
            tt = t[seg] - t[seg][0] if t[seg].size else t[seg]
            if kind < 0.55:  # voiced: harmonics of a gliding pitch under a formant envelope
                f0 = rng.uniform(90, 250) * (1 + 0.2 * tt / max(tt[-1], 1e-3) if tt.size else 1)
                phase = 2 * np.pi * np.cumsum(f0) / rate
                v = sum(np.sin(h * phase) / h * np.exp(-((h * f0.mean() - rng.uniform(
                    300, 2500)) / 800) ** 2) for h in range(1, 12))
                sig[seg] = v * np.hanning(v.size) * rng.uniform(0.2, 0.8)
            elif kind < 0.8:  # fricative noise
                sig[seg] = rng.standard_normal(tt.size) * np.hanning(tt.size) * 0.08
            pos += length + int(rng.uniform(0.0, 0.15) * rate)
        sig += rng.standard_normal(samples) * 0.003
        out[k] = np.clip(sig / max(np.abs(sig).max(), 1e-6) * rng.uniform(0.3, 0.9), -1, 1)
    return out


Normalise = Callable[[np.ndarray], np.ndarray]
IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


def imagenet_norm(x: np.ndarray) -> np.ndarray:
    mean, std = IMAGENET
    c = x.shape[1]
    return ((x / 255.0 - mean[:c].reshape(1, c, 1, 1)) / std[:c].reshape(1, c, 1, 1)).astype(
        np.float32)


def half_norm(x: np.ndarray) -> np.ndarray:
    return ((x / 255.0 - 0.5) / 0.5).astype(np.float32)


def unit_norm(x: np.ndarray) -> np.ndarray:
    return (x / 255.0).astype(np.float32)
