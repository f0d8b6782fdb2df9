"""make_cpu_op for every IR op of the op families (math, nn, shape, rnn) against the numpy
reference, including the integer and bool variants the graphs use, and CpuOp round trips."""

from __future__ import annotations

import numpy as np
import pytest
from test_cpu_kernels_misc import f32, i8, i32, one_node

from tessera.compiler import reference
from tessera.compiler.ir.ops_math import UNARY_FLOAT
from tessera.compiler.lower.cpu import make_cpu_op
from tessera.runtime.cpu.jit import Engine
from tessera.runtime.cpu.op import CpuOp

R = np.random.default_rng(21)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(cache_dir=tmp_path_factory.mktemp("llvm"))


def i64(*shape):
    return R.integers(-1000, 1000, shape).astype(np.int64)


def b8(*shape):
    return R.random(shape) > 0.5


_UNARY_CASES = {op: [([f32(3, 4) * 3], {})] for op in UNARY_FLOAT}
_UNARY_CASES["log"] = [([f32(3, 4, lo=0.1)], {})]
_UNARY_CASES["abs"] += [([i8(7)], {}), ([i64(7)], {})]
_UNARY_CASES["sign"] += [([i32(7)], {})]
_UNARY_CASES["floor"] += [([i32(5)], {})]
_UNARY_CASES["gelu"] += [([f32(9)], dict(approximate="tanh"))]
_UNARY_CASES["hard_sigmoid"] += [([f32(9)], dict(alpha=0.3, beta=0.6))]
_UNARY_CASES["silu"] += [([f32(9)], dict(alpha=1.7))]

