"""CPU kernels: broadcasting elementwise ops, int8 requantising add, (de)quantisation."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tessera.errors import KernelError
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.eltwise import requant_multipliers
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


SHAPE_PAIRS = [((4, 1, 3, 17), (5, 1, 17)), ((33,), ()), ((2, 3), (2, 3)), ((1, 7), (6, 1)),
               ((3, 1, 5), (1, 4, 1)), ((2, 0, 3), (1, 3)), ((), ())]
BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
          "Max": np.maximum, "Min": np.minimum}


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("shapes", SHAPE_PAIRS)
def test_binary_float32_broadcasting(engine, op, shapes):
    rng = np.random.default_rng(10)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    if op == "Div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b)
    want = BINARY[op](a, b)
    np.testing.assert_array_equal(run(engine, op, {}, a, b), want)
    np.testing.assert_array_equal(run(engine, op, {}, b, a), BINARY[op](b, a))


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("dtype", ["int8", "int32"])
def test_variadic_integer_max_min(engine, op, dtype):
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, (3, 1, 9), dtype=dtype, endpoint=True)
    b = rng.integers(info.min, info.max, (4, 9), dtype=dtype, endpoint=True)
    c = rng.integers(info.min, info.max, (9,), dtype=dtype, endpoint=True)
    np.testing.assert_array_equal(run(engine, op, {}, a, b, c), BINARY[op](BINARY[op](a, b), c))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_int32_wraps(engine, op):
    rng = np.random.default_rng(12)
    a = rng.integers(-(2**31), 2**31, (5, 7), dtype=np.int32)
    b = rng.integers(-(2**31), 2**31, (7,), dtype=np.int32)
    np.testing.assert_array_equal(run(engine, op, {}, a, b), BINARY[op](a, b))


@pytest.mark.parametrize("shape", [(1000,), (3, 5, 7), (1,)])
def test_unary_float32(engine, shape):
    x = (np.random.default_rng(13).standard_normal(shape) * 6).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(run(engine, "Relu", {}, x), np.maximum(x, 0))
    np.testing.assert_array_equal(run(engine, "Clip", {"min": -1.5, "max": 2.0}, x),
                                  np.clip(x, -1.5, 2.0))
    np.testing.assert_array_equal(run(engine, "Clip", {"max": 0.25}, x), np.minimum(x, 0.25))
    np.testing.assert_allclose(run(engine, "Exp", {}, x), np.exp(x64), rtol=3e-7)
    np.testing.assert_allclose(run(engine, "Tanh", {}, x), np.tanh(x64), rtol=3e-7, atol=1e-12)
    np.testing.assert_allclose(run(engine, "Sigmoid", {}, x), 1 / (1 + np.exp(-x64)), rtol=3e-7)


def test_transcendentals_edge_values(engine):
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 88.7, 89.0, -87.0, -104.0, -200.0, np.inf, -np.inf,
                  np.nan, 20.0, -20.0, 0.6249, 0.6251], np.float32)
    with np.errstate(over="ignore"):
        refs = {"Exp": np.exp(x), "Tanh": np.tanh(x),
                "Sigmoid": (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)}
    for op, want in refs.items():
        np.testing.assert_allclose(run(engine, op, {}, x), want, rtol=3e-7, atol=1e-45,
                                   err_msg=op)


@pytest.mark.parametrize("dtype", ["int8", "int32"])
def test_unary_integer(engine, dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(14).integers(info.min, info.max, (4, 33), dtype=dtype,
                                           endpoint=True)
    np.testing.assert_array_equal(run(engine, "Relu", {}, x), np.maximum(x, 0))
    np.testing.assert_array_equal(run(engine, "Clip", {"min": -7, "max": 100}, x),
                                  np.clip(x, -7, 100))


def ref_add_requant(a, b, mul_a, mul_b, shift, relu=0):
    acc = a.astype(np.int64) * mul_a + b.astype(np.int64) * mul_b + (1 << (shift - 1))
    return np.clip(acc >> shift, 0 if relu else -128, 127).astype(np.int8)


@pytest.mark.parametrize("shapes", [((2, 16, 5, 5), (2, 16, 5, 5)), ((3, 7), (7,)),
                                    ((1, 4, 1), (5, 1, 9))])
@pytest.mark.parametrize("relu", [0, 1])
def test_add_requant(engine, shapes, relu):
    rng = np.random.default_rng(15)
    a, b = (rng.integers(-128, 128, s, dtype=np.int8) for s in shapes)
    mul_a, mul_b = requant_multipliers(0.05, 0.11, 0.09, 16)
    want = ref_add_requant(a, b, mul_a, mul_b, 16, relu)
    got = run(engine, "AddRequant", {"scale_a": 0.05, "scale_b": 0.11, "scale_out": 0.09,
                                     "relu": relu}, a, b)
    np.testing.assert_array_equal(got, want)
    got = run(engine, "AddRequant", {"mul_a": mul_a, "mul_b": mul_b, "shift": 16,
                                     "relu": relu}, a, b)
    np.testing.assert_array_equal(got, want)
    # Close to the real-valued result: within one quantisation step.
    real = (a * 0.05 + b * 0.11) / 0.09
    clipped = np.clip(real, 0 if relu else -128, 127)
    assert np.max(np.abs(got - clipped)) <= 0.51


def test_add_requant_saturates(engine):
    a = np.array([127, -128, 100], np.int8)
    got = run(engine, "AddRequant", {"mul_a": 1 << 16, "mul_b": 1 << 16, "shift": 16}, a, a)
    np.testing.assert_array_equal(got, [127, -128, 127])


def onnx_q(op: str, x: np.ndarray, scale: np.ndarray, axis: int, out: int) -> np.ndarray:
    types = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int8"): TensorProto.INT8,
             np.dtype("int32"): TensorProto.INT32}
    zp_type = TensorProto.INT8 if op == "QuantizeLinear" else types[x.dtype]
    zp = helper.make_tensor("zp", zp_type, scale.shape, np.zeros(scale.size, np.int64).tolist())
    node = helper.make_node(op, ["x", "s", "zp"], ["y"], axis=axis)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", types[x.dtype], x.shape),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, scale.shape)],
        [helper.make_tensor_value_info("y", out, None)], initializer=[zp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, "s": scale})[0]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("shape,axis", [((2, 5, 7, 3), 1), ((37,), 0), ((4, 6), -1)])
def test_quantize_linear(engine, shape, axis, per_channel):
    rng = np.random.default_rng(16)
    x = (rng.standard_normal(shape) * 40).astype(np.float32)
    # exact ties: x / scale lands on k + 0.5 for some elements
    x.flat[: min(8, x.size)] = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 300, -300],
                                        np.float32)[: min(8, x.size)]
    scale = (rng.uniform(0.2, 0.6, shape[axis]).astype(np.float32) if per_channel
             else np.array(0.37, np.float32))
    if per_channel:
        scale[0] = 1.0
    else:
        scale = np.array(1.0, np.float32) if shape == (37,) else scale
    bshape = [1] * len(shape)
    bshape[axis] = -1
    s = scale.reshape(bshape) if per_channel else scale
    want = np.clip(np.rint(x / s), -128, 127).astype(np.int8)
    got = run(engine, "QuantizeLinear", {"axis": axis}, x, scale)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, onnx_q("QuantizeLinear", x, scale, axis,
                                              TensorProto.INT8))


@pytest.mark.parametrize("dtype", ["int8", "int32"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dequantize_linear(engine, dtype, per_channel):
    rng = np.random.default_rng(17)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, (3, 4, 5), dtype=dtype, endpoint=True)
    scale = (rng.uniform(0.01, 1, 4).astype(np.float32) if per_channel
             else np.array(0.023, np.float32))
    s = scale.reshape(1, 4, 1) if per_channel else scale
    got = run(engine, "DequantizeLinear", {"axis": 1}, x, scale)
    np.testing.assert_array_equal(got, x.astype(np.float32) * s)
    np.testing.assert_array_equal(got, onnx_q("DequantizeLinear", x, scale, 1,
                                              TensorProto.FLOAT))


@pytest.mark.parametrize("op,attrs,specs,match", [
    ("Add", {}, [((3, 4), "float32"), ((5,), "float32")], "do not broadcast"),
    ("Add", {}, [((3,), "float32"), ((3,), "int8")], "dtype"),
    ("Div", {}, [((3,), "bool"), ((3,), "bool")], "dtype"),
    ("Exp", {}, [((3,), "int8")], "dtype"),
    ("Relu", {"alpha": 1.0}, [((3,), "float32")], "alpha"),
    ("AddRequant", {"mul_a": 1 << 24, "mul_b": 1 << 24}, [((3,), "int8")] * 2, "overflow"),
    ("AddRequant", {"scale_a": 0.1}, [((3,), "int8")] * 2, "scale_out"),
    ("QuantizeLinear", {}, [((3, 4), "float32"), ((5,), "float32")], "scale has 5"),
    ("QuantizeLinear", {}, [((3,), "float32"), ((), "float32"), ((), "int8")], "zero point"),
    ("DequantizeLinear", {}, [((3,), "float32"), ((), "float32")], "dtype"),
    ("Add", {}, [((3,), "float64"), ((3,), "float64")], "float64"),
])
def test_bad_inputs_raise_compile_error(engine, op, attrs, specs, match):
    with pytest.raises(KernelError, match=match) as info:
        cpu_kernels.get(op, attrs, specs, engine=engine)
    assert op in str(info.value)


def test_call_checks_arrays(engine):
    kernel = cpu_kernels.get("Add", {}, [((2, 3), "float32"), ((3,), "float32")], engine=engine)
    a, b = np.ones((2, 3), np.float32), np.ones(3, np.float32)
    with pytest.raises(KernelError, match=r"input 1 must be float32\[3\]"):
        kernel(a, np.ones(4, np.float32))
    with pytest.raises(KernelError, match="expects 2 input"):
        kernel(a)
    with pytest.raises(KernelError, match="overlaps"):
        kernel(a, b, out=[a])
    out = np.empty((2, 3), np.float32)
    assert kernel(a, b, out=[out])[0] is out
    np.testing.assert_array_equal(out, 2.0)
    # non-contiguous inputs are copied, not misread
    big = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(kernel(big[:, ::2], b)[0], big[:, ::2] + 1)
