"""Remaining CPU kernels (Pad, LRN, BatchNorm, Cast, Mean, Neg, Sqrt, Pow, LeakyRelu, MatMul,
Identity) and make_cpu_op for every float/data op of the IR vs compiler.reference, plus CpuOp
serialisation and errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.compiler.ir import OPS, GraphBuilder, Node, TensorInfo
from tessera.compiler.lower.cpu import make_cpu_op, supported_ops
from tessera.compiler.quant.quantize import make_epilogue
from tessera.errors import CompileError, KernelError
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine
from tessera.runtime.cpu.op import CpuOp


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(cache_dir=tmp_path_factory.mktemp("llvm"))


def run(engine: Engine, op: str, attrs: dict, *arrays: np.ndarray) -> np.ndarray:
    kernel = cpu_kernels.get(op, attrs, [(a.shape, a.dtype) for a in arrays], engine=engine)
    outs = kernel(*arrays)
    assert [(o.shape, o.dtype) for o in outs] == kernel.out_specs
    return outs[0]


def one_node(op: str, arrays: list[np.ndarray | None], n_out: int = 1, **attrs):
    b = GraphBuilder()
    names = ["" if a is None else b.input(f"x{k}", a.shape, a.dtype.name)
             for k, a in enumerate(arrays)]
    y = b.node(op, names, n_out=n_out, **attrs)
    return b.build([y] if n_out == 1 else list(y)), names, y


def check_node(engine: Engine, op: str, arrays: list[np.ndarray | None], **attrs) -> CpuOp:
    g, names, y = one_node(op, arrays, **attrs)
    ref = reference.run(g, {n: a for n, a in zip(names, arrays, strict=True) if n})[y]
    cop = make_cpu_op(g.nodes[0], [g.info(n) if n else None for n in names], engine=engine)
    (got,) = cop(*arrays)
    assert (got.shape, got.dtype) == (ref.shape, ref.dtype)
    assert cop.out_specs == [(ref.shape, ref.dtype)]
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, ref)
    return cop


R = np.random.default_rng(0)


def f32(*shape, lo=None):
    x = R.standard_normal(shape).astype(np.float32)
    return np.abs(x) + np.float32(lo) if lo is not None else x


def i8(*shape):
    return R.integers(-128, 128, shape).astype(np.int8)


def i32(*shape):
    return R.integers(-(1 << 31), 1 << 31, shape, dtype=np.int64).astype(np.int32)


# op -> list of (inputs, attrs); every IR op except the quantised ones (test_cpu_kernels_quant)
CASES: dict[str, list[tuple[list, dict]]] = {
    "conv2d": [([f32(1, 4, 7, 7), f32(6, 2, 3, 3), f32(6), f32(1, 6, 4, 4)],
                dict(groups=2, strides=(2, 2), pads=(1, 1, 1, 1), act="relu")),
               ([f32(2, 3, 6, 5), f32(4, 3, 3, 2), None],
                dict(pads=(0, 1, 2, 0), dilations=(1, 2), act="clip", act_min=-0.5,
                     act_max=0.5))],
    "dense": [([f32(3, 17), f32(4, 17), f32(4), f32(3, 4)], dict(act="relu")),
              ([f32(2, 5), f32(7, 5)], {})],
    "matmul": [([f32(2, 1, 3, 5), f32(4, 5, 6)], {}), ([f32(5), f32(3, 5, 2)], {}),
               ([f32(4, 5), f32(5)], {}), ([i32(2, 3, 4), i32(4, 5)], {}),
               ([i8(3, 4), i8(4, 2)], {})],
    "add": [([f32(2, 3, 4), f32(3, 1)], dict(act="relu")), ([i32(4, 5), i32(5)], {})],
    "sub": [([f32(2, 3), f32(2, 3)], dict(act="clip", act_min=-0.2, act_max=0.3)),
            ([i32(3), i32(3)], {})],
    "mul": [([f32(2, 3), f32(1)], {}), ([i32(6), i32(6)], {})],
    "div": [([f32(4, 3), f32(3, lo=0.5)], dict(act="relu"))],
    "max": [([f32(2, 3), f32(3)], {}), ([i8(5), i8(5)], {})],
    "min": [([f32(2, 3), f32(2, 1)], {}), ([i32(5), i32(5)], {})],
    "pow": [([f32(3, 4, lo=0.1), f32(4)], {})],
    "relu": [([f32(3, 5)], {}), ([i8(9)], {})],
    "clip": [([f32(20)], dict(min=-0.5)), ([f32(20)], dict(min=-0.5, max=0.25)),
             ([i8(20)], dict(min=-5.0, max=7.0)), ([i32(20)], dict(max=3.0))],
    "sigmoid": [([f32(4, 5) * 4], {})],
    "tanh": [([f32(4, 5) * 2], {})],
    "exp": [([f32(4, 5)], {})],
    "sqrt": [([f32(3, 7, lo=0.0)], {})],
    "neg": [([f32(6)], {}), ([i8(6)], {}), ([i32(6)], {})],
    "leaky_relu": [([f32(3, 7)], dict(alpha=0.2))],
    "identity": [([f32(2, 3)], {}), ([i8(4)], {})],
    "softmax": [([f32(2, 5, 3)], dict(axis=1)), ([f32(3, 6)], {})],
    "lrn": [([f32(2, 7, 3, 4)], dict(size=3)), ([f32(1, 4, 2, 2)], dict(size=5, bias=2.0,
                                                                          alpha=0.1))],
    "batchnorm": [([f32(2, 3, 4, 4), f32(3), f32(3), f32(3), f32(3, lo=0.5)], {}),
                  ([f32(4, 3), f32(3), f32(3), f32(3), f32(3, lo=0.5)], dict(epsilon=1e-3))],
    "maxpool": [([f32(1, 2, 7, 7)], dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1),
                                         ceil_mode=True)),
                ([i8(2, 3, 6, 6)], dict(kernel=(2, 2), strides=(2, 2)))],
    "avgpool": [([f32(1, 2, 7, 7)], dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1),
                                         ceil_mode=True, count_include_pad=True)),
                ([i8(1, 2, 7, 7)], dict(kernel=(3, 2), strides=(2, 2), pads=(1, 0, 1, 1)))],
    "global_avgpool": [([f32(2, 3, 4, 5)], {}), ([i8(2, 3, 4, 5)], {}), ([f32(1, 3, 6)], {})],
    "global_maxpool": [([f32(2, 3, 4, 5, 2)], {}), ([i8(1, 4, 3, 3)], {})],
    "mean": [([f32(2, 3, 4)], dict(axes=(0, 2), keepdims=False)), ([i32(2, 3, 4)], {}),
             ([i8(3, 5)], dict(axes=(0, 1)))],
    "flatten": [([f32(2, 3, 4)], {}), ([i8(2, 3, 4)], dict(axis=2))],
    "reshape": [([i8(2, 3, 4)], dict(shape=(4, 6)))],
    "transpose": [([f32(2, 3, 4)], dict(perm=(1, 2, 0))), ([i32(2, 3, 4)], {})],
    "concat": [([f32(2, 3), f32(2, 5)], dict(axis=1)), ([i8(1, 2), i8(3, 2), i8(1, 2)],
                                                       dict(axis=0))],
    "slice": [([f32(5, 6)], dict(starts=(1, -1), ends=(4, 0), axes=(0, 1), steps=(2, -2))),
              ([i8(4, 5, 6)], dict(starts=(1,), ends=(100,), axes=(2,)))],
    "pad": [([i8(2, 3)], dict(pads=(1, 0, 2, 3), value=5.0)),
            ([f32(2, 1, 3)], dict(pads=(0, 1, 1, 1, 0, 2), value=1.5))],
    "cast": [([f32(40) * 400], dict(to=t)) for t in ("int8", "int32", "float32")]
            + [([i32(30)], dict(to=t)) for t in ("int8", "float32")]
            + [([i8(30)], dict(to="int32"))],
    "pack": [([i8(3, 20, 2, 2)], dict(block=16, batch=2)), ([f32(3, 20)], dict(block=8))],
    "unpack": [([i8(2, 2, 2, 2, 2, 16)], dict(shape=(3, 20, 2, 2))),
               ([i32(2, 2, 2, 16)], dict(shape=(3, 20)))],
}
QUANT_OPS = {"qconv2d", "qdense", "qadd", "requant", "qavgpool", "qglobal_avgpool", "quantize",
             "dequantize", "recenter"}  # in test_cpu_kernels_quant.py


def test_every_ir_op_is_covered():
    from test_cpu_lowering_families import FAMILY_CASES  # the op families' cases
    assert set(OPS) == set(CASES) | QUANT_OPS | set(FAMILY_CASES)
    assert supported_ops() == sorted(OPS)


@pytest.mark.parametrize("op, k", [(op, k) for op, cases in CASES.items()
                                   for k in range(len(cases))])
def test_ir_op_matches_reference(engine, op, k):
    arrays, attrs = CASES[op][k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # out-of-range float -> int casts
        check_node(engine, op, arrays, **attrs)


def test_cast_edge_values_match_numpy(engine):
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 2.0**31, -2.0**31, 300.7, -300.7,
                  129.9, -129.9, -0.9, 0.9], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for to in ("int8", "int32"):
            np.testing.assert_array_equal(run(engine, "Cast", {"to": to}, x), x.astype(to))
    big = np.array([2**31 - 1, -2**31, 16777217, 255, 128, -129], np.int32)
    np.testing.assert_array_equal(run(engine, "Cast", {"to": "float32"}, big),
                                  big.astype(np.float32))
    np.testing.assert_array_equal(run(engine, "Cast", {"to": "int8"}, big), big.astype(np.int8))


@pytest.mark.parametrize("pads", [(-1, 0, 2, -1), (0, -2, 0, 3), (1, 1, -2, -1)])
def test_pad_negative_pads_crop(engine, pads):
    x = i32(4, 5)
    r = x.ndim
    out = x[max(0, -pads[0]): x.shape[0] - max(0, -pads[2]),
            max(0, -pads[1]): x.shape[1] - max(0, -pads[3])]
    want = np.pad(out, [(max(0, pads[i]), max(0, pads[i + r])) for i in range(r)],
                  constant_values=-7)
    np.testing.assert_array_equal(run(engine, "Pad", {"pads": list(pads), "value": -7}, x), want)


def test_matmul_float_large(engine):
    a, b = f32(3, 33, 70), f32(70, 19)
    np.testing.assert_allclose(run(engine, "MatMul", {}, a, b), a @ b, rtol=1e-5, atol=1e-5)


# -- serialisation -----------------------------------------------------------------------------


def test_cpu_op_json_round_trip(engine, tmp_path):
    x, w, bias = i8(1, 4, 6, 6), i8(4, 1, 3, 3), R.integers(-999, 999, 4).astype(np.int32)
    epi = make_epilogue(np.array([1e-3, 2e-3, 5e-4, 1e-3]), 1 << 16)
    g, names, y = one_node("qconv2d", [x, w, bias], groups=4, pads=(1, 1, 1, 1), epilogue=epi)
    cop = make_cpu_op(g.nodes[0], [g.info(n) for n in names], engine=engine)
    text = json.dumps(cop.to_json())
    other = Engine(cache_dir=tmp_path / "fresh")
    back = CpuOp.from_json(json.loads(text), engine=other)
    assert other.stats.compiles == len(cop.steps) == 2
    assert back.out_specs == cop.out_specs and back.in_specs == cop.in_specs
    assert [k.op for k in back.kernels] == ["Conv", "Requant"]
    np.testing.assert_array_equal(back(x, w, bias)[0], cop(x, w, bias)[0])
    np.testing.assert_array_equal(back(x, w, bias)[0],
                                  reference.run(g, dict(zip(names, (x, w, bias))))[y])
    # optional inputs stay None through the round trip; views (2-D pack) survive too
    g2, n2, _ = one_node("pack", [i8(3, 20)], block=16)
    pk = make_cpu_op(g2.nodes[0], [g2.info(n2[0])], engine=engine)
    pk2 = CpuOp.from_json(json.loads(json.dumps(pk.to_json())), engine=engine)
    z = i8(3, 20)
    np.testing.assert_array_equal(pk2(z)[0], pk(z)[0])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.pop("kernels"), "keys"),
    (lambda d: d.update(outputs=[99]), "outputs"),
    (lambda d: d["kernels"][0].update(inputs=[42]), "slot 42 is not defined"),
    (lambda d: d["kernels"][0].update(ir="define void @f() { ret void }"), "keys"),
    (lambda d: d["kernels"][0].update(op="System"), "no CPU kernel"),
    (lambda d: d["kernels"][0].update(attrs={"cmd": "rm -rf /"}), "unsupported attribute"),
    (lambda d: d["kernels"][0].update(in_specs=[[[4], "float32"]]), "cannot be viewed"),
    (lambda d: d["kernels"][0].update(outputs=[0]), "next free slots"),
    (lambda d: d.update(out_specs=[[[3], "int8"]]), "does not hold"),
])
def test_cpu_op_from_json_rejects_bad_data(engine, mutate, message):
    g, names, _ = one_node("relu", [f32(3)])
    data = make_cpu_op(g.nodes[0], [g.info(names[0])], engine=engine).to_json()
    mutate(data)
    with pytest.raises(KernelError, match=message):
        CpuOp.from_json(data, engine=engine)


def test_cpu_op_from_json_bounds_the_memory_of_all_its_outputs(engine):
    """A description whose kernels each stay under the per-array bound but together would keep
    gigabytes alive (e.g. 64 Pads of the op's input) is refused before anything is allocated."""
    g, names, _ = one_node("relu", [f32(3)])
    data = make_cpu_op(g.nodes[0], [g.info(names[0])], engine=engine).to_json()
    pad = {"op": "Pad", "attrs": {"pads": [0, 0, 40_000, 2997], "value": 0.0},  # 480 MB each
           "in_specs": [[[1, 3], "float32"]]}
    data["kernels"] = [{**pad, "inputs": [0], "outputs": [1 + k]} for k in range(3)]
    data["outputs"], data["out_specs"] = [1], [[[40_001, 3000], "float32"]]
    with pytest.raises(KernelError, match=r"kernels\[2\]: the op's kernel outputs need "
                                          r"\d+ bytes together, more than 1073741824"):
        CpuOp.from_json(data, engine=engine)
    data["kernels"] = data["kernels"][:2]  # 960 MiB: allowed (nothing is allocated to load)
    assert CpuOp.from_json(data, engine=engine).out_specs[0][0] == (40_001, 3000)


# -- errors ----------------------------------------------------------------------------------


def _node_specs(op, shapes_dtypes, **attrs):
    node = Node(op, tuple(f"x{k}" for k in range(len(shapes_dtypes))), ("y",), attrs, "n1")
    return node, [TensorInfo(s, d) for s, d in shapes_dtypes]


@pytest.mark.parametrize("op, ins, attrs, message", [
    ("add", [((3,), "bool"), ((3,), "bool")], {}, "Add: input 0 must have dtype"),
    ("cast", [((3,), "float32")], dict(to="int16"), "must be one of"),
    ("conv2d", [((1, 2, 4, 4), "int8"), ((2, 2, 1, 1), "int8")], {}, "float32 only"),
    ("sqrt", [((3,), "int32")], {}, "Sqrt: input must have dtype float32"),
    ("pad", [((3,), "int8")], dict(pads=(1, 1), value=0.5), "value must be an integer"),
    ("relu", [((3,), "int64")], {}, "not int64"),
    ("matmul", [((3, 4), "float32"), ((5, 2), "float32")], {}, "inner dimensions"),
    ("no_such_op", [((3,), "float32")], {}, "unknown op"),
])
def test_errors_name_the_node_and_op(engine, op, ins, attrs, message):
    node, specs = _node_specs(op, ins, **attrs)
    with pytest.raises(CompileError, match=message) as info:
        make_cpu_op(node, specs, engine=engine)
    assert "'n1'" in str(info.value) and op in str(info.value)


def test_call_checks_arrays(engine):
    g, names, _ = one_node("dense", [f32(2, 3), f32(4, 3), None])
    cop = make_cpu_op(g.nodes[0], [g.info(names[0]), g.info(names[1]), None], engine=engine)
    with pytest.raises(KernelError, match="dense.*expects 3 input"):
        cop(f32(2, 3), f32(4, 3))
    with pytest.raises(KernelError, match="dense.*input 0 must be float32\\[2, 3\\]"):
        cop(f32(3, 3), f32(4, 3), None)
    with pytest.raises(KernelError, match="absent"):
        cop(f32(2, 3), f32(4, 3), f32(4))
    with pytest.raises(CompileError, match="None exactly when"):
        make_cpu_op(g.nodes[0], [g.info(names[0]), g.info(names[1]), g.info(names[0])],
                    engine=engine)
