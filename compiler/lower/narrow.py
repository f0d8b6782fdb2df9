"""The ``fold_narrow_input`` pass: the kernel taps of a narrow convolution folded into its
channels.

A first layer (3 input channels, 7x7 kernel) pads its channels to one BLOCK_IN and wastes most of
every GEMM step. When it saves steps, the input is rearranged on the CPU (pad, strided slices,
concat) and the layer runs with the taps as channels, with the same integer sums:

- **width fold**: ``x'[n, kw*C + c, h, ow] = pad(x)[n, c, h, ow*sw + kw]``; the layer becomes a
  ``KH x 1`` convolution with ``C*KW`` channels, weights ``w'[o, kw*C + c, kh, 0] =
  w[o, c, kh, kw]``;
- **full fold** (im2col): ``x'[n, (kh*KW + kw)*C + c, oh, ow] = pad(x)[n, c, oh*sh + kh,
  ow*sw + kw]``; the layer becomes a 1x1 convolution with ``C*KH*KW`` channels, weights
  ``w'[o, (kh*KW + kw)*C + c, 0, 0] = w[o, c, kh, kw]``.

The form with the fewest GEMM steps per output (channel blocks times remaining taps) wins; a
fold is only made when it saves steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from tessera.compiler.ir import Graph, Node
from tessera.compiler.lower.partition import accel_capable
from tessera.config import Config
from tessera.runtime.layout import ceil_div

__all__ = ["fold_narrow_input"]


def _fold(n: Node, x: str, shape, wt: np.ndarray, full: bool, consts: dict,
          fresh: Callable[[str], str]) -> list[Node]:
    _, c, h, w = shape
    o, _, kh, kw = wt.shape
    sh, sw = n.attrs["strides"]
    dh, dw = n.attrs.get("dilations", (1, 1))
    pt, pl, pb, pr = n.attrs["pads"]
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    padded = fresh(f"{x}:pad:{n.name}")
    pads = (0, 0, pt, pl, 0, 0, pb, pr) if full else (0, 0, 0, pl, 0, 0, 0, pr)
    nodes = [Node("pad", (x,), (padded,), {"pads": pads, "value": 0.0},
                  name=fresh(f"{n.name}:pad"))]
    cols = []
    taps = [(i, j) for i in range(kh) for j in range(kw)] if full else [(None, j)
                                                                       for j in range(kw)]
    for i, j in taps:
        tap = f"tap{i}_{j}" if full else f"col{j}"
        col = fresh(f"{x}:{tap}:{n.name}")
        if full:
            attrs = {"starts": (i * dh, j * dw), "ends": (i * dh + (oh - 1) * sh + 1,
                                                           j * dw + (ow - 1) * sw + 1),
                     "axes": (2, 3), "steps": (sh, sw)}
        else:
            attrs = {"starts": (j * dw,), "ends": (j * dw + (ow - 1) * sw + 1,), "axes": (3,),
                     "steps": (sw,)}
        nodes.append(Node("slice", (padded,), (col,), attrs, name=fresh(f"{n.name}:{tap}")))
        cols.append(col)
    folded = fresh(f"{x}:fold:{n.name}")
    nodes.append(Node("concat", tuple(cols), (folded,), {"axis": 1}, name=fresh(f"{n.name}:fold")))
    wname = fresh(f"{n.inputs[1]}:fold")
    if full:
        consts[wname] = np.ascontiguousarray(wt.transpose(0, 2, 3, 1).reshape(o, kh * kw * c, 1, 1))
        conv = replace(n, inputs=(folded, wname) + tuple(n.inputs[2:])).with_attrs(
            strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    else:
        consts[wname] = np.ascontiguousarray(wt.transpose(0, 3, 1, 2).reshape(o, kw * c, kh, 1))
        conv = replace(n, inputs=(folded, wname) + tuple(n.inputs[2:])).with_attrs(
            strides=(sh, 1), pads=(pt, 0, pb, 0), dilations=(dh, 1))
    return nodes + [conv]


def fold_narrow_input(g: Graph, cfg: Config) -> tuple[Graph, bool]:
    blk = cfg.block_in
    nodes: list[Node] = []
    consts = dict(g.constants)
    changed = False
    fresh = g.namer()
    for n in g.nodes:
        if (n.op != "qconv2d" or n.attrs.get("groups", 1) != 1
                or accel_capable(g, n, cfg) is not None):
            nodes.append(n)
            continue
        x = n.inputs[0]
        shape = g.tensors[x].shape
        c = shape[1]
        wt = consts[n.inputs[1]]
        _, _, kh, kw = wt.shape
        steps = {"none": ceil_div(c, blk) * kh * kw, "width": ceil_div(c * kw, blk) * kh,
                 "full": ceil_div(c * kh * kw, blk)}
        best = min(steps, key=lambda k: (steps[k], k != "none"))
        if kh * kw == 1 or best == "none" or (best == "width" and kw == 1):
            nodes.append(n)
            continue
        nodes += _fold(n, x, shape, wt, best == "full", consts, fresh)
        changed = True
    return (g.replace(nodes=nodes, constants=consts), True) if changed else (g, False)
