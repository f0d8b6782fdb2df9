"""Quantised CPU kernels (Requant, int8 Dense, SumPool, (de)quantisation) and the quantised IR ops
through make_cpu_op, bit-exact against compiler.reference."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.compiler import reference, zoo
from tessera.compiler.frontend import import_onnx
from tessera.compiler.ir import GraphBuilder
from tessera.compiler.lower.cpu import make_cpu_op
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline
from tessera.compiler.quant.quantize import make_epilogue, quantize
from tessera.errors import CompileError, KernelError
from tessera.isa import AluOp
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine
from tessera.runtime.cpu.quant import requant_attrs
from tessera.sim.fsim import alu_apply


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(cache_dir=tmp_path_factory.mktemp("llvm"))


def run(engine: Engine, op: str, attrs: dict, *arrays: np.ndarray) -> np.ndarray:
    kernel = cpu_kernels.get(op, attrs, [(a.shape, a.dtype) for a in arrays], engine=engine)
    outs = kernel(*arrays)
    assert [(o.shape, o.dtype) for o in outs] == kernel.out_specs
    return outs[0]


def run_node(engine: Engine, op: str, arrays: list[np.ndarray | None], **attrs) -> tuple:
    """(cpu output, reference output) of a one-node graph whose inputs are ``arrays``."""
    b = GraphBuilder()
    names = ["" if a is None else b.input(f"x{k}", a.shape, a.dtype.name)
             for k, a in enumerate(arrays)]
    y = b.node(op, names, **attrs)
    g = b.build([y])
    ref = reference.run(g, {n: a for n, a in zip(names, arrays, strict=True) if n})[y]
    cop = make_cpu_op(g.nodes[0], [g.info(n) if n else None for n in names], engine=engine)
    (got,) = cop(*arrays)
    assert (got.shape, got.dtype) == (ref.shape, ref.dtype)
    assert cop.out_specs == [(ref.shape, ref.dtype)]
    return got, ref


def i8(rng, *shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


def i32(rng, *shape, bound=1 << 31):
    return rng.integers(-bound, bound, shape, dtype=np.int64).astype(np.int32)


def emulate(steps, x, residual=None, axis=1):
    """The step list on int64 lanes with the functional simulator's ALU (the executable spec)."""
    v = x.astype(np.int64)
    u = None if residual is None else residual.astype(np.int64)
    for opcode, operand, branch in steps:
        if isinstance(operand, list):
            shape = [1] * v.ndim
            shape[axis] = len(operand)
            operand = np.asarray(operand, np.int64).reshape(shape)
        if branch == "residual":
            u = alu_apply(AluOp[opcode], u, operand).astype(np.int64)
        elif branch == "combine":
            v = alu_apply(AluOp.ADD, v, u).astype(np.int64)
        else:
            v = alu_apply(AluOp[opcode], v, operand).astype(np.int64)
    return v.astype(np.int8)


# -- Requant ---------------------------------------------------------------------------------


def test_requant_alu_semantics_wraparound_and_shifts(engine):
    rng = np.random.default_rng(0)
    x = i32(rng, 2, 5, 3, 4)
    x.flat[:6] = [2**31 - 1, -2**31, -1, 0, 1, 2**30]
    vec_shift = [-40, -31, -3, 0, 40]
    vec_mul = rng.integers(-(1 << 15), 1 << 15, 5).tolist()
    steps = [["ADD", 2**31 - 7, "main"], ["MUL", vec_mul, "main"], ["SHR", vec_shift, "main"],
             ["SHR", -3, "main"], ["MUL", -32768, "main"], ["SHR", 37, "main"],
             ["SHR", 0, "main"], ["SHR", -40, "main"], ["ADD", -(2**31), "main"],
             ["MIN", 300, "main"], ["MAX", -1000, "main"]]
    got = run(engine, "Requant", {"steps": steps, "channel_axis": 1}, x)
    np.testing.assert_array_equal(got, emulate(steps, x))
    # int8 truncation of values outside int8 (no clamp step) wraps like astype(int8)
    steps2 = [["MUL", 3, "main"], ["SHR", 1, "main"]]
    got = run(engine, "Requant", {"steps": steps2}, x)
    np.testing.assert_array_equal(got, emulate(steps2, x))


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_requant_residual_branch_and_channel_axis(engine, axis):
    rng = np.random.default_rng(1)
    x, r = i8(rng, 3, 4, 6), i8(rng, 3, 4, 6)
    c = x.shape[axis]
    steps = [["MUL", rng.integers(-300, 300, c).tolist(), "main"], ["ADD", 64, "main"],
             ["SHR", 7, "main"], ["MUL", 181, "residual"], ["ADD", 16, "residual"],
             ["SHR", 5, "residual"], ["ADD", 0, "combine"], ["SHR", [1] * c, "main"],
             ["MIN", 100, "main"], ["MAX", 0, "main"]]
    got = run(engine, "Requant", {"steps": steps, "channel_axis": axis}, x, r)
    np.testing.assert_array_equal(got, emulate(steps, x, r, axis))


