"""The ``fold_narrow_input`` pass: the kernel width of a narrow convolution folded into its
channels.

A first layer (3 input channels, 7x7 kernel) pads its channels to one BLOCK_IN and wastes most of
every GEMM step. When it saves steps, the input is rearranged on the CPU so that
``x'[n, kw*C + c, h, ow] = pad(x)[n, c, h, ow*sw + kw]`` (pad, strided slices, concat) and the
layer becomes a ``KH x 1`` convolution with ``C*KW`` channels and weights
``w'[o, kw*C + c, kh, 0] = w[o, c, kh, kw]``: the same integer sums, far fewer steps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tessera.compiler.ir import Graph, Node
from tessera.compiler.lower.partition import accel_capable
from tessera.config import Config
from tessera.runtime.layout import ceil_div

__all__ = ["fold_narrow_input"]


def fold_narrow_input(g: Graph, cfg: Config) -> tuple[Graph, bool]:
    blk = cfg.block_in
    nodes: list[Node] = []
    consts = dict(g.constants)
    changed = False
    for n in g.nodes:
        if n.op != "qconv2d" or accel_capable(g, n, cfg) is not None:
            nodes.append(n)
            continue
        x = n.inputs[0]
        nb, c, h, w = g.tensors[x].shape
        wt = consts[n.inputs[1]]
        o, _, kh, kw = wt.shape
        sh, sw = n.attrs["strides"]
        pt, pl, pb, pr = n.attrs["pads"]
        if kw == 1 or ceil_div(c * kw, blk) * kh >= ceil_div(c, blk) * kh * kw:
            nodes.append(n)
            continue
        ow = (w + pl + pr - kw) // sw + 1
        padded = f"{x}:wpad:{n.name}"
        nodes.append(Node("pad", (x,), (padded,), {"pads": (0, 0, 0, pl, 0, 0, 0, pr),
                                                    "value": 0.0}, name=f"{n.name}:wpad"))
        cols = []
        for k in range(kw):
            col = f"{x}:col{k}:{n.name}"
            nodes.append(Node("slice", (padded,), (col,),
                              {"starts": (k,), "ends": (k + (ow - 1) * sw + 1,), "axes": (3,),
                               "steps": (sw,)}, name=f"{n.name}:col{k}"))
            cols.append(col)
        folded = f"{x}:fold:{n.name}"
        nodes.append(Node("concat", tuple(cols), (folded,), {"axis": 1},
                          name=f"{n.name}:fold"))
        wname = f"{n.inputs[1]}:fold"
        consts[wname] = np.ascontiguousarray(wt.transpose(0, 3, 1, 2).reshape(o, kw * c, kh, 1))
        nodes.append(replace(n, inputs=(folded, wname) + tuple(n.inputs[2:]))
                     .with_attrs(strides=(sh, 1), pads=(pt, 0, pb, 0)))
        changed = True
    return (g.replace(nodes=nodes, constants=consts), True) if changed else (g, False)
