"""Convolution, transposed convolution, pooling, GEMM/MatMul, softmax, normalisation, resize and
top-k against onnxruntime (numpy reference and compiled float path), on small seeded graphs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_check import check, make_model

R = np.random.default_rng(11)


def f32(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


def _node_model(op, x, inits, opset=17, outs=("y",), extra_inputs=(), **attrs):
    ins = ["x", *inits, *extra_inputs]
    node = helper.make_node(op, ins, list(outs), **attrs)
    return make_model([node], {"x": x}, list(outs), inits, opset=opset)


# -- convolution ------------------------------------------------------------------------------

CONV = [
    dict(x=(1, 4, 9, 8), w=(6, 4, 3, 3), attrs=dict(dilations=[2, 1], pads=[2, 1, 2, 1])),
    dict(x=(2, 4, 7, 7), w=(4, 2, 3, 2), attrs=dict(group=2, pads=[0, 1, 2, 0], strides=[2, 1])),
    dict(x=(1, 3, 8, 8), w=(5, 3, 3, 3), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    dict(x=(1, 3, 8, 8), w=(5, 3, 2, 2), attrs=dict(auto_pad="SAME_LOWER")),
    dict(x=(1, 6, 5, 5), w=(6, 1, 3, 3), attrs=dict(group=6, pads=[1, 1, 1, 1])),
    dict(x=(2, 3, 16), w=(4, 3, 5), attrs=dict(pads=[2, 1], strides=[2], dilations=[2])),
    dict(x=(1, 4, 10), w=(4, 2, 3), attrs=dict(group=2, auto_pad="SAME_UPPER")),
]


@pytest.mark.parametrize("case", CONV, ids=lambda c: f"{len(c['x']) - 2}d-{sorted(c['attrs'])}")
def test_conv(case):
    x, w = f32(*case["x"]), f32(*case["w"], scale=0.3)
    b = f32(case["w"][0])
    check(_node_model("Conv", x, {"w": w, "b": b}, **case["attrs"]), {"x": x}, rtol=1e-4,
          atol=1e-4)


CONVT = [
    dict(x=(1, 3, 4, 5), w=(3, 2, 3, 3), attrs={}),
    dict(x=(1, 4, 4, 4), w=(4, 3, 2, 2), attrs=dict(strides=[2, 2])),
    dict(x=(2, 4, 3, 5), w=(4, 2, 3, 3), attrs=dict(strides=[2, 3], pads=[1, 0, 1, 2],
                                                    output_padding=[1, 1])),
    dict(x=(1, 6, 4, 4), w=(6, 1, 3, 3), attrs=dict(group=3, dilations=[2, 1], strides=[1, 2])),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), attrs=dict(strides=[2, 2], output_shape=[6, 7])),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), attrs=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), attrs=dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    dict(x=(2, 3, 7), w=(3, 4, 3), attrs=dict(strides=[2], pads=[1, 0], output_padding=[1])),
    dict(x=(1, 2, 3, 4, 5), w=(2, 3, 2, 3, 3), attrs={}),
    dict(x=(2, 4, 3, 3, 4), w=(4, 2, 3, 2, 2), attrs=dict(group=2, strides=[2, 1, 2],
                                                          pads=[1, 0, 1, 0, 1, 1],
                                                          output_padding=[1, 0, 1])),
    dict(x=(1, 2, 4, 3, 3), w=(2, 2, 2, 2, 2), attrs=dict(dilations=[2, 1, 2], strides=[3, 2, 1])),
    dict(x=(1, 1, 3, 3, 3), w=(1, 2, 3, 3, 3), attrs=dict(auto_pad="SAME_UPPER",
                                                          strides=[2, 2, 2])),
]


@pytest.mark.parametrize("case", CONVT, ids=lambda c: f"{len(c['x']) - 2}d-{sorted(c['attrs'])}")
def test_conv_transpose(case):
    x, w = f32(*case["x"]), f32(*case["w"], scale=0.3)
    groups = case["attrs"].get("group", 1)
    b = f32(case["w"][1] * groups)
    check(_node_model("ConvTranspose", x, {"w": w, "b": b}, **case["attrs"]), {"x": x},
          rtol=1e-4, atol=1e-4)


POOL = [
    ("MaxPool", (1, 3, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2])),
    ("MaxPool", (1, 2, 7, 8), dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1], ceil_mode=1,
                                   strides=[2, 2])),
    ("MaxPool", (2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ("AveragePool", (2, 3, 11), dict(kernel_shape=[4], strides=[3], pads=[1, 2],
                                     count_include_pad=1)),
    ("AveragePool", (1, 2, 7, 7), dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER",
                                       strides=[2, 2])),
    ("AveragePool", (1, 2, 8, 8), dict(kernel_shape=[3, 3], dilations=[2, 2], opset=19)),
]


@pytest.mark.parametrize("op, shape, attrs", POOL, ids=lambda v: str(v))
def test_pool(op, shape, attrs):
    attrs = dict(attrs)
    opset = attrs.pop("opset", 17)
    x = f32(*shape)
    check(_node_model(op, x, {}, opset=opset, **attrs), {"x": x})


MAXPOOL_INDICES = [
    ((2, 3, 7, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 2, 8, 8), dict(kernel_shape=[2, 3], strides=[2, 1], pads=[0, 1, 1, 0],
                        storage_order=1)),
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, dilations=[2, 1])),
]


@pytest.mark.parametrize("shape, attrs", MAXPOOL_INDICES, ids=lambda v: str(v))
def test_maxpool_indices(shape, attrs):
    # small integers: windows with ties (the first maximum in row-major order wins)
    x = R.integers(-3, 4, shape).astype(np.float32)
    check(_node_model("MaxPool", x, {}, outs=("y", "i"), opset=12, **attrs), {"x": x})


def test_global_pool_1d():
    x = f32(2, 5, 9)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["a"]),
             helper.make_node("GlobalMaxPool", ["x"], ["m"])]
    check(make_model(nodes, {"x": x}, ["a", "m"]), {"x": x})


# -- GEMM / MatMul ------------------------------------------------------------------------------

@pytest.mark.parametrize("ta, tb, alpha, beta, c_shape", [
    (0, 0, 1.0, 1.0, (5,)), (1, 0, 0.5, 2.0, (1, 5)), (0, 1, 1.5, 0.0, (3, 5)),
    (1, 1, 1.0, 0.25, (3, 1)), (0, 0, 2.0, 1.0, None), (0, 1, 1.0, 1.0, ()),
])
@pytest.mark.parametrize("b_const", [True, False])
def test_gemm(ta, tb, alpha, beta, c_shape, b_const):
    a = f32(4, 3) if ta else f32(3, 4)
    b = f32(5, 4) if tb else f32(4, 5)
    inits = {} if not b_const else {"b": b}
    feeds = {"a": a} if b_const else {"a": a, "b": b}
    ins = ["a", "b"]
    if c_shape is not None:
        inits["c"] = f32(*c_shape)
        ins.append("c")
    node = helper.make_node("Gemm", ins, ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta)
    check(make_model([node], feeds, ["y"], inits), feeds)


@pytest.mark.parametrize("a_shape, b_shape, b_const", [
    ((2, 3, 4, 5), (5, 6), True),     # batch of rows times a weight: one dense layer
    ((3, 4, 5), (3, 5, 2), False),   # batched
    ((2, 1, 4, 5), (3, 5, 6), False),  # broadcast batch dimensions
    ((5,), (2, 5, 3), False),          # 1-D left operand
    ((3, 4), (4,), False),             # 1-D right operand
])
def test_matmul(a_shape, b_shape, b_const):
    a, b = f32(*a_shape), f32(*b_shape)
    feeds = {"a": a} if b_const else {"a": a, "b": b}
    inits = {"b": b} if b_const else {}
    m = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], feeds, ["y"], inits)
    check(m, feeds, rtol=1e-4, atol=1e-5)


# -- softmax ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis, opset", [(0, 13), (1, 13), (-1, 13), (2, 11), (1, 11), (-1, 11)])
def test_softmax_any_axis_both_semantics(op, axis, opset):
    x = f32(2, 3, 4, 5, scale=3.0)
    check(_node_model(op, x, {}, opset=opset, axis=axis), {"x": x})


# -- normalisation ------------------------------------------------------------------------------

@pytest.mark.parametrize("axis, with_bias, stats", [(-1, True, False), (1, False, False),
                                                     (2, True, True)])
def test_layer_normalization(axis, with_bias, stats):
    x = f32(2, 3, 4, 5, scale=2.0) + np.float32(1.0)
    tail = x.shape[axis:]
    inits = {"s": f32(*tail)}
    if with_bias:
        inits["b"] = f32(*tail[-1:])  # broadcast bias
    outs = ["y", "mean", "inv"] if stats else ["y"]
    m = make_model([helper.make_node("LayerNormalization", ["x", *inits], outs, axis=axis,
                                     epsilon=1e-3)], {"x": x}, outs, inits)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


def test_instance_and_group_normalization():
    x = f32(2, 6, 4, 5, scale=2.0)
    inits = {"s": f32(6), "b": f32(6), "gs": f32(6), "gb": f32(6)}
    nodes = [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["i"], epsilon=1e-4),
             helper.make_node("GroupNormalization", ["x", "gs", "gb"], ["g"], num_groups=3)]
    check(make_model(nodes, {"x": x}, ["i", "g"], inits, opset=21), {"x": x}, rtol=1e-4,
          atol=1e-5)


def test_lp_and_mean_variance_normalization():
    x = f32(2, 3, 4, 5)
    nodes = [helper.make_node("LpNormalization", ["x"], ["l2"], axis=1),
             helper.make_node("LpNormalization", ["x"], ["l1"], axis=-1, p=1),
             helper.make_node("MeanVarianceNormalization", ["x"], ["mvn"])]
    check(make_model(nodes, {"x": x}, ["l2", "l1", "mvn"]), {"x": x}, rtol=1e-4, atol=1e-5)


def test_batchnorm_1d():
    x = f32(4, 3, 7)
    inits = {"s": f32(3), "b": f32(3), "m": f32(3), "v": np.abs(f32(3)) + np.float32(0.5)}
    m = make_model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                   {"x": x}, ["y"], inits)
    check(m, {"x": x})


# -- resize -------------------------------------------------------------------------------------

RESIZE = [
    # (mode, coordinate_transformation_mode, nearest_mode, scales or None, sizes or None)
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2], None),           # YOLO upsample
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.75], None),
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_ceil", None, [1, 3, 7, 5]),
    ("nearest", "align_corners", "ceil", None, [1, 3, 9, 4]),
    ("nearest", "pytorch_half_pixel", "round_prefer_floor", [1, 1, 0.6, 1.7], None),
    ("linear", "half_pixel", "", [1, 1, 2, 2], None),                   # PyTorch bilinear
    ("linear", "pytorch_half_pixel", "", None, [1, 3, 9, 1]),
    ("linear", "align_corners", "", None, [1, 3, 11, 7]),
    ("linear", "asymmetric", "", [1, 1, 0.5, 1.5], None),
    ("linear", "half_pixel_symmetric", "", [1, 1, 1.4, 0.8], None),
    ("cubic", "half_pixel", "", [1, 1, 1.6, 2.0], None),
    ("cubic", "align_corners", "", None, [1, 3, 8, 9]),
]


@pytest.mark.parametrize("mode, coord, nearest, scales, sizes", RESIZE, ids=lambda v: str(v))
def test_resize(mode, coord, nearest, scales, sizes):
    x = f32(1, 3, 6, 5)
    attrs = dict(mode=mode, coordinate_transformation_mode=coord)
    if nearest:
        attrs["nearest_mode"] = nearest
    inits = {"roi": np.zeros(0, np.float32)}
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.array(sizes, np.int64)
    m = make_model([helper.make_node("Resize", ["x", *inits], ["y"], **attrs)], {"x": x},
                   ["y"], inits, opset=19)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


def test_resize_cubic_exclude_outside_and_crop_and_resize():
    x = f32(1, 2, 5, 6)
    inits = {"roi": np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], np.float32),
             "scales": np.array([1, 1, 1.5, 1.5], np.float32)}
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["a"], mode="cubic",
                              exclude_outside=1, cubic_coeff_a=-0.5),
             helper.make_node("Resize", ["x", "roi", "scales"], ["b"], mode="linear",
                              coordinate_transformation_mode="tf_crop_and_resize",
                              extrapolation_value=3.0)]
    check(make_model(nodes, {"x": x}, ["a", "b"], inits, opset=13), {"x": x}, rtol=1e-4,
          atol=1e-5)


def test_resize_axes_and_keep_aspect_ratio():
    x = f32(1, 2, 6, 4)
    nodes = [helper.make_node("Resize", ["x", "", "", "sz"], ["a"], axes=[2, 3],
                              keep_aspect_ratio_policy="not_larger"),
             helper.make_node("Resize", ["x", "", "sc"], ["b"], axes=[3], mode="linear")]
    inits = {"sz": np.array([9, 9], np.int64), "sc": np.array([2.5], np.float32)}
    check(make_model(nodes, {"x": x}, ["a", "b"], inits, opset=18), {"x": x})


def test_resize_opset11_and_10_and_upsample():
    x = f32(1, 2, 3, 4)
    scales = np.array([1, 1, 2, 3], np.float32)
    m11 = make_model([helper.make_node("Resize", ["x", "roi", "s"], ["y"])], {"x": x}, ["y"],
                     {"roi": np.zeros(0, np.float32), "s": scales}, opset=11)
    m10 = make_model([helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")], {"x": x},
                     ["y"], {"s": scales}, opset=10)
    up = make_model([helper.make_node("Upsample", ["x", "s"], ["y"])], {"x": x}, ["y"],
                    {"s": scales}, opset=9)
    for m in (m11, m10, up):
        check(m, {"x": x})


def test_resize_int8_nearest_reference():
    """Nearest resize is a gather: int8 tensors (the int8 path) go through it unchanged."""
    from tessera.compiler import reference
    from tessera.compiler.ir import GraphBuilder
    from tessera.compiler.lower.cpu import make_cpu_op
    b = GraphBuilder()
    x = b.input("x", (1, 2, 3, 4), "int8")
    y = b.node("resize", [x], scales=(1, 1, 2, 2), out_shape=(1, 2, 6, 8), coord="asymmetric",
               nearest_mode="floor")
    g = b.build([y])
    xv = R.integers(-128, 128, (1, 2, 3, 4)).astype(np.int8)
    want = xv.repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_array_equal(reference.run(g, {"x": xv})[y], want)
    (got,) = make_cpu_op(g.nodes[0], [g.info(x)])(xv)
    np.testing.assert_array_equal(got, want)


# -- top-k --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, axis, largest", [(3, -1, 1), (2, 1, 0), (4, 0, 1)])
def test_topk(k, axis, largest):
    x = np.round(f32(4, 5, 6) * 2)  # ties: lower index first
    m = make_model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis,
                                     largest=largest)], {"x": x}, ["v", "i"],
                   {"k": np.array([k], np.int64)}, opset=11)
    check(m, {"x": x})