def test_requant_attrs_matches_apply_epilogue(engine):
    rng = np.random.default_rng(2)
    epi = Epilogue(mult=rng.integers(-(1 << 15), 1 << 15, 8), shift=20, pre_shift=3, lo=-50,
                   hi=90, res_mult=-1234, res_shift=18, final_shift=4)
    attrs = requant_attrs(epi)
    assert attrs["channel_axis"] == 1
    assert [s[0] for s in attrs["steps"]] == [s.opcode for s in epi.alu_steps()]
    acc, r = i32(rng, 2, 8, 5, 5), i8(rng, 2, 8, 5, 5)  # big values: every MUL wraps
    got = run(engine, "Requant", attrs, acc, r)
    np.testing.assert_array_equal(got, reference.apply_epilogue(acc, epi, r))
    per_tensor = Epilogue(mult=np.array([77]), shift=9)
    got = run(engine, "Requant", requant_attrs(per_tensor), acc[:, :, 0, 0])
    np.testing.assert_array_equal(got, reference.apply_epilogue(acc[:, :, 0, 0], per_tensor))


@pytest.mark.parametrize("attrs, inputs, message", [
    ({"steps": [["DIV", 3, "main"]]}, 1, "opcode"),
    ({"steps": [["ADD", 1 << 31, "main"]]}, 1, "int32"),
    ({"steps": [["MUL", [1, 2, 3], "main"]]}, 1, "channel axis"),
    ({"steps": [["MUL", 1, "residual"]]}, 1, "no residual"),
    ({"steps": [["MUL", 1, "side"]]}, 1, "branch"),
    ({"steps": "MUL"}, 1, "steps"),
    ({"steps": [], "channel_axis": 4}, 1, "channel_axis"),
])
def test_requant_errors(engine, attrs, inputs, message):
    specs = [((2, 4, 3), np.int32)] + [((2, 4, 3), np.int8)] * (inputs - 1)
    with pytest.raises(KernelError, match=f"Requant: .*{message}"):
        cpu_kernels.get("Requant", attrs, specs, engine=engine)


# -- int8 building blocks --------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_dense_int8_wraps_like_reference(engine, bias):
    rng = np.random.default_rng(3)
    x, w = i8(rng, 3, 37), i8(rng, 5, 37)
    args = [x, w] + ([i32(rng, 5)] if bias else [])
    got = run(engine, "Dense", {}, *args)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    if bias:
        want = want + args[2]
    np.testing.assert_array_equal(got, reference.wrap32(want))


@pytest.mark.parametrize("geo", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0], count_include_pad=1),
    dict(kernel_shape=[7, 6]),
])
@pytest.mark.parametrize("divide", [0, 1])
def test_sum_pool(engine, geo, divide):
    rng = np.random.default_rng(4)
    x = i8(rng, 2, 3, 7, 6)
    a = {"kernel": geo["kernel_shape"], "strides": geo.get("strides", [1, 1]),
         "pads": geo.get("pads", [0] * 4), "ceil_mode": geo.get("ceil_mode", 0),
         "count_include_pad": geo.get("count_include_pad", 0)}
    win, count = reference._pool_windows(x.astype(np.int64), a, 0)
    sums = win.sum(axis=(4, 5))
    want = (sums / count).astype(np.int8) if divide else sums.astype(np.int32)
    np.testing.assert_array_equal(run(engine, "SumPool", {**geo, "divide": divide}, x), want)


