"""CPU kernels (pooling, softmax, grouped/depthwise conv) vs numpy and onnxruntime."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper

from tessera.errors import KernelError
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(cache_dir=tmp_path_factory.mktemp("llvm"))


def run(engine: Engine, op: str, attrs: dict, *arrays: np.ndarray) -> np.ndarray:
    kernel = cpu_kernels.get(op, attrs, [(a.shape, a.dtype) for a in arrays], engine=engine)
    outs = kernel(*arrays)
    assert [(o.shape, o.dtype) for o in outs] == kernel.out_specs
    return outs[0]


def run_onnx(op: str, attrs: dict, *arrays: np.ndarray, opset: int = 19,
             out_dtype: str | None = None) -> np.ndarray:
    types = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int8"): TensorProto.INT8,
             np.dtype("int32"): TensorProto.INT32}
    names = [f"x{k}" for k in range(len(arrays))]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, types[a.dtype], a.shape)
         for n, a in zip(names, arrays, strict=True)],
        [helper.make_tensor_value_info("y", types[np.dtype(out_dtype or arrays[0].dtype)], None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, arrays, strict=True)))[0]


# -- numpy references -------------------------------------------------------------------------


def ref_pool(x: np.ndarray, kind: str, k, s=(1, 1), pads=(0, 0, 0, 0), d=(1, 1), ceil=0,
             include_pad=0) -> np.ndarray:
    n, c, h, w = x.shape
    outs = []
    for ax, size in enumerate((h, w)):
        e = (k[ax] - 1) * d[ax] + 1
        span = size + pads[ax] + pads[ax + 2] - e
        o = (-(-span // s[ax]) if ceil else span // s[ax]) + 1
        if ceil and (o - 1) * s[ax] >= size + pads[ax]:
            o -= 1
        outs.append(o)
    oh, ow = outs
    y = np.zeros((n, c, oh, ow), np.float64 if kind == "avg" else x.dtype)
    for i, j in itertools.product(range(oh), range(ow)):
        hs = [i * s[0] - pads[0] + t * d[0] for t in range(k[0])]
        ws = [j * s[1] - pads[1] + t * d[1] for t in range(k[1])]
        hv = [v for v in hs if 0 <= v < h]
        wv = [v for v in ws if 0 <= v < w]
        win = x[:, :, hv][:, :, :, wv].astype(np.float64)
        if kind == "max":
            y[:, :, i, j] = win.max(axis=(2, 3))
        else:
            if include_pad:
                cnt = (sum(v < h + pads[2] for v in hs) * sum(v < w + pads[3] for v in ws))
            else:
                cnt = len(hv) * len(wv)
            y[:, :, i, j] = win.sum(axis=(2, 3)) / cnt if x.dtype == np.float32 else \
                round_away(win.sum(axis=(2, 3)).astype(np.int64), cnt)
    return y.astype(x.dtype)


def round_away(num: np.ndarray, den: int) -> np.ndarray:
    """num / den rounded to nearest, ties away from zero, in exact integer arithmetic."""
    q = (2 * np.abs(num) + den) // (2 * den)
    return np.sign(num) * q


def ref_conv(x, w, b=None, s=(1, 1), pads=(0, 0, 0, 0), d=(1, 1), group=1):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    acc = np.float64 if x.dtype == np.float32 else np.int64
    xp = np.zeros((n, c, h + pads[0] + pads[2], wd + pads[1] + pads[3]), acc)
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    oh = (h + pads[0] + pads[2] - (kh - 1) * d[0] - 1) // s[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * d[1] - 1) // s[1] + 1
    y = np.zeros((n, m, oh, ow), acc)
    mg = m // group
    for mo in range(m):
        g = mo // mg
        for i, j in itertools.product(range(kh), range(kw)):
            patch = xp[:, g * cg:(g + 1) * cg, i * d[0]:i * d[0] + (oh - 1) * s[0] + 1:s[0],
                       j * d[1]:j * d[1] + (ow - 1) * s[1] + 1:s[1]]
            y[:, mo] += np.tensordot(patch, w[mo, :, i, j].astype(acc), axes=([1], [0]))
        if b is not None:
            y[:, mo] += b[mo]
    return y.astype(np.float32 if x.dtype == np.float32 else np.int32)


# -- pooling ----------------------------------------------------------------------------------

POOL_CASES = [
    dict(k=(3, 3), s=(2, 2), pads=(1, 1, 1, 1)),
    dict(k=(2, 2), s=(2, 2)),
    dict(k=(3, 2), s=(2, 3), pads=(1, 0, 2, 1), ceil=1),
    dict(k=(3, 3), s=(1, 1), pads=(1, 1, 1, 1)),
    dict(k=(3, 3), s=(2, 2), pads=(0, 1, 1, 0), ceil=1),
    dict(k=(2, 3), s=(1, 2), d=(2, 1), pads=(1, 1, 0, 1)),
]


def onnx_pool_attrs(case: dict, kind: str, include_pad: int = 0) -> tuple[dict, dict]:
    attrs = {"kernel_shape": list(case["k"]), "strides": list(case.get("s", (1, 1))),
             "pads": list(case.get("pads", (0, 0, 0, 0))), "ceil_mode": case.get("ceil", 0)}
    if case.get("d", (1, 1)) != (1, 1):
        attrs["dilations"] = list(case["d"])
    if kind == "avg":
        attrs["count_include_pad"] = include_pad
    ref = dict(k=case["k"], s=case.get("s", (1, 1)), pads=case.get("pads", (0, 0, 0, 0)),
               d=case.get("d", (1, 1)), ceil=case.get("ceil", 0), include_pad=include_pad)
    return attrs, ref


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("shape", [(2, 3, 11, 13), (1, 5, 8, 7)])
def test_maxpool(engine, case, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    attrs, ref = onnx_pool_attrs(case, "max")
    y = run(engine, "MaxPool", attrs, x)
    np.testing.assert_array_equal(y, ref_pool(x, "max", **{k: v for k, v in ref.items()
                                                           if k != "include_pad"}))
    np.testing.assert_array_equal(y, run_onnx("MaxPool", attrs, x))
    xi = rng.integers(-128, 128, shape, dtype=np.int8)
    np.testing.assert_array_equal(run(engine, "MaxPool", attrs, xi),
                                  ref_pool(xi, "max", **{k: v for k, v in ref.items()
                                                         if k != "include_pad"}))
    np.testing.assert_array_equal(run(engine, "MaxPool", attrs, xi), run_onnx("MaxPool", attrs, xi))


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool(engine, case, include_pad):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    attrs, ref = onnx_pool_attrs(case, "avg", include_pad)
    y = run(engine, "AveragePool", attrs, x)
    np.testing.assert_allclose(y, ref_pool(x, "avg", **ref), rtol=1e-6, atol=1e-6)
    if case.get("d", (1, 1)) == (1, 1):  # onnxruntime has no dilated AveragePool
        np.testing.assert_allclose(y, run_onnx("AveragePool", attrs, x), rtol=1e-6, atol=1e-6)
    xi = rng.integers(-128, 128, (2, 3, 11, 13), dtype=np.int8)
    np.testing.assert_array_equal(run(engine, "AveragePool", attrs, xi),
                                  ref_pool(xi, "avg", **ref))


def test_avgpool_int8_rounds_half_away_from_zero(engine):
    x = np.array([[[[1, 2], [-1, -2]]]], np.int8)  # row means 1.5 and -1.5
    y = run(engine, "AveragePool", {"kernel_shape": [1, 2]}, x)
    np.testing.assert_array_equal(y.ravel(), [2, -2])


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_pool_auto_pad(engine, auto_pad):
    x = np.random.default_rng(3).standard_normal((1, 2, 9, 10)).astype(np.float32)
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": auto_pad}
    np.testing.assert_array_equal(run(engine, "MaxPool", attrs, x),
                                  run_onnx("MaxPool", attrs, x))
    np.testing.assert_allclose(run(engine, "AveragePool", attrs, x),
                               run_onnx("AveragePool", attrs, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (3, 17, 14, 14)])
def test_global_pools(engine, dtype, shape):
    rng = np.random.default_rng(4)
    if dtype == "float32":
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run(engine, "GlobalAveragePool", {}, x),
                                   x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run(engine, "GlobalAveragePool", {}, x),
                                   run_onnx("GlobalAveragePool", {}, x), rtol=1e-5, atol=1e-6)
    else:
        x = rng.integers(-128, 128, shape, dtype=np.int8)
        want = round_away(x.astype(np.int64).sum(axis=(2, 3), keepdims=True),
                          shape[2] * shape[3])
        np.testing.assert_array_equal(run(engine, "GlobalAveragePool", {}, x), want)
    np.testing.assert_array_equal(run(engine, "GlobalMaxPool", {}, x),
                                  x.max(axis=(2, 3), keepdims=True))


# -- softmax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis", [((3, 1000), -1), ((2, 7, 5), 1), ((4, 3, 300, 2), 2),
                                        ((2, 3, 600), 0), ((5,), 0), ((2, 3, 4), -3)])
def test_softmax(engine, shape, axis):
    x = (np.random.default_rng(5).standard_normal(shape) * 20).astype(np.float32)
    y = run(engine, "Softmax", {"axis": axis}, x)
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=axis, keepdims=True), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(y, run_onnx("Softmax", {"axis": axis}, x, opset=13),
                               rtol=1e-5, atol=1e-7)


def test_softmax_is_stable_for_large_inputs(engine):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1e30, 0.0, 1e30]], np.float32)
    y = run(engine, "Softmax", {}, x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], [0.09003057, 0.24472847, 0.66524096], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0, 1.0])


# -- convolution ------------------------------------------------------------------------------

CONV_CASES = [
    # (N, C, H, W), M, (kh, kw), group, strides, pads, dilations
    ((1, 8, 12, 11), 8, (3, 3), 8, (1, 1), (1, 1, 1, 1), (1, 1)),  # depthwise
    ((2, 6, 9, 10), 12, (3, 3), 6, (2, 2), (1, 0, 1, 2), (1, 1)),  # depthwise, multiplier 2
    ((1, 8, 10, 10), 4, (3, 2), 2, (1, 2), (0, 1, 2, 1), (2, 1)),  # grouped, dilated
    ((1, 3, 7, 9), 5, (5, 5), 1, (1, 1), (2, 2, 2, 2), (1, 1)),  # dense
    ((1, 4, 6, 5), 4, (1, 1), 4, (2, 1), (0, 0, 0, 0), (1, 1)),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv_float32(engine, case, with_bias):
    xs, m, (kh, kw), g, s, p, d = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((m, xs[1] // g, kh, kw)).astype(np.float32)
    args = [x, w] + ([rng.standard_normal(m).astype(np.float32)] if with_bias else [])
    attrs = {"group": g, "strides": list(s), "pads": list(p), "dilations": list(d)}
    y = run(engine, "Conv", attrs, *args)
    want = ref_conv(*args[:2], args[2] if with_bias else None, s, p, d, g)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, run_onnx("Conv", attrs, *args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_int8(engine, case):
    xs, m, (kh, kw), g, s, p, d = case
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, xs, dtype=np.int8)
    w = rng.integers(-128, 128, (m, xs[1] // g, kh, kw), dtype=np.int8)
    bias = rng.integers(-(2**20), 2**20, m, dtype=np.int32)
    attrs = {"group": g, "strides": list(s), "pads": list(p), "dilations": list(d)}
    np.testing.assert_array_equal(run(engine, "Conv", attrs, x, w, bias),
                                  ref_conv(x, w, bias, s, p, d, g))
    np.testing.assert_array_equal(run(engine, "Conv", attrs, x, w),
                                  ref_conv(x, w, None, s, p, d, g))


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("op,attrs,specs,match", [
    ("MaxPool", {"kernel_shape": [3, 3]}, [((2, 3, 8), "float32")], "4-D NCHW"),
    ("MaxPool", {"kernel_shape": [3, 3], "foo": 1}, [((1, 1, 8, 8), "float32")], "foo"),
    ("MaxPool", {"kernel_shape": [3, 3]}, [((1, 1, 8, 8), "int32")], "dtype"),
    ("AveragePool", {}, [((1, 1, 8, 8), "float32")], "kernel_shape is required"),
    ("AveragePool", {"kernel_shape": [9, 9]}, [((1, 1, 8, 8), "float32")], "exceeds"),
    ("Softmax", {"axis": 3}, [((2, 3), "float32")], "axis"),
    ("Conv", {"group": 3}, [((1, 4, 8, 8), "float32"), ((4, 1, 3, 3), "float32")], "group"),
    ("Conv", {}, [((1, 4, 8, 8), "int8"), ((4, 4, 3, 3), "float32")], "dtype of X"),
    ("NoSuchOp", {}, [((1,), "float32")], "no CPU kernel"),
])
def test_bad_inputs_raise_compile_error(engine, op, attrs, specs, match):
    with pytest.raises(KernelError, match=match) as info:
        cpu_kernels.get(op, attrs, specs, engine=engine)
    assert op in str(info.value)
