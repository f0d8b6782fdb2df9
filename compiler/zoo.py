"""Model zoo: ONNX models built with ``onnx.helper`` with seeded random weights.

Weights use He initialisation; every BatchNormalization has non-trivial seeded statistics, so
folding it is observable. Every builder returns a checked ``onnx.ModelProto`` (opset 17) with
one input ``"input"`` (N=1) and one output ``"output"``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "resnet18", "resnet_tiny", "mobilenet_v1", "mobilenet_tiny", "regnet_x_400mf",
    "resnext_tiny", "mlp", "small_cnn",
    "seeded_cnn", "trained_like_cnn", "light_models", "ZOO_SMALL", "OPSET",
]

OPSET = 17


class _Net:
    """Tiny ONNX graph builder: each method appends nodes and returns the output name."""

    def __init__(self, seed: int, name: str):
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def _n(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def _init(self, base: str, v: np.ndarray) -> str:
        name = self._n(base)
        self.inits.append(numpy_helper.from_array(np.asarray(v, np.float32), name))
        return name

    def op(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self._n(op.lower() + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self._n(op), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None,
             groups: int = 1, bias: bool = False) -> str:
        pad = k // 2 if pad is None else pad
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)
        ins = [x, self._init("w", w)]
        if bias:
            ins.append(self._init("b", self.rng.standard_normal(cout) * 0.1))
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=groups)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c),
                  r.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x] + [self._init("bn", p) for p in params],
                       epsilon=1e-5)

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                relu: bool = True) -> str:
        y = self.bn(self.conv(x, cin, cout, k, stride, groups=groups), cout)
        return self.op("Relu", [y]) if relu else y

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.standard_normal((cout, cin)) * np.sqrt(2.0 / cin)
        b = self.rng.standard_normal(cout) * 0.1
        return self.op("Gemm", [x, self._init("fc", w), self._init("fcb", b)], transB=1)

    def model(self, x_shape: Sequence[int], y: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [y], ["output"], name="output_identity"))
        g = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
            initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tessera.zoo")
        m.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        shapes = {vi.name: vi for vi in inferred.graph.value_info}
        out = m.graph.output[0]
        out.type.CopyFrom(shapes[y].type)  # declare the output's static shape
        onnx.checker.check_model(m, full_check=True)
        return m


def _basic_block(net: _Net, x: str, cin: int, cout: int, stride: int) -> str:
    y = net.conv_bn(x, cin, cout, 3, stride)
    y = net.conv_bn(y, cout, cout, 3, 1, relu=False)
    short = x if stride == 1 and cin == cout else net.conv_bn(x, cin, cout, 1, stride, relu=False)
    return net.op("Relu", [net.op("Add", [y, short])])


def resnet18(input_size: int = 224, num_classes: int = 1000, seed: int = 0,
             width: int = 64) -> onnx.ModelProto:
    """ResNet-18 (basic blocks [2, 2, 2, 2]) for ``input_size`` x ``input_size`` RGB."""
    net = _Net(seed, "resnet18")
    x = net.conv_bn("input", 3, width, 7, 2)
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        for blk in range(2):
            stride = 2 if stage > 0 and blk == 0 else 1
            x = _basic_block(net, x, c, width * mult, stride)
            c = width * mult
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    return net.model((1, 3, input_size, input_size), net.gemm(x, c, num_classes))


def resnet_tiny(input_size: int = 32, num_classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Four residual blocks (identity and projection shortcuts), odd-sized head."""
    net = _Net(seed, "resnet_tiny")
    x = net.conv_bn("input", 3, 16, 3, 1)
    x = _basic_block(net, x, 16, 16, 1)
    x = _basic_block(net, x, 16, 24, 2)
    x = _basic_block(net, x, 24, 24, 1)
    x = _basic_block(net, x, 24, 40, 2)
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    return net.model((1, 3, input_size, input_size), net.gemm(x, 40, num_classes))


_MOBILENET = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
    [(1024, 2), (1024, 1)]