def test_quantize_dequantize_kernels(engine):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(200) * 3).astype(np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 0.125, -0.125, 0.375]  # ties round to even
    got = run(engine, "Quantize", {"scale": 0.25, "lo": -100, "hi": 90}, x)
    with np.errstate(invalid="ignore"):
        want = np.clip(np.rint(x / np.float32(0.25)), -100, 90).astype(np.int8)
    np.testing.assert_array_equal(got, want)
    q = i32(rng, 50)
    got = run(engine, "Dequantize", {"scale": 1e-3}, q)
    np.testing.assert_array_equal(got, q.astype(np.float32) * np.float32(1e-3))


def test_zero_points_and_per_axis_parameters(engine):
    """Quantize/Dequantize with zero points, per tensor and along an axis, equal the reference
    (ONNX QuantizeLinear/DequantizeLinear semantics)."""
    rng = np.random.default_rng(15)
    x = (rng.standard_normal((2, 3, 4)) * 3).astype(np.float32)
    for attrs in ({"scale": 0.05, "zero_point": -17},
                  {"scale": [0.05, 0.1, 0.02], "zero_point": [3, -128, 40], "axis": 1},
                  {"scale": [0.04, 0.03, 0.02, 0.01], "zero_point": 5, "axis": -1}):
        got, ref = run_node(engine, "quantize", [x], **attrs)
        np.testing.assert_array_equal(got, ref)
        back, ref_back = run_node(engine, "dequantize", [got], **attrs)
        np.testing.assert_array_equal(back, ref_back)
        assert np.abs(back - x).max() > 0  # something was rounded or clipped
    want = np.clip(np.rint(x / np.float32(0.05)) - 17, -128, 127)
    np.testing.assert_array_equal(run_node(engine, "quantize", [x], scale=0.05,
                                           zero_point=-17)[0], want)
    with pytest.raises(CompileError, match="per-axis scale"):
        run_node(engine, "quantize", [x], scale=[0.1, 0.2], axis=1)


def test_recenter_flips_between_uint8_and_int8(engine):
    u = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got, ref = run_node(engine, "recenter", [u], to="int8")
    np.testing.assert_array_equal(got, (u.astype(np.int16) - 128).astype(np.int8))
    np.testing.assert_array_equal(got, ref)
    back, _ = run_node(engine, "recenter", [got], to="uint8")
    np.testing.assert_array_equal(back, u)


# -- quantised IR ops through make_cpu_op ----------------------------------------------------


def _epi(rng, channels, residual=False, lo=-128, hi=127):
    ratio = rng.uniform(2e-5, 2e-4, channels)
    return make_epilogue(ratio, 1 << 20, lo, hi, residual_ratio=0.7 if residual else None)


