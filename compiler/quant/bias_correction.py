"""Empirical bias correction: remove the mean error each int8 layer's pre-activation carries.

Rounding and clipping upstream do not only add noise: ReLU rectifies it, clipped ranges shave
the top of distributions and per-channel weight rounding shifts sums, so a layer's int8
accumulator is biased per output channel against the float model (often by a sizeable fraction
of an output step, and the bias accumulates through the network). After the graph is quantised,
the calibration batches are run through the int8 graph and the float graph in lockstep, layer
by layer; for each conv/dense layer the per-channel mean of

    err = (conv(x_float, w_float) / (s_x * s_w)) - (conv(x_q, w_q) - z_x * sum(w_q))

(the float pre-activation in accumulator units, given the float model's input, minus the int8
layer's, given the int8 model's input: what the integer bias ``b_q`` should absorb) is added to
``b_q``, after shrinking it by ``mu^2 / (mu^2 + se^2)`` (``se`` the standard error of the mean:
a channel whose mean error is not clearly non-zero on the calibration data is barely moved).
Corrections apply before the next layer is measured, so downstream layers see corrected inputs.
The layer's accumulator bound and epilogue are rebuilt for the new bias by the caller. Each
layer's products are computed once per batch: they give the error statistics and the int8
graph's output of the layer. The int8 products are exact integers: int32 lanes from the int8
kernel (AVX-512 VNNI or AVX2: :mod:`tessera.runtime.cpu.igemm`, each conv's weights packed once
for all the batches) where the host has one, else float32 BLAS in exact reduction chunks
(:func:`~tessera.compiler.reference.int_conv2d_cnhw`); the float
products are the ones calibration computed on the same batches and kept
(:func:`~tessera.compiler.quant.calibrate.collect`), so the float graph is not run again
(unless they did not fit calibration's memory budget).

Measured (``python bench/heldout_cnns.py --seeds 0-19 --trained 0-3``): geometric mean of our
error over onnxruntime's static int8 on 24 held-out-style and trained-like CNNs 0.770 -> 0.726,
worst 1.064 -> 0.946 (3 models above 1.0x -> none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence

import numpy as np

from tessera.compiler import reference
from tessera.compiler.ir import Graph, Node
from tessera.compiler.quant import errsum
from tessera.compiler.quant.calibrate import QParams
from tessera.runtime.cpu import igemm

__all__ = ["correct_biases", "CORRECTED_OPS", "BIAS_CORRECTION_BATCHES"]

CORRECTED_OPS = ("qconv2d", "qdense")
# calibration batches the correction uses (the first ones; it runs the int8 and float graphs
# once per batch). Measured (bench/heldout_cnns.py, 14 models, 16 calibration batches):
# geomean ratio to onnxruntime 0.763 with 4, 0.727 with 8, 0.723 with all 16.
BIAS_CORRECTION_BATCHES = 8
_STACK_ELEMENTS = 1 << 22  # patch elements of one stacked int8 conv (16 MB of float32)
_ERROR_BLOCK = 1 << 15  # float64 error values per block of the statistics (256 KB)


def _float_products(op: str, x: np.ndarray, w: np.ndarray, attrs: Mapping) -> np.ndarray:
    """``x * w`` of a float conv2d (NCHW) or dense layer, in float32 as the reference computes
    it."""
    x, w = x.astype(np.float32, copy=False), w.astype(np.float32, copy=False)
    if op == "conv2d":
        return reference.conv2d_nchw(x, w, attrs["strides"], attrs["pads"], attrs["dilations"],
                                     attrs["groups"])
    return x @ w.T


def _int_products(op: str, xs: Sequence[np.ndarray], w: np.ndarray, attrs: Mapping
                  ) -> list[np.ndarray]:
    """The exact accumulators (no bias) of a qconv2d/qdense layer for each batch's input in
    ``xs`` (a dense layer's batches go through one matrix product): int32 lanes when no sum
    can leave int32 (every int8 layer shorter than 131072 terms), else int64."""
    k = int(np.prod(w.shape[1:]))
    dtype = np.int32 if reference.sums_fit_int32(xs[0].dtype, w.dtype, k) else np.int64
    packed = reference.packed_conv_weights(xs[0].dtype, w, attrs["groups"]) \
        if op == "qconv2d" and dtype == np.int32 else None  # the int8 kernel's, once
    kernel = packed is not None or (op == "qdense" and dtype == np.int32
                                    and igemm.supports_matmul(xs[0], w) is None)
    # long exact float32 chunks these weights allow (the float32 BLAS path's)
    splits = None if kernel else reference.exact_splits(xs[0].dtype, w)
    if op == "qconv2d":
        # batches stacked (exact sums: the order is free) while their patches stay small:
        # fuller matrix products for the late, small layers
        kh, kw = w.shape[2:]
        (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["pads"], \
            attrs["dilations"]
        h, wd = xs[0].shape[2:]
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
        n, c = xs[0].shape[:2]
        per = max(1, _STACK_ELEMENTS // max(1, c * kh * kw * oh * ow * n))
        out: list[np.ndarray] = []
        for k in range(0, len(xs), per):
            part = xs[k: k + per]
            acc = reference.int_conv2d_cnhw(
                part[0] if len(part) == 1 else np.concatenate(part), w, attrs["strides"],
                attrs["pads"], attrs["dilations"], attrs["groups"], dtype=dtype, splits=splits,
                packed=packed)
            # each image's (1, O, OH, OW) view of the channel-major products
            out += [a.transpose(1, 0, 2, 3)
                    for a in np.split(acc, np.cumsum([len(x) for x in part])[:-1], axis=1)]
        return out
    acc = reference.int_matmul(np.concatenate(xs), w.T, dtype=dtype, splits=splits)
    return np.split(acc, np.cumsum([len(x) for x in xs])[:-1])


def _per_channel(y: np.ndarray) -> np.ndarray:
    """[channels, positions] view of an NCHW or NC array."""
    return np.moveaxis(y, 1, 0).reshape(y.shape[1], -1)


def _add_error_sums(zc: np.ndarray, acc: np.ndarray, unit: np.ndarray, offset: np.ndarray,
                    s1: np.ndarray, s2: np.ndarray) -> int:
    """Add each channel's sum of ``err = zc / unit - (acc - offset)`` to ``s1`` and of
    ``err**2`` to ``s2`` (all [channels, positions] but ``offset``, per channel); returns
    the positions per channel. One pass of a JIT kernel giving numpy's values bit for bit
    (:mod:`~tessera.compiler.quant.errsum`) when it takes the operands, else numpy's
    passes a block of channels at a time in a cache-sized float64 buffer (a channel's sums
    are the same whatever the block)."""
    rows, cols = zc.shape
    if errsum.supports(zc, acc):
        errsum.add_error_sums(zc, acc, unit, offset, s1, s2)
        return cols
    step = max(1, _ERROR_BLOCK // max(1, cols))
    buf = reference.scratch("bias_correction", (min(step, rows), cols), np.float64)
    shift = offset.any()
    for r in range(0, rows, step):
        sl = slice(r, r + step)
        err = np.divide(zc[sl], unit[sl], out=buf[: min(step, rows - r)])
        err -= (acc[sl] - offset[sl, None]) if shift else acc[sl]
        s1[sl] += err.sum(axis=1)
        err *= err
        s2[sl] += err.sum(axis=1)
    return cols


class _Lockstep:
    """Runs one graph over several batches node by node, freeing tensors after their last use.
    ``constants`` may be changed between steps (a corrected bias)."""

    def __init__(self, graph: Graph, batches: Sequence[Mapping[str, np.ndarray]]):
        self.g = graph
        self.nodes = list(graph.nodes)
        self.constants = dict(graph.constants)
        self.envs = [{i: np.asarray(b[i]).astype(graph.tensors[i].dtype, copy=False)
                      for i in graph.inputs} for b in batches]
        self.pos = 0
        self.last: dict[str, int] = {}
        for k, n in enumerate(graph.nodes):
            for i in n.inputs:
                self.last[i] = k
        self.keep = set(graph.outputs)

    def value(self, env: dict, t: str) -> np.ndarray:
        return env[t] if t in env else self.constants[t]

    def advance(self, upto: int) -> None:
        """Execute nodes ``pos .. upto - 1``."""
        while self.pos < upto:
            n = self.nodes[self.pos]
            kernel = reference.KERNELS[n.op]
            self.put(n, [kernel(n, *[self.value(env, i) if i else None for i in n.inputs])
                         for env in self.envs])

    def put(self, n: Node, outs: Sequence[Sequence[np.ndarray]]) -> None:
        """Store node ``pos``'s outputs (one list per batch) and step past it."""
        for env, vals in zip(self.envs, outs):
            for o, v in zip(n.outputs, vals):
                want = self.g.tensors.get(o)
                env[o] = v.astype(want.dtype) if want is not None \
                    and v.dtype != np.dtype(want.dtype) else v
            for i in set(n.inputs):
                if i and self.last.get(i) == self.pos and i not in self.keep:
                    env.pop(i, None)
        self.pos += 1


def _int_layer(n: Node, acc: np.ndarray, args: list) -> list[np.ndarray]:
    """What the reference's qconv2d/qdense computes, from its exact products ``acc`` (int32
    lanes or int64; ours to overwrite)."""
    b, r = args[2], (args[3] if len(args) > 3 else None)
    shape = (1, -1, 1, 1) if acc.ndim == 4 else (1, -1)
    if acc.dtype == np.int32:
        # int32 lanes add with two's complement wrap: wrap32(acc + b) with no int64 detour
        bias = reference.wrap32(b).astype(np.int32).reshape(shape)
        total32 = np.add(acc, bias, out=acc)
    else:
        total = np.add(acc, b.astype(np.int64).reshape(shape), out=acc)
        total32 = reference.wrap32(total, out=total).astype(np.int32)
    # the epilogue then runs on the int32 lanes in place
    return [reference.apply_epilogue(total32, n.attrs["epilogue"], r, overwrite=True)]


def _float_layer(n: Node, z: np.ndarray, args: list) -> list[np.ndarray]:
    """What the reference's conv2d/dense computes, from its products ``z``."""
    b = args[2] if len(args) > 2 else None
    r = args[3] if len(args) > 3 else None
    y = z if b is None else z + (b.reshape(1, -1, 1, 1) if z.ndim == 4 else b)
    return [reference.float_activation(y if r is None else y + r, n.attrs)]


def correct_biases(graph: Graph, float_graph: Graph, qparams: Mapping[str, QParams],
                   batches: Sequence[Mapping[str, np.ndarray]],
                   update: Callable[[Node, np.ndarray], tuple[Node, np.ndarray] | None],
                   float_products: MutableMapping[str, Sequence[np.ndarray]] | None = None
                   ) -> tuple[Graph, dict[str, np.ndarray]]:
    """Bias-correct the int8 layers of ``graph`` (module docstring).

    Layers are the ``qconv2d``/``qdense`` nodes that have a float node of the same name in
    ``float_graph``. ``update(node, delta)`` returns the layer's node rebuilt for its bias plus
    ``delta`` (int64 per channel; a new epilogue for the new accumulator bound; the same
    input names) and the new bias array, or None to leave the layer as it is. Returns the
    corrected graph and each corrected layer's ``delta``. ``float_products`` may give the
    float layers' products on ``batches`` (node name -> one array per batch, as calibration
    keeps them: :func:`~tessera.compiler.quant.calibrate.collect`); when it has every layer's,
    the float graph is not run again, and each layer's entry is removed from it once used (so
    its memory is free before the next layer's products are made: a lower peak)."""
    fpos = {n.name: k for k, n in enumerate(float_graph.nodes)}
    layers = [(k, n) for k, n in enumerate(graph.nodes)
              if n.op in CORRECTED_OPS and n.name in fpos and len(n.inputs) >= 3
              and n.inputs[2]]
    given = float_products is not None and all(
        len(float_products.get(n.name, ())) == len(batches) for _, n in layers)
    q = _Lockstep(graph, batches)
    f = None if given else _Lockstep(float_graph, batches)
    deltas: dict[str, np.ndarray] = {}
    for k, n in layers:
        fk = fpos[n.name]
        fn = float_graph.nodes[fk]
        q.advance(k)
        if f is not None:
            f.advance(fk)
            zs = [_float_products(fn.op, f.value(e, fn.inputs[0]), f.value(e, fn.inputs[1]),
                                  fn.attrs) for e in f.envs]
        else:
            zs = list(float_products.pop(n.name))
        qx = qparams[n.inputs[0]]
        wq = q.constants[n.inputs[1]]
        wsum = wq.reshape(wq.shape[0], -1).sum(axis=1, dtype=np.int64)
        unit = qx.scale * np.asarray(n.attrs["w_scale"], np.float64).reshape(-1, 1)
        s1 = np.zeros(wq.shape[0])
        s2 = np.zeros(wq.shape[0])
        # each product once: the error statistics and both layers' outputs come from it
        accs = _int_products(n.op, [q.value(e, n.inputs[0]) for e in q.envs], wq, n.attrs)
        count = sum(_add_error_sums(_per_channel(z), _per_channel(acc), unit,
                                    qx.zero_point * wsum, s1, s2) for z, acc in zip(zs, accs))
        if count >= 2:
            mu = s1 / count
            se2 = np.maximum(s2 / count - mu * mu, 0.0) / count
            delta = np.rint(mu * mu * mu / (mu * mu + se2 + 1e-30)).astype(np.int64)
            res = update(n, delta) if delta.any() else None
            if res is not None:
                node, bias = res
                assert node.inputs == n.inputs, "a corrected layer keeps its tensors"
                q.nodes[k] = n = node
                q.constants[n.inputs[2]] = bias
                deltas[n.name] = delta
        q.put(n, [_int_layer(n, acc, [q.value(e, i) if i else None for i in n.inputs])
                  for acc, e in zip(accs, q.envs)])
        if f is not None:
            f.put(fn, [_float_layer(fn, z, [f.value(e, i) if i else None for i in fn.inputs])
                       for z, e in zip(zs, f.envs)])
        del accs, zs  # free before the next layer's products are made
    return graph.replace(nodes=q.nodes, constants=q.constants), deltas
