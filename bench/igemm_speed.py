"""The int8 kernel (AVX-512 VNNI or AVX2) beside numpy float32 sgemm of the same product.

    python bench/igemm_speed.py [--quick]      # TESSERA_IGEMM=avx2: the AVX2 kernel on VNNI

The first line names the instruction set the kernel ran on (:func:`igemm.available`).

For each shape (VGG-19 / ResNet-18 convs as bias correction runs them, and VGG-19's fc6 over
8 images): CPU ms (process_time, best of a few) and GMAC/s of

- ``kernel``: :func:`tessera.runtime.cpu.igemm.gemm` on already packed operands (the rows
  layout; AVX2 convs run on panels, in the ``conv`` column);
- ``sgemm``: ``np.matmul`` of the same (O, K) x (K, M) product in float32 (one BLAS call,
  which is exact only for short reductions: the comparison of raw MAC rates);
- ``conv`` / ``dense`` with ``--layers``-style operands: the whole int32-lane product as bias
  correction asks for it (:func:`tessera.compiler.reference.int_conv2d_cnhw` or
  ``int_matmul`` with ``dtype=np.int32``: packing included), then the same with the kernel
  disabled (the float32 path in exact chunks; all-127 weights as in the onnx wheel's light_*
  models), and the ratio. Results are compared before timing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from tessera.compiler import reference
from tessera.runtime.cpu import igemm

CONVS = [  # (name, C, H, O, k, stride) of one image
    ("vgg conv1_2 64@224", 64, 224, 64, 3, 1),
    ("vgg conv2_2 128@112", 128, 112, 128, 3, 1),
    ("vgg conv3_x 256@56", 256, 56, 256, 3, 1),
    ("vgg conv4_x 512@28", 512, 28, 512, 3, 1),
    ("vgg conv5_x 512@14", 512, 14, 512, 3, 1),
    ("r18 layer1 64@56", 64, 56, 64, 3, 1),
    ("r18 layer2 down 64@56 s2", 64, 56, 128, 1, 2),
    ("r18 layer4 512@7", 512, 7, 512, 3, 1),
]


def cpu_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def conv_row(rng, name: str, c: int, h: int, o: int, k: int, s: int, reps: int) -> None:
    x = rng.integers(-128, 128, (1, c, h, h)).astype(np.int8)
    w = np.full((o, c, k, k), 127, np.int8)
    p = k // 2
    geo = ((s, s), (p, p, p, p), (1, 1), 1)
    packed = reference.packed_conv_weights(x.dtype, w)
    fast = reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32, packed=packed)
    splits = reference.exact_splits(x.dtype, w)
    with igemm.disabled():
        slow = reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32, splits=splits)
    assert np.array_equal(fast, slow), name
    m = fast.shape[1] * fast.shape[2] * fast.shape[3]
    q = packed.w4.shape[1]
    macs = o * c * k * k * m
    x4 = rng.integers(0, 2**32, (q, igemm._cols_for(m, igemm.available())), dtype=np.uint32)
    out = np.empty((o, m), np.int32)
    t_kernel = cpu_time(lambda: igemm.gemm(x4, m, packed.w4, packed.corr, out), reps)
    a32 = rng.standard_normal((o, c * k * k), dtype=np.float32)
    b32 = rng.standard_normal((c * k * k, m), dtype=np.float32)
    t_sgemm = cpu_time(lambda: a32 @ b32, reps)
    t_conv = cpu_time(lambda: reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32,
                                                        packed=packed), reps)
    with igemm.disabled():
        t_float = cpu_time(lambda: reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32,
                                                             splits=splits), reps)
    print(f"{name:28s} {macs / 1e9:6.2f} | {t_kernel * 1e3:9.2f} {macs / t_kernel / 1e9:7.0f}"
          f" | {t_sgemm * 1e3:8.2f} {macs / t_sgemm / 1e9:7.0f} {t_sgemm / t_kernel:5.1f} | "
          f"{t_conv * 1e3:8.2f} {t_float * 1e3:8.2f} {t_float / t_conv:5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    args = ap.parse_args()
    isa = igemm.available()
    if isa is None:
        raise SystemExit("igemm_speed: this host has no AVX-512 VNNI or AVX2 (or "
                         "TESSERA_IGEMM=0)")
    print(f"kernel: {isa}")
    reps = 2 if args.quick else 5
    rng = np.random.default_rng(0)
    convs = CONVS[3:5] if args.quick else CONVS
    print(f"{'shape':28s} {'GMAC':>6s} | {'kernel ms':>9s} {'GMAC/s':>7s} | {'sgemm ms':>8s} "
          f"{'GMAC/s':>7s} {'x':>5s} | {'conv ms':>8s} {'float ms':>8s} {'x':>5s}")
    for case in convs:
        conv_row(rng, *case, reps)
    # VGG-19 fc6 over the 8 bias-correction images: 8 x 25088 by 4096 x 25088 int8
    a = rng.integers(-128, 128, (8, 25088)).astype(np.int8)
    w = np.full((4096, 25088), 127, np.int8)
    fast = reference.int_matmul(a, w.T, dtype=np.int32)
    with igemm.disabled():
        splits = reference.exact_splits(a.dtype, w)
        assert np.array_equal(fast, reference.int_matmul(a, w.T, dtype=np.int32, splits=splits))
    macs = a.shape[0] * w.size
    t_dense = cpu_time(lambda: reference.int_matmul(a, w.T, dtype=np.int32), reps)
    a32, w32 = a.astype(np.float32), w.astype(np.float32)
    t_sgemm = cpu_time(lambda: a32 @ w32.T, reps)
    with igemm.disabled():
        t_float = cpu_time(lambda: reference.int_matmul(a, w.T, dtype=np.int32,
                                                        splits=splits), reps)
    print(f"{'vgg fc6 8x25088 @ 4096':28s} {macs / 1e9:6.2f} | {t_dense * 1e3:9.2f} "
          f"{macs / t_dense / 1e9:7.0f} | {t_sgemm * 1e3:8.2f} {macs / t_sgemm / 1e9:7.0f} "
          f"{t_sgemm / t_dense:5.1f} | {t_dense * 1e3:8.2f} {t_float * 1e3:8.2f} "
          f"{t_float / t_dense:5.1f}")
    print("kernel: packed operands; sgemm: one float32 np.matmul of the same shape; conv/dense: "
          "the int32-lane product bias correction runs (packing included) vs the float32 path "
          "(kernel disabled), all-127 weights; fc6 row: kernel = whole int_matmul, sgemm on "
          "float32 copies made beforehand")


if __name__ == "__main__":
    main()