@pytest.mark.parametrize("groups, cin, cout, geo", [
    (4, 4, 4, dict(pads=(1, 1, 1, 1))),                            # depthwise
    (2, 6, 4, dict(strides=(2, 1), pads=(0, 1, 2, 1), dilations=(1, 2))),
    (1, 3, 5, dict(strides=(2, 2), pads=(1, 0, 1, 0))),
    (8, 8, 16, dict(strides=(2, 2), pads=(1, 1, 1, 1))),           # channel multiplier 2
])
@pytest.mark.parametrize("residual", [False, True])
def test_qconv2d(engine, groups, cin, cout, geo, residual):
    rng = np.random.default_rng(6)
    x, w = i8(rng, 2, cin, 7, 6), i8(rng, cout, cin // groups, 3, 3)
    bias = i32(rng, cout, bound=1 << 16)
    probe = reference.conv2d_nchw(x.astype(np.float64), w.astype(np.float64),
                                  geo.get("strides", (1, 1)), geo.get("pads", (0,) * 4),
                                  geo.get("dilations", (1, 1)), groups)
    r = i8(rng, *probe.shape) if residual else None
    epi = _epi(rng, cout, residual, lo=0)
    got, ref = run_node(engine, "qconv2d", [x, w, bias, r], groups=groups, epilogue=epi, **geo)
    np.testing.assert_array_equal(got, ref)


def test_qconv2d_and_qdense_wrap_around_accumulators(engine):
    """Huge biases overflow the int32 accumulator; both sides wrap identically."""
    rng = np.random.default_rng(7)
    epi = Epilogue(mult=rng.integers(1, 1 << 15, 6), shift=24, pre_shift=2)
    x, w = i8(rng, 1, 6, 5, 5), i8(rng, 6, 1, 3, 3)
    bias = np.full(6, 2**31 - 5000, np.int32)
    got, ref = run_node(engine, "qconv2d", [x, w, bias], groups=6, epilogue=epi)
    np.testing.assert_array_equal(got, ref)
    got, ref = run_node(engine, "qdense", [i8(rng, 4, 33), i8(rng, 6, 33), bias], epilogue=epi)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("bias, residual", [(True, False), (False, False), (True, True)])
def test_qdense(engine, bias, residual):
    rng = np.random.default_rng(8)
    args = [i8(rng, 3, 40), i8(rng, 10, 40), i32(rng, 10, bound=1 << 12) if bias else None,
            i8(rng, 3, 10) if residual else None]
    if not residual:
        args = args[:3]
    got, ref = run_node(engine, "qdense", args, epilogue=_epi(rng, 10, residual))
    np.testing.assert_array_equal(got, ref)


def test_qadd_and_requant(engine):
    rng = np.random.default_rng(9)
    a, b = i8(rng, 2, 5, 4, 3), i8(rng, 2, 5, 4, 3)
    epi = make_epilogue(0.9, 128, 0, 127, residual_ratio=0.45)
    got, ref = run_node(engine, "qadd", [a, b], epilogue=epi)
    np.testing.assert_array_equal(got, ref)
    for x in (i32(rng, 2, 5, 4, 3, bound=1 << 22), i8(rng, 4, 5)):
        got, ref = run_node(engine, "requant", [x], epilogue=_epi(rng, 5))
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("geo", [
    dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True),
    dict(kernel=(2, 2), strides=(2, 2)),
    dict(kernel=(3, 2), strides=(1, 2), pads=(1, 0, 1, 1), count_include_pad=True),
])
def test_qavgpool(engine, geo):
    rng = np.random.default_rng(10)
    count = int(np.prod(geo["kernel"]))
    epi = make_epilogue(0.8 / count, 128 * count)
    got, ref = run_node(engine, "qavgpool", [i8(rng, 2, 3, 9, 8)], epilogue=epi, **geo)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 7), (1, 2, 3, 2, 2)])
def test_qglobal_avgpool(engine, shape):
    rng = np.random.default_rng(11)
    count = int(np.prod(shape[2:]))
    epi = make_epilogue(rng.uniform(0.5, 1.0, shape[1]) / count, 128 * count)
    got, ref = run_node(engine, "qglobal_avgpool", [i8(rng, *shape)], epilogue=epi)
    np.testing.assert_array_equal(got, ref)


def test_quantize_dequantize_ops(engine):
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((2, 3, 4)) * 2).astype(np.float32)
    got, ref = run_node(engine, "quantize", [x], scale=0.02, lo=0, hi=127)
    np.testing.assert_array_equal(got, ref)
    q = i8(rng, 2, 3, 4)
    got, ref = run_node(engine, "dequantize", [q], scale=0.037)
    np.testing.assert_array_equal(got, ref)


def test_missing_epilogue_is_a_compile_error(engine):
    b = GraphBuilder()
    x = b.input("x", (1, 4), "int32")
    g = b.build([b.node("requant", [x])])
    with pytest.raises(CompileError, match="requant.*epilogue"):
        make_cpu_op(g.nodes[0], [g.info(x)], engine=engine)


# -- every node of the zoo's small models, float and quantised -------------------------------


@pytest.mark.parametrize("model", ["small_cnn", "mlp", "resnet_tiny", "mobilenet_tiny"])
def test_zoo_models_node_by_node(engine, model):
    g = import_onnx(getattr(zoo, model)())
    rng = np.random.default_rng(13)
    shape = g.tensors[g.inputs[0]].shape
    cal = [{g.inputs[0]: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    qg = quantize(run_pipeline(g, GRAPH_PASSES), cal).graph
    assert {"qconv2d", "qdense"} & set(qg.ops())
    for graph in (g, qg):
        env = reference.run(graph, cal[1], all_tensors=True)
        for n in graph.nodes:
            op = make_cpu_op(n, [graph.info(i) if i else None for i in n.inputs], engine=engine)
            outs = op(*[env[i] if i else None for i in n.inputs])
            for o, got in zip(n.outputs, outs, strict=True):
                want = env[o]
                assert (got.shape, got.dtype) == (want.shape, want.dtype), n
                if got.dtype.kind == "f":
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(n))
                else:
                    np.testing.assert_array_equal(got, want, err_msg=str(n))
