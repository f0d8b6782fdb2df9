"""CPU kernel throughput vs the numpy reference, measured side by side in one run.

    python bench/cpu_kernels.py [--quick]

For each case: compile time (first get(), cold in-memory cache), kernel time, numpy time, input
throughput (MB/s of input bytes read), and the ratio numpy time / kernel time (> 1: the LLVM
kernel is faster). Results are checked against numpy before timing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine, default_engine


def best_time(fn: Callable[[], object], budget: float) -> float:
    fn()
    best, spent = float("inf"), 0.0
    reps = 0
    while spent < budget or reps < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def np_pool(x, k, s, pad, kind):
    fill = -np.inf if kind == "max" else 0.0
    if x.dtype == np.int8 and kind == "max":
        fill = -128
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return win.max(axis=(4, 5)) if kind == "max" else win.mean(axis=(4, 5), dtype=np.float32)


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_dwconv(x, w):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, c, h, wd), np.float32)
    for i in range(3):
        for j in range(3):
            y += xp[:, :, i:i + h, j:j + wd] * w[None, :, 0, i, j, None, None]
    return y


def np_pack(x, bl):
    n, c, h, w = x.shape
    return x.reshape(n, c // bl, bl, h, w).transpose(0, 1, 3, 4, 2)[:, :, :, :, None, :].copy()


def cases(rng: np.random.Generator, quick: bool):
    hw = 56 if quick else 112
    xf = rng.standard_normal((1, 64, hw, hw)).astype(np.float32)
    xi = rng.integers(-128, 128, (1, 64, hw, hw), dtype=np.int8)
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    g = rng.standard_normal((1, 1024, 7, 7)).astype(np.float32)
    logits = rng.standard_normal((64, 1000)).astype(np.float32)
    big = rng.standard_normal(1 << 20).astype(np.float32)
    bias = rng.standard_normal((64, 1, 1)).astype(np.float32)
    dw = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    scale = np.array(0.05, np.float32)
    conv = {"group": 64, "pads": [1, 1, 1, 1]}
    return [
        ("MaxPool 3x3/2 f32", "MaxPool", pool, [xf], lambda: np_pool(xf, 3, 2, 1, "max")),
        ("MaxPool 3x3/2 int8", "MaxPool", pool, [xi], lambda: np_pool(xi, 3, 2, 1, "max")),
        ("AvgPool 3x3/2 f32 incl-pad", "AveragePool", {**pool, "count_include_pad": 1}, [xf],
         lambda: np_pool(xf, 3, 2, 1, "avg")),
        ("GlobalAvgPool f32", "GlobalAveragePool", {}, [g],
         lambda: g.mean(axis=(2, 3), keepdims=True)),
        ("Softmax 64x1000", "Softmax", {"axis": -1}, [logits], lambda: np_softmax(logits)),
        ("Depthwise conv 3x3 f32", "Conv", conv, [xf, dw], lambda: np_dwconv(xf, dw)),
        ("Add broadcast NCHW+C11", "Add", {}, [xf, bias], lambda: xf + bias),
        ("Exp 1M", "Exp", {}, [big], lambda: np.exp(big)),
        ("Sigmoid 1M", "Sigmoid", {}, [big], lambda: 1 / (1 + np.exp(-big))),
        ("Tanh 1M", "Tanh", {}, [big], lambda: np.tanh(big)),
        ("QuantizeLinear f32->int8", "QuantizeLinear", {}, [xf, scale],
         lambda: np.clip(np.rint(xf / scale), -128, 127).astype(np.int8)),
        ("DequantizeLinear int8->f32", "DequantizeLinear", {}, [xi, scale],
         lambda: xi.astype(np.float32) * scale),
        ("Transpose NCHW->NHWC f32", "Transpose", {"perm": [0, 2, 3, 1]}, [xf],
         lambda: np.ascontiguousarray(xf.transpose(0, 2, 3, 1))),
        ("PackNCHW int8 block 16", "PackNCHW", {"batch": 1, "block": 16}, [xi],
         lambda: np_pack(xi, 16)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, shorter timing")
    parser.add_argument("--cold", action="store_true",
                        help="use an empty disk cache so compile times include LLVM codegen")
    args = parser.parse_args()
    budget = 0.1 if args.quick else 0.3
    engine = Engine(cache_dir=tempfile.mkdtemp()) if args.cold else default_engine()
    rng = np.random.default_rng(0)
    print(f"host CPU: {engine.cpu}; cache: {'cold (temp dir)' if args.cold else engine.cache_dir}")
    header = (f"{'case':30s} {'compile ms':>10s} {'kernel us':>10s} {'numpy us':>10s} "
              f"{'MB/s in':>9s} {'speedup':>8s}")
    print(header)
    print("-" * len(header))
    ratios = []
    for label, op, attrs, inputs, ref in cases(rng, args.quick):
        t0 = time.perf_counter()
        kernel = cpu_kernels.get(op, attrs, [(a.shape, a.dtype) for a in inputs], engine=engine)
        compile_ms = (time.perf_counter() - t0) * 1e3
        outs = [np.empty(s, d) for s, d in kernel.out_specs]
        kernel(*inputs, out=outs)
        want = ref()
        if outs[0].dtype == np.float32:
            np.testing.assert_allclose(outs[0], want.reshape(outs[0].shape), rtol=1e-4,
                                       atol=1e-5, err_msg=label)
        else:
            np.testing.assert_array_equal(outs[0], want.reshape(outs[0].shape), err_msg=label)
        t_kernel = best_time(lambda k=kernel, i=inputs, o=outs: k(*i, out=o), budget)
        t_numpy = best_time(ref, budget)
        nbytes = sum(a.nbytes for a in inputs)
        ratios.append(t_numpy / t_kernel)
        print(f"{label:30s} {compile_ms:10.1f} {t_kernel * 1e6:10.1f} {t_numpy * 1e6:10.1f} "
              f"{nbytes / t_kernel / 1e6:9.0f} {t_numpy / t_kernel:7.2f}x")
    geo = float(np.exp(np.mean(np.log(ratios))))
    print(f"geometric mean speedup over numpy: {geo:.2f}x  "
          f"(engine: {engine.stats.compiles} compiled, {engine.stats.disk_hits} from disk cache)")


if __name__ == "__main__":
    main()
