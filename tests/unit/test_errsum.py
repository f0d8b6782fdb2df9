"""Bias correction's one-pass error statistics kernel == numpy's passes, bit for bit."""

import numpy as np
import pytest

from tessera.compiler.quant import bias_correction, errsum


def _numpy_sums(z, acc, unit, offset, s1, s2):
    """The statistics as numpy computes them on whole rows (the reference)."""
    err = np.divide(z, unit.reshape(-1, 1))
    err -= acc - offset[:, None]
    s1 += err.sum(axis=1)
    err *= err
    s2 += err.sum(axis=1)


def _case(rng, rows, cols, acc_dtype, pad, scale, shift):
    stride = cols + pad
    z = (rng.standard_normal((rows, stride)) * scale).astype(np.float32)[:, :cols]
    hi = 2 ** 30 if acc_dtype == np.int64 else 2 ** 20
    acc = rng.integers(-hi, hi, (rows, stride)).astype(acc_dtype)[:, :cols]
    unit = rng.random((rows, 1)) * 1e-3 + 1e-7
    offset = rng.integers(-10 ** 6, 10 ** 6, rows).astype(np.int64) * shift
    return z, acc, unit, offset


@pytest.mark.parametrize("acc_dtype", [np.int32, np.int64])
def test_kernel_equals_numpy_bit_for_bit(acc_dtype):
    rng = np.random.default_rng(7)
    # every leaf shape of the pairwise sum (< 8, 8..128 with each remainder, splits), strided
    # rows, zero and non-zero offsets, magnitudes from 1e-3 to 1e6
    lengths = list(range(0, 260)) + [383, 1000, 1031, 3136, 12544]
    for cols in lengths:
        rows = int(rng.integers(1, 6))
        z, acc, unit, offset = _case(rng, rows, cols, acc_dtype, int(rng.integers(0, 3)) * 8,
                                     10.0 ** int(rng.integers(-3, 7)), int(rng.integers(0, 2)))
        want1, want2 = rng.standard_normal(rows), rng.standard_normal(rows)
        got1, got2 = want1.copy(), want2.copy()
        _numpy_sums(z, acc, unit, offset, want1, want2)
        assert errsum.supports(z, acc)
        errsum.add_error_sums(z, acc, unit, offset, got1, got2)
        assert got1.tobytes() == want1.tobytes(), cols
        assert got2.tobytes() == want2.tobytes(), cols


def test_exact_zeros_and_cancellation_match():
    """Sums that cancel to zero (and terms that are exactly zero) keep numpy's signs."""
    rng = np.random.default_rng(3)
    for cols in (1, 7, 8, 9, 130, 300):
        z = np.zeros((3, cols), np.float32)
        acc = np.zeros((3, cols), np.int32)
        acc[1] = rng.integers(-5, 5, cols)
        z[2, ::2], z[2, 1::2] = 1.5, -1.5
        unit = np.ones((3, 1))
        offset = np.zeros(3, np.int64)
        want1, want2 = np.array([0.0, -0.0, 0.0]), np.zeros(3)
        got1, got2 = want1.copy(), want2.copy()
        _numpy_sums(z, acc, unit, offset, want1, want2)
        errsum.add_error_sums(z, acc, unit, offset, got1, got2)
        assert got1.tobytes() == want1.tobytes() and got2.tobytes() == want2.tobytes()


def test_add_error_sums_paths_agree(monkeypatch):
    """bias_correction's _add_error_sums: kernel path == its blocked numpy path (incl. a layer
    wider than one block and per-image views of stacked products)."""
    rng = np.random.default_rng(11)
    for rows, cols in ((64, 50176 // 16), (5, 40000), (300, 49), (10, 1)):
        stacked = rng.integers(-2 ** 20, 2 ** 20, (rows, 2, cols)).astype(np.int32)
        acc = stacked[:, 1]  # one image's channel rows of two stacked ones
        z = rng.standard_normal((rows, cols)).astype(np.float32) * 100
        unit = rng.random((rows, 1)) * 1e-2 + 1e-5
        offset = rng.integers(-3000, 3000, rows).astype(np.int64)
        k1, k2, n1, n2 = (np.zeros(rows) for _ in range(4))
        assert bias_correction._add_error_sums(z, acc, unit, offset, k1, k2) == cols
        monkeypatch.setattr(errsum, "supports", lambda z, acc: False)
        assert bias_correction._add_error_sums(z, acc, unit, offset, n1, n2) == cols
        monkeypatch.undo()
        assert k1.tobytes() == n1.tobytes() and k2.tobytes() == n2.tobytes()


def test_supports_refuses_other_layouts():
    z = np.zeros((4, 16), np.float32)
    acc = np.zeros((4, 16), np.int32)
    assert errsum.supports(z, acc)
    assert not errsum.supports(z.astype(np.float64), acc)  # float64 products
    assert not errsum.supports(z, acc.astype(np.int16))
    assert not errsum.supports(z[:, ::2], acc[:, ::2])  # strided positions
    assert not errsum.supports(z, acc[:, :8])  # shapes differ
    assert not errsum.supports(z.reshape(4, 4, 4), acc.reshape(4, 4, 4))