def _mobilenet(net: _Net, size: int, width: float, num_classes: int,
               layers: Sequence[tuple[int, int]], stem: int) -> onnx.ModelProto:
    c = max(8, int(stem * width))
    x = net.conv_bn("input", 3, c, 3, 2)
    for cout, stride in layers:
        cout = max(8, int(cout * width))
        x = net.conv_bn(x, c, c, 3, stride, groups=c)  # depthwise
        x = net.conv_bn(x, c, cout, 1, 1)  # pointwise
        c = cout
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    y = net.op("Softmax", [net.gemm(x, c, num_classes)], axis=-1)
    return net.model((1, 3, size, size), y)


def mobilenet_v1(input_size: int = 224, width: float = 1.0, num_classes: int = 1000,
                 seed: int = 0) -> onnx.ModelProto:
    """MobileNet v1 (depthwise-separable convs, BN + ReLU) with a softmax head."""
    return _mobilenet(_Net(seed, "mobilenet_v1"), input_size, width, num_classes, _MOBILENET, 32)


def mobilenet_tiny(input_size: int = 32, num_classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """A five-block MobileNet with odd widths."""
    layers = [(24, 1), (40, 2), (40, 1), (72, 2), (72, 1)]
    return _mobilenet(_Net(seed, "mobilenet_tiny"), input_size, 1.0, num_classes, layers, 12)


def _grouped_block(net: _Net, x: str, cin: int, width: int, cout: int, stride: int,
                   group_width: int) -> str:
    """ResNeXt / RegNetX bottleneck: 1x1, grouped 3x3 (``group_width`` channels a group,
    carrying the stride), 1x1, projection shortcut where the shape changes."""
    y = net.conv_bn(x, cin, width, 1)
    y = net.conv_bn(y, width, width, 3, stride, groups=width // group_width)
    y = net.conv_bn(y, width, cout, 1, relu=False)
    short = x if stride == 1 and cin == cout else net.conv_bn(x, cin, cout, 1, stride, relu=False)
    return net.op("Relu", [net.op("Add", [y, short])])


def regnet_x_400mf(input_size: int = 224, num_classes: int = 1000, seed: int = 0
                   ) -> onnx.ModelProto:
    """RegNetX-400MF's shape (Radosavovic et al. 2020): stem 3x3/2 to 32 channels, stages of
    widths 32/64/160/384 and depths 1/2/7/12 of bottlenecks (ratio 1) with group width 16."""
    net = _Net(seed, "regnet_x_400mf")
    x = net.conv_bn("input", 3, 32, 3, 2)
    c = 32
    for width, depth in ((32, 1), (64, 2), (160, 7), (384, 12)):
        for blk in range(depth):
            x = _grouped_block(net, x, c, width, width, 2 if blk == 0 else 1, 16)
            c = width
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    return net.model((1, 3, input_size, input_size), net.gemm(x, c, num_classes))


def resnext_tiny(input_size: int = 32, num_classes: int = 10, seed: int = 0
                 ) -> onnx.ModelProto:
    """Four grouped bottlenecks with group widths 4, 8, 16 and 24 (ResNeXt 32x4d's first
    stage has 4; RegNets 8 to 48), strides and projection shortcuts."""
    net = _Net(seed, "resnext_tiny")
    x = net.conv_bn("input", 3, 16, 3, 1)
    c = 16
    for width, cout, stride, gw in ((32, 32, 1, 4), (32, 48, 2, 8), (48, 48, 1, 16),
                                    (48, 72, 2, 24)):
        x = _grouped_block(net, x, c, width, cout, stride, gw)
        c = cout
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    return net.model((1, 3, input_size, input_size), net.gemm(x, c, num_classes))


def mlp(in_features: int = 64, hidden: Sequence[int] = (96, 48), num_classes: int = 10,
        seed: int = 0) -> onnx.ModelProto:
    """Gemm/ReLU stack (the last layer a MatMul + Add), softmax output."""
    net = _Net(seed, "mlp")
    x, c = "input", in_features
    for h in hidden:
        x = net.op("Relu", [net.gemm(x, c, h)])
        c = h
    w = net.rng.standard_normal((c, num_classes)) * np.sqrt(2.0 / c)
    y = net.op("MatMul", [x, net._init("mm", w)])
    y = net.op("Add", [y, net._init("mmb", net.rng.normal(0, 0.1, num_classes))])
    return net.model((1, in_features), net.op("Softmax", [y], axis=-1))


def small_cnn(input_size: int = 27, num_classes: int = 7, seed: int = 0) -> onnx.ModelProto:
    """Odd channel counts and sizes, strides, a concat of two branches, average pooling,
    ReLU6 (Clip), a residual add without ReLU, a Reshape fed by shape arithmetic."""
    net = _Net(seed, "small_cnn")
    x = net.conv_bn("input", 3, 13, 3, 2)
    a = net.conv_bn(x, 13, 11, 1)
    b = net.bn(net.conv(x, 13, 7, 3, bias=True), 7)
    b = net.op("Clip", [b, net._init("lo", np.array(0.0)), net._init("hi", np.array(6.0))])
    x = net.op("Concat", [a, b], axis=1)  # 18 channels
    x = net.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = net.conv_bn(x, 18, 18, 3, 1, relu=False)
    x = net.op("Add", [x, y])
    x = net.conv_bn(x, 18, 29, 3, 2, groups=1)
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    shape = net.op("Shape", [x])
    batch = net.op("Gather", [shape, net._init_i64("idx", np.array([0]))], axis=0)
    newshape = net.op("Concat", [batch, net._init_i64("m1", np.array([-1]))], axis=0)
    x = net.op("Reshape", [x, newshape])
    s = ((input_size - 1) // 2 + 1) // 2  # stem conv (stride 2), avgpool
    s = ((s - 1) // 2 + 1 - 1) // 2 + 1  # conv stride 2, maxpool 3/2/1
    feat = 29 * s * s
    y = net.gemm(x, feat, num_classes)
    return net.model((1, 3, input_size, input_size), net.op("Softmax", [y], axis=1))


def seeded_cnn(seed: int) -> onnx.ModelProto:
    """A held-out-style CNN: conv/BN/ReLU stem, depthwise + pointwise with a residual add,
    two strided branches concatenated, average pooling, a two-layer MLP head and softmax; odd
    channel counts (11, 9 + 6), 32x32 input. Its weights and BN statistics depend on ``seed``."""
    net = _Net(seed, f"seeded_cnn{seed}")
    rng = net.rng

    def conv(x: str, cin: int, cout: int, k: int, s: int, g: int, relu: bool = True) -> str:
        w = rng.standard_normal((cout, cin // g, k, k)) * np.sqrt(2 / (cin // g * k * k))
        y = net.op("Conv", [x, net._init("w", w)], kernel_shape=[k, k], strides=[s, s],
                   pads=[k // 2] * 4, group=g)
        bn = [rng.uniform(.5, 1.5, cout), rng.normal(0, .2, cout), rng.normal(0, .2, cout),
              rng.uniform(.5, 1.5, cout)]
        y = net.op("BatchNormalization", [y] + [net._init("bn", v) for v in bn])
        return net.op("Relu", [y]) if relu else y

    x = conv("input", 3, 11, 3, 2, 1)
    a = conv(conv(x, 11, 11, 3, 1, 11), 11, 11, 1, 1, 1, relu=False)
    r = net.op("Relu", [net.op("Add", [a, x])])
    cat = net.op("Concat", [conv(r, 11, 9, 3, 2, 1), conv(r, 11, 6, 1, 2, 1)], axis=1)
    flat = net.op("Flatten", [net.op("AveragePool", [cat], kernel_shape=[2, 2],
                                     strides=[2, 2])])
    h = net.op("Relu", [net.gemm(flat, 15 * 4 * 4, 24)])
    return net.model((1, 3, 32, 32), net.op("Softmax", [net.gemm(h, 24, 10)], axis=-1))


def trained_like_cnn(seed: int, dead: int = 2, input_size: int = 32) -> onnx.ModelProto:
    """A MobileNetV2/V3-style CNN whose statistics look trained: heavy-tailed weights, BN
    scales spread over decades, ``dead`` near-dead channels per expansion/projection layer
    (BN gamma 1e-40..1e-15 with a real beta, as trained exports have), ReLU6, depthwise convs,
    squeeze-excite (GAP, 1x1 convs, sigmoid, mul), a projection shortcut and a GAP + Gemm
    head."""
    net = _Net(seed, f"trained_like_cnn{seed}")
    rng = net.rng
    six = (net._init("zero", np.array(0.0)), net._init("six", np.array(6.0)))

    def conv_bn(x: str, cin: int, cout: int, k: int, s: int = 1, g: int = 1,
                act: str | None = "relu6", ndead: int = 0) -> str:
        w = rng.standard_normal((cout, cin // g, k, k)) * np.sqrt(2 / (cin // g * k * k))
        w *= np.exp(rng.normal(0, 0.3, w.shape))
        y = net.op("Conv", [x, net._init("w", w)], kernel_shape=[k, k], strides=[s, s],
                   pads=[k // 2] * 4, group=g)
        gamma, beta = np.exp(rng.normal(0, 0.7, cout)), rng.normal(0, 0.5, cout)
        mean, var = rng.normal(0, 0.3, cout), np.exp(rng.normal(0, 0.5, cout))
        if ndead:
            d = rng.choice(cout, ndead, replace=False)
            gamma[d] = 10.0 ** rng.uniform(-40, -15, ndead)
            beta[d] = rng.normal(0, 1.0, ndead)
        y = net.op("BatchNormalization", [y] + [net._init("bn", v)
                                                for v in (gamma, beta, mean, var)])
        return net.op("Clip", [y, *six]) if act == "relu6" else y

    c = [16, 24, 32, 48]
    x = conv_bn("input", 3, c[0], 3, 2)
    for i in range(3):
        cin, cout, e = c[i], c[i + 1], c[i] * 4
        h = conv_bn(x, cin, e, 1, ndead=dead)
        h = conv_bn(h, e, e, 3, 2 if i < 2 else 1, g=e, ndead=dead // 2)
        s = net.op("GlobalAveragePool", [h])
        s = net.op("Conv", [s, net._init("se", rng.standard_normal((e // 4, e, 1, 1))
                                         * np.sqrt(2 / e)),
                            net._init("seb", rng.normal(0, .1, e // 4))], kernel_shape=[1, 1])
        s = net.op("Conv", [net.op("Relu", [s]),
                            net._init("se", rng.standard_normal((e, e // 4, 1, 1))
                                      * np.sqrt(8 / e)),
                            net._init("seb", rng.normal(1, .5, e))], kernel_shape=[1, 1])
        h = net.op("Mul", [h, net.op("Sigmoid", [s])])
        h = conv_bn(h, e, cout, 1, act=None, ndead=dead)
        if i == 2:
            h = net.op("Add", [h, conv_bn(x, cin, cout, 1, act=None)])
        x = h
    x = net.op("Flatten", [net.op("GlobalAveragePool", [conv_bn(x, c[-1], 96, 1)])])
    w = rng.standard_normal((10, 96)) * np.sqrt(1 / 96)
    y = net.op("Gemm", [x, net._init("fc", w), net._init("fcb", rng.normal(0, .1, 10))],
               transB=1)
    return net.model((1, 3, input_size, input_size), y)


def _init_i64(self: _Net, base: str, v: np.ndarray) -> str:
    name = self._n(base)
    self.inits.append(numpy_helper.from_array(np.asarray(v, np.int64), name))
    return name


_Net._init_i64 = _init_i64  # type: ignore[attr-defined]

ZOO_SMALL = {
    "resnet_tiny": resnet_tiny, "mobilenet_tiny": mobilenet_tiny, "mlp": mlp,
    "small_cnn": small_cnn,
}


def light_models() -> list[Path]:
    """The ``light_*`` architecture models shipped in the onnx wheel (random-free weights,
    224x224 inputs), for compile-coverage tests."""
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return [Path(p) for p in sorted(glob.glob(os.path.join(root, "light_*.onnx")))]
