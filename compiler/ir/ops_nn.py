"""IR ops: transposed convolution, resize, normalisation, log-softmax, top-k, max-pool indices.

Semantics are ONNX's (executable form: :mod:`tessera.compiler.refops.nn`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.compiler.ir.ops import define, infer_same, need_inputs, op_error, pool_out_size
from tessera.compiler.ir.tensor import TensorInfo

if TYPE_CHECKING:
    from tessera.compiler.ir.graph import Graph, Node

__all__ = ["RESIZE_MODES", "COORD_MODES", "NEAREST_MODES", "conv_transpose_out_size"]


def conv_transpose_out_size(size: int, k: int, stride: int, pad0: int, pad1: int, dil: int,
                            out_pad: int) -> int:
    """ONNX ConvTranspose output length of one spatial axis."""
    return stride * (size - 1) + out_pad + (k - 1) * dil + 1 - pad0 - pad1


@define("conv_transpose2d", "transposed 2-D convolution; x NCHW, w (C, M/groups, kH, kW), pads "
        "(t,l,b,r) crop the full output, output_padding adds rows/columns at the end",
        strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, output_padding=(0, 0))
def _conv_transpose2d(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0, 1)
    x, w = ins[0], ins[1]
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise op_error(node, f"needs 4-D input and weight, got {x.shape} and {w.shape}")
    n, c, h, wd = x.shape
    ci, og, kh, kw = w.shape
    grp = int(node.attrs["groups"])
    if grp < 1 or ci != c or c % grp:
        raise op_error(node, f"input channels {c}, weight {w.shape} and groups {grp} disagree")
    a = node.attrs
    (sh, sw), (dh, dw), (oph, opw) = a["strides"], a["dilations"], a["output_padding"]
    pt, pl, pb, pr = a["pads"]
    if min(sh, sw, dh, dw) < 1 or min(pt, pl, pb, pr, oph, opw) < 0:
        raise op_error(node, "strides and dilations must be >= 1, pads and output_padding >= 0")
    oh = conv_transpose_out_size(h, kh, sh, pt, pb, dh, oph)
    ow = conv_transpose_out_size(wd, kw, sw, pl, pr, dw, opw)
    if oh < 1 or ow < 1:
        raise op_error(node, f"pads {a['pads']} leave no output")
    m = og * grp
    if len(ins) > 2 and ins[2] is not None and ins[2].shape != (m,):
        raise op_error(node, f"bias must have shape ({m},), not {ins[2].shape}")
    return [TensorInfo((n, m, oh, ow), x.dtype)]


RESIZE_MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@define("resize", "ONNX Resize with static output shape: per-axis scales (as the coordinate "
        "transform uses them), roi (start then end per axis, tf_crop_and_resize)",
        mode="nearest", coord="half_pixel", nearest_mode="round_prefer_floor", scales=(),
        out_shape=(), roi=(), cubic_coeff_a=-0.75, exclude_outside=False,
        extrapolation_value=0.0, antialias=False)
def _resize(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    a = node.attrs
    r = len(ins[0].shape)
    for key, allowed in (("mode", RESIZE_MODES), ("coord", COORD_MODES),
                         ("nearest_mode", NEAREST_MODES)):
        if a[key] not in allowed:
            raise op_error(node, f"{key} must be one of {allowed}, not {a[key]!r}")
    out = tuple(int(d) for d in a["out_shape"])
    if len(out) != r or len(a["scales"]) != r or any(d < 1 for d in out):
        raise op_error(node, f"out_shape {out} and scales {a['scales']} must have {r} positive "
                             f"entries")
    if a["coord"] == "tf_crop_and_resize" and len(a["roi"]) != 2 * r:
        raise op_error(node, f"tf_crop_and_resize needs a roi of {2 * r} values")
    return [TensorInfo(out, ins[0].dtype)]


@define("layernorm", "(x - mean) / sqrt(var + epsilon) over axes [axis, rank), then * scale "
        "+ bias (both broadcast to x.shape[axis:])", axis=-1, epsilon=1e-5)
def _layernorm(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    x = ins[0]
    r = len(x.shape)
    if not -r <= int(node.attrs["axis"]) < r:
        raise op_error(node, f"axis {node.attrs['axis']} out of range for rank {r}")
    ax = int(node.attrs["axis"]) % r
    for k in (1, 2):
        if k < len(ins) and ins[k] is not None:
            s = ins[k].shape
            tail = x.shape[ax:]
            if len(s) > len(tail) or any(d not in (1, t) for d, t in
                                         zip(reversed(s), reversed(tail))):
                raise op_error(node, f"input {k} of shape {s} does not broadcast to the "
                                     f"normalised shape {tail}")
    return [TensorInfo(x.shape, x.dtype)]


define("log_softmax", "log(softmax(x)) along one axis", axis=-1)(infer_same)


@define("topk", "the k largest (or smallest) values along axis and their int64 indices; "
        "ties keep the lower index first", k=1, axis=-1, largest=True, sorted=True)
def _topk(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    s = list(ins[0].shape)
    r = len(s)
    if not -r <= int(node.attrs["axis"]) < r:
        raise op_error(node, f"axis {node.attrs['axis']} out of range for rank {r}")
    ax = int(node.attrs["axis"]) % r
    k = int(node.attrs["k"])
    if not 0 <= k <= s[ax]:
        raise op_error(node, f"k must be in [0, {s[ax]}], not {k}")
    s[ax] = k
    return [TensorInfo(tuple(s), ins[0].dtype), TensorInfo(tuple(s), "int64")]


@define("maxpool_indices", "int64 flat NCHW index of each max-pool window's maximum (the first "
        "in row-major window order; storage_order 1 counts the spatial position column-major)",
        kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), ceil_mode=False, dilations=(1, 1),
        storage_order=0)
def _maxpool_indices(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    x = ins[0]
    if len(x.shape) != 4:
        raise op_error(node, f"needs a 4-D NCHW input, got {x.shape}")
    a = node.attrs
    if int(a["storage_order"]) not in (0, 1):
        raise op_error(node, f"storage_order must be 0 or 1, not {a['storage_order']!r}")
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["strides"], a["dilations"]
    pt, pl, pb, pr = a["pads"]
    oh = pool_out_size(x.shape[2], kh, sh, pt, pb, dh, bool(a["ceil_mode"]))
    ow = pool_out_size(x.shape[3], kw, sw, pl, pr, dw, bool(a["ceil_mode"]))
    if oh < 1 or ow < 1:
        raise op_error(node, f"window {kh}x{kw} does not fit input {x.shape[2:]}")
    return [TensorInfo((x.shape[0], x.shape[1], oh, ow), "int64")]