FAMILY_CASES: dict[str, list[tuple[list, dict]]] = {
    **_UNARY_CASES,
    "mod": [([i32(4, 3), np.array([3, -5, 7], np.int32)], {}),
            ([i64(6), np.array([4], np.int64)], dict(fmod=1)),
            ([f32(5), f32(5, lo=0.5)], dict(fmod=1))],
    "prelu": [([f32(2, 3, 4), f32(3, 1)], {})],
    **{op: [([f32(3, 4).round(), f32(4).round()], {}), ([i64(5), i64(5)], {}),
            ([i8(4), i8(1)], {}), ([b8(3), b8(3)], {})]
       for op in ("equal", "less", "greater", "less_equal", "greater_equal")},
    **{op: [([b8(2, 5), b8(5)], {})] for op in ("and", "or", "xor")},
    "not": [([b8(6)], {})],
    "isnan": [([f32(5)], {})],
    "isinf": [([f32(5)], dict(detect_negative=0))],
    "where": [([b8(3, 4), f32(3, 4), f32(4)], {}), ([b8(5), i64(5), i64(1)], {}),
              ([b8(2, 1), i8(1, 3), i8(2, 3)], {})],
    "reduce": [([f32(3, 4, 5)], dict(fn=fn, axes=axes, keepdims=kd))
               for fn, axes, kd in [("sum", (1,), True), ("max", (0, 2), False),
                                    ("min", (2,), True), ("prod", (0,), False),
                                    ("l1", (1, 2), True), ("l2", (0, 1, 2), False),
                                    ("sum_square", (2,), False), ("log_sum_exp", (0, 2), True)]]
              + [([f32(3, 4, lo=0.1)], dict(fn="log_sum", axes=(1,))),
                 ([i32(4, 5)], dict(fn="sum", axes=(1,))), ([i8(4, 5)], dict(fn="max", axes=(0,))),
                 ([i64(3, 4)], dict(fn="min", axes=(0, 1), keepdims=False))],
    "argmax": [([f32(3, 4, 5)], dict(axis=1)), ([i8(4, 6)], dict(axis=-1, fn="min",
                                                                    keepdims=False)),
               ([f32(5, 3).round()], dict(axis=0, select_last_index=True))],
    "conv_transpose2d": [([f32(1, 4, 3, 4), f32(4, 3, 3, 3), f32(6)],
                          dict(groups=2, strides=(2, 2), pads=(1, 0, 1, 1),
                               output_padding=(1, 0), dilations=(1, 2)))],
    "resize": [([f32(1, 2, 4, 5)], dict(mode="linear", scales=(1, 1, 1.5, 2),
                                        out_shape=(1, 2, 6, 10))),
               ([f32(1, 2, 4, 5)], dict(mode="cubic", coord="align_corners",
                                        scales=(1, 1, 2, 1.2), out_shape=(1, 2, 8, 6))),
               ([i8(1, 2, 3, 3)], dict(scales=(1, 1, 2, 2), out_shape=(1, 2, 6, 6),
                                       coord="asymmetric", nearest_mode="floor"))],
    "layernorm": [([f32(2, 3, 4), f32(3, 4), f32(3, 4)], dict(axis=1)),
                  ([f32(2, 5), f32(5), f32(1)], dict(axis=-1, epsilon=1e-3))],
    "log_softmax": [([f32(2, 3, 4)], dict(axis=1)), ([f32(3, 5)], {})],
    "topk": [([f32(3, 7)], dict(k=3)), ([i32(4, 5)], dict(k=2, axis=0, largest=False))],
    # rounded values: windows with ties (the first maximum wins)
    "maxpool_indices": [([np.round(f32(2, 3, 7, 9) * 2)], dict(kernel=(3, 3), strides=(2, 2),
                                                             pads=(1, 1, 1, 1))),
                        ([i8(1, 2, 8, 8)], dict(kernel=(2, 3), strides=(2, 1), pads=(0, 1, 1, 0),
                                                ceil_mode=True, storage_order=1))],
    "expand": [([f32(3, 1)], dict(shape=(2, 3, 4))), ([b8(1, 4)], dict(shape=(3, 1)))],
    "tile": [([i8(2, 3)], dict(repeats=(2, 2))), ([f32(1, 2, 3)], dict(repeats=(3, 1, 2)))],
    "gather": [([f32(4, 5)], dict(axis=1, indices=(4, 0, 0), indices_shape=(3,))),
               ([i64(3, 4)], dict(axis=0, indices=(2,), indices_shape=()))],
    "lstm": [([f32(3, 2, 4), f32(2, 12, 4), f32(2, 12, 3), f32(2, 24), f32(2, 2, 3),
               f32(2, 2, 3), f32(2, 9)], dict(hidden_size=3, direction="bidirectional",
                                              clip=0.7))],
    "gru": [([f32(3, 2, 4), f32(1, 9, 4), f32(1, 9, 3), f32(1, 18), f32(1, 2, 3)],
             dict(hidden_size=3, direction="reverse", linear_before_reset=True))],
    "rnn": [([f32(3, 2, 4), f32(1, 3, 4), f32(1, 3, 3), f32(1, 6), f32(1, 2, 3)],
             dict(hidden_size=3, activations=("relu",)))],
}


@pytest.mark.parametrize("op, k", [(op, k) for op, cases in FAMILY_CASES.items()
                                   for k in range(len(cases))])
def test_family_op_matches_reference(engine, op, k):
    arrays, attrs = FAMILY_CASES[op][k]
    n_out = {"topk": 2, "lstm": 3, "gru": 2, "rnn": 2}.get(op, 1)
    g, names, y = one_node(op, arrays, n_out=n_out, **attrs)
    outs = [y] if n_out == 1 else list(y)
    ref = reference.run(g, {n: a for n, a in zip(names, arrays, strict=True) if n})
    cop = make_cpu_op(g.nodes[0], [g.info(n) if n else None for n in names], engine=engine)
    got = cop(*arrays)
    assert len(got) == n_out
    for o, v in zip(outs, got, strict=True):
        want = ref[o]
        assert (v.shape, v.dtype) == (want.shape, want.dtype), o
        if v.dtype.kind == "f":
            np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-5, err_msg=o)
        else:
            np.testing.assert_array_equal(v, want, err_msg=o)
    # the op saves as kernel descriptions and comes back identical
    again = CpuOp.from_json(cop.to_json(), engine=engine)
    assert [s.kernel.description() for s in again.steps] == \
        [s.kernel.description() for s in cop.steps]
