"""Numpy reference interpreter of the IR: float semantics and bit-exact int8 semantics.

Float ops follow ONNX. Quantised ops (``qconv2d``, ``qdense``, ``qadd``, ``requant``,
``qavgpool``, ``qglobal_avgpool``) produce an int32 accumulator and then run the requantisation
:class:`Epilogue` as the exact sequence of accelerator ALU operations (SPEC §4: int32 lanes, ADD
and MUL wrap mod 2**32, SHR is an arithmetic shift that truncates). The accelerator lowering must
reproduce :func:`run` on a quantised graph bit for bit; :meth:`Epilogue.alu_steps` is the program
it has to emit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from tessera.compiler.ir import Graph, Node
from tessera.errors import CompileError

__all__ = [
    "run", "Epilogue", "AluStep", "alu", "wrap32", "rounding_shift", "rounding_shift_steps",
    "conv2d_nchw", "apply_epilogue", "KERNELS", "IMM_MIN", "IMM_MAX",
]

IMM_MIN, IMM_MAX = -(1 << 15), (1 << 15) - 1  # the ALU immediate is 16-bit signed
MAX_ROUND_SHIFT = 15  # largest shift whose rounding constant 1 << (s-1) fits the immediate


# -- the ALU, exactly ---------------------------------------------------------------------------

def wrap32(v: np.ndarray) -> np.ndarray:
    """Two's complement wrap of int64 values to int32 range (returned as int64)."""
    v = np.asarray(v, dtype=np.int64)
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def alu(opcode: str, a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """One ALU operation on int32 lanes (SPEC §4), values held as int64."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if opcode == "MIN":
        return np.minimum(a, b)
    if opcode == "MAX":
        return np.maximum(a, b)
    if opcode == "ADD":
        return wrap32(a + b)
    if opcode == "MUL":
        return wrap32(a * b)
    if opcode == "SHR":
        s = np.clip(b, -31, 31)
        return np.where(s >= 0, a >> np.maximum(s, 0), wrap32(a << np.maximum(-s, 0)))
    raise ValueError(f"unknown ALU opcode {opcode!r}")


@dataclass(frozen=True)
class AluStep:
    """One ALU instruction of an epilogue. ``operand`` is an int immediate or, for a per-channel
    vector (e.g. ``mult``), the numpy array the lowering must load into the accumulator and use
    as the ALU's src operand (``use_imm = 0``)."""

    opcode: str
    operand: int | np.ndarray
    branch: str = "main"  # "main", "residual" (on the sign-extended residual) or "combine"

    def __repr__(self) -> str:
        op = self.operand if isinstance(self.operand, int) else f"vec{list(self.operand.shape)}"
        return f"{self.branch}:{self.opcode} {op}"


def rounding_shift_steps(s: int) -> list[tuple[str, int]]:
    """ALU steps computing round-half-up ``v / 2**s``: ``(v + 2**(s-1)) >> s``.

    The rounding constant must fit the 16-bit signed immediate, so for ``s > 15`` the shift is
    split: ``(v + 2**(s-1)) >> s == ((v >> (s-15)) + 2**14) >> 15`` exactly (the truncated low
    bits never carry into the rounded result). Shift amounts stay within the ALU's 31.
    """
    if s < 0 or s > 62:
        raise ValueError(f"rounding shift must be in [0, 62], not {s}")
    if s == 0:
        return []
    steps: list[tuple[str, int]] = []
    k = min(s, MAX_ROUND_SHIFT)
    pre = s - k
    while pre > 0:
        steps.append(("SHR", min(pre, 31)))
        pre -= min(pre, 31)
    steps += [("ADD", 1 << (k - 1)), ("SHR", k)]
    return steps


def rounding_shift(v: np.ndarray, s: int) -> np.ndarray:
    """Round-half-up arithmetic shift by ``s``, executed as its ALU steps."""
    v = np.asarray(v, dtype=np.int64)
    for op, imm in rounding_shift_steps(s):
        v = alu(op, v, imm)
    return v


@dataclass(frozen=True, eq=False)
class Epilogue:
    """Requantisation of an int32 accumulator to int8, in accelerator ALU operations::

        v = rshift(acc, pre_shift) * mult[c]; v = rshift(v, shift)         # main branch
        u = rshift(residual * res_mult, res_shift); v = v + u              # optional residual
        v = rshift(v, final_shift); y = max(min(v, hi), lo)                # int8 result

    ``rshift`` is the rounding shift of :func:`rounding_shift_steps`. ``mult`` has one int16
    entry per output channel (or one entry for the whole tensor). ``residual`` is an int8 tensor
    sign-extended into the accumulator (an ACC_8BIT load). The quantiser picks the parameters
    so no step overflows int32 given the layer's accumulator bound (``acc_bound``).
    """

    mult: np.ndarray
    shift: int
    pre_shift: int = 0
    lo: int = -128
    hi: int = 127
    res_mult: int | None = None
    res_shift: int = 0
    final_shift: int = 0
    acc_bound: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = np.atleast_1d(np.asarray(self.mult, dtype=np.int64))
        if m.min(initial=0) < IMM_MIN or m.max(initial=0) > IMM_MAX:
            raise ValueError(f"epilogue multipliers must fit int16, got [{m.min()}, {m.max()}]")
        object.__setattr__(self, "mult", m)
        if self.res_mult is not None and not IMM_MIN <= self.res_mult <= IMM_MAX:
            raise ValueError(f"residual multiplier must fit int16, got {self.res_mult}")
        if not -128 <= self.lo <= self.hi <= 127:
            raise ValueError(f"clip bounds must satisfy -128 <= lo <= hi <= 127, not "
                             f"[{self.lo}, {self.hi}]")

    @property
    def per_channel(self) -> bool:
        return self.mult.size > 1 and not np.all(self.mult == self.mult[0])

    def alu_steps(self) -> list[AluStep]:
        """The ALU program of this epilogue, in order. A per-tensor multiplier is an immediate;
        a per-channel one is a vector operand (broadcast over spatial positions)."""
        mult: int | np.ndarray = int(self.mult[0]) if not self.per_channel else self.mult
        steps = [AluStep(op, imm) for op, imm in rounding_shift_steps(self.pre_shift)]
        steps.append(AluStep("MUL", mult))
        steps += [AluStep(op, imm) for op, imm in rounding_shift_steps(self.shift)]
        if self.res_mult is not None:
            steps.append(AluStep("MUL", int(self.res_mult), "residual"))
            steps += [AluStep(op, imm, "residual") for op, imm in
                      rounding_shift_steps(self.res_shift)]
            steps.append(AluStep("ADD", 0, "combine"))  # main += residual (acc operand)
        steps += [AluStep(op, imm) for op, imm in rounding_shift_steps(self.final_shift)]
        steps += [AluStep("MIN", self.hi), AluStep("MAX", self.lo)]
        return steps

    def __repr__(self) -> str:
        m = int(self.mult[0]) if not self.per_channel else f"vec[{self.mult.size}]"
        r = f" res*{self.res_mult}>>{self.res_shift} >>{self.final_shift}" \
            if self.res_mult is not None else ""
        return f"Epilogue(>>{self.pre_shift} *{m} >>{self.shift}{r} [{self.lo},{self.hi}])"


def apply_epilogue(acc: np.ndarray, epi: Epilogue, residual: np.ndarray | None = None,
                   channel_axis: int = 1) -> np.ndarray:
    """Run ``epi.alu_steps()`` on an int32 accumulator; returns int8."""
    v = np.asarray(acc, dtype=np.int64)
    u = None if residual is None else np.asarray(residual, dtype=np.int64)
    if epi.res_mult is not None and u is None:
        raise CompileError("epilogue expects a residual input but none was given")
    for step in epi.alu_steps():
        operand: Any = step.operand
        if isinstance(operand, np.ndarray):
            shape = [1] * v.ndim
            shape[channel_axis] = operand.size
            operand = operand.reshape(shape)
        if step.branch == "residual":
            u = alu(step.opcode, u, operand)
        elif step.branch == "combine":
            v = alu("ADD", v, u)
        else:
            v = alu(step.opcode, v, operand)
    return v.astype(np.int8)


# -- float / integer kernels --------------------------------------------------------------------

def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int = 1,
             dw: int = 1) -> np.ndarray:
    """View of shape (N, C, OH, OW, KH, KW) over an already padded NCHW array."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    s = x.strides
    return as_strided(x, (n, c, oh, ow, kh, kw),
                      (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)


def conv2d_nchw(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0),
                dilations=(1, 1), groups: int = 1) -> np.ndarray:
    """Grouped 2-D convolution (cross-correlation) of NCHW ``x`` with OIHW ``w``, zero padded.

    Computes in the dtype of ``x``; pass float64 operands for exact integer results.
    """
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, cg, kh, kw = w.shape
    win = _windows(xp, kh, kw, strides[0], strides[1], dilations[0], dilations[1])
    n, c, oh, ow = win.shape[:4]
    og = o // groups
    # (G, N*OH*OW, Cg*KH*KW) @ (G, Cg*KH*KW, Og)
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    cols = cols.reshape(groups, n * oh * ow, cg * kh * kw)
    wm = w.reshape(groups, og, cg * kh * kw).transpose(0, 2, 1).astype(cols.dtype)
    out = np.matmul(cols, wm)  # (G, N*OH*OW, Og)
    return out.reshape(groups, n, oh, ow, og).transpose(1, 0, 4, 2, 3).reshape(n, o, oh, ow)


def _pool_windows(x: np.ndarray, a: Mapping[str, Any], fill: float) -> tuple[np.ndarray, Any]:
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    pt, pl, pb, pr = a["pads"]
    h, w = x.shape[2:]
    from tessera.compiler.ir import pool_out_size
    oh = pool_out_size(h, kh, sh, pt, pb, 1, bool(a["ceil_mode"]))
    ow = pool_out_size(w, kw, sw, pl, pr, 1, bool(a["ceil_mode"]))
    eb = max(0, (oh - 1) * sh + kh - (h + pt + pb))
    er = max(0, (ow - 1) * sw + kw - (w + pl + pr))
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + eb), (pl, pr + er)), constant_values=fill)
    win = _windows(xp, kh, kw, sh, sw)[:, :, :oh, :ow]
    # divisor: positions inside the input (or inside input + explicit pads)
    inside = np.zeros((1, 1) + xp.shape[2:], dtype=np.float64)
    if a.get("count_include_pad"):
        inside[..., : h + pt + pb, : w + pl + pr] = 1
    else:
        inside[..., pt: pt + h, pl: pl + w] = 1
    count = _windows(inside, kh, kw, sh, sw)[:, :, :oh, :ow].sum(axis=(4, 5))
    return win, count


def _epi_args(node: Node) -> Epilogue:
    epi = node.attrs.get("epilogue")
    if not isinstance(epi, Epilogue):
        raise CompileError(f"node {node.name!r} ({node.op}) has no requantisation epilogue")
    return epi


def _act(y: np.ndarray, a: Mapping[str, Any]) -> np.ndarray:
    act = a.get("act", "none")
    if act == "relu":
        return np.maximum(y, 0)
    if act == "clip":
        return np.clip(y, a["act_min"], a["act_max"])
    return y


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if x.dtype == np.float64 else x


def _k_conv2d(n: Node, x, w, b=None, r=None):
    a = n.attrs
    y = conv2d_nchw(x, w, a["strides"], a["pads"], a["dilations"], a["groups"])
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    if r is not None:
        y = y + r
    return [_f32(_act(y, a))]


def _k_dense(n: Node, x, w, b=None, r=None):
    y = x @ w.T
    if b is not None:
        y = y + b
    if r is not None:
        y = y + r
    return [_f32(_act(y, n.attrs))]


def _k_binary(fn: Callable) -> Callable:
    def k(n: Node, a, b):
        return [_act(fn(a, b), n.attrs).astype(np.result_type(a, b), copy=False)]
    return k


def _k_pool(n: Node, x):
    if n.op == "maxpool":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        win, _ = _pool_windows(x, n.attrs, fill)
        return [win.max(axis=(4, 5))]
    win, count = _pool_windows(x, n.attrs, 0)
    return [(win.sum(axis=(4, 5)) / count).astype(x.dtype)]


def _k_lrn(n: Node, x):
    a = n.attrs
    size = int(a["size"])
    sq = np.pad(x * x, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
    s = sum(sq[:, i: i + x.shape[1]] for i in range(size))
    return [(x / (a["bias"] + a["alpha"] / size * s) ** a["beta"]).astype(x.dtype)]


def _k_softmax(n: Node, x):
    e = np.exp(x - x.max(axis=n.attrs["axis"], keepdims=True))
    return [(e / e.sum(axis=n.attrs["axis"], keepdims=True)).astype(x.dtype)]


def _k_batchnorm(n: Node, x, scale, bias, mean, var):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + n.attrs["epsilon"])
    return [(x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)).astype(x.dtype)]


def _k_slice(n: Node, x):
    a = n.attrs
    idx = [slice(None)] * x.ndim
    steps = a["steps"] or (1,) * len(a["starts"])
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], steps):
        idx[ax] = slice(s, e, st)
    return [x[tuple(idx)]]


def _k_pad(n: Node, x):
    p = n.attrs["pads"]
    r = x.ndim
    return [np.pad(x, [(p[i], p[i + r]) for i in range(r)], constant_values=n.attrs["value"])]


def _k_pack(n: Node, x):
    blk, b = n.attrs["block"], n.attrs["batch"]
    s = x.shape
    nb, cb = -(-s[0] // b), -(-s[1] // blk)
    xp = np.zeros((nb * b, cb * blk) + s[2:], dtype=x.dtype)
    xp[: s[0], : s[1]] = x
    xp = xp.reshape((nb, b, cb, blk) + s[2:])
    if x.ndim == 4:
        return [np.ascontiguousarray(xp.transpose(0, 2, 4, 5, 1, 3))]
    return [np.ascontiguousarray(xp.transpose(0, 2, 1, 3))]


def _k_unpack(n: Node, x):
    shape = tuple(n.attrs["shape"])
    if x.ndim == 6:
        nb, cb, h, w, b, blk = x.shape
        full = x.transpose(0, 4, 1, 5, 2, 3).reshape(nb * b, cb * blk, h, w)
    else:
        nb, cb, b, blk = x.shape
        full = x.transpose(0, 2, 1, 3).reshape(nb * b, cb * blk)
    return [np.ascontiguousarray(full[: shape[0], : shape[1]])]


def _acc64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def _int_acc(y: np.ndarray) -> np.ndarray:
    """Exact int64 from a float64 sum of integer products (exact below 2**53)."""
    return wrap32(np.rint(y).astype(np.int64))


def _k_qconv2d(n: Node, x, w, b=None, r=None):
    a = n.attrs
    acc = _int_acc(conv2d_nchw(_acc64(x), _acc64(w), a["strides"], a["pads"], a["dilations"],
                               a["groups"]))
    if b is not None:
        acc = wrap32(acc + b.astype(np.int64).reshape(1, -1, 1, 1))
    return [apply_epilogue(acc, _epi_args(n), r)]


def _k_qdense(n: Node, x, w, b=None, r=None):
    acc = _int_acc(_acc64(x) @ _acc64(w).T)
    if b is not None:
        acc = wrap32(acc + b.astype(np.int64))
    return [apply_epilogue(acc, _epi_args(n), r)]


def _k_qadd(n: Node, x, y):
    return [apply_epilogue(x.astype(np.int64), _epi_args(n), y)]


def _k_requant(n: Node, x):
    return [apply_epilogue(x.astype(np.int64), _epi_args(n))]


def _k_qavgpool(n: Node, x):
    win, _ = _pool_windows(x.astype(np.int64), n.attrs, 0)
    return [apply_epilogue(win.sum(axis=(4, 5)), _epi_args(n))]


def _k_qglobal_avgpool(n: Node, x):
    acc = x.astype(np.int64).sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    return [apply_epilogue(acc, _epi_args(n))]


def _k_quantize(n: Node, x):
    a = n.attrs
    return [np.clip(np.rint(x / np.float32(a["scale"])), a["lo"], a["hi"]).astype(np.int8)]


def _k_matmul(n: Node, a, b):
    return [np.matmul(a, b)]


KERNELS: dict[str, Callable[..., list[np.ndarray]]] = {
    "conv2d": _k_conv2d,
    "dense": _k_dense,
    "matmul": _k_matmul,
    "add": _k_binary(np.add),
    "sub": _k_binary(np.subtract),
    "mul": _k_binary(np.multiply),
    "div": _k_binary(np.divide),
    "max": _k_binary(np.maximum),
    "min": _k_binary(np.minimum),
    "pow": _k_binary(np.power),
    "relu": lambda n, x: [np.maximum(x, np.zeros((), x.dtype))],
    "clip": lambda n, x: [np.clip(x, n.attrs["min"], n.attrs["max"]).astype(x.dtype)],
    "sigmoid": lambda n, x: [(1 / (1 + np.exp(-x))).astype(x.dtype)],
    "tanh": lambda n, x: [np.tanh(x)],
    "exp": lambda n, x: [np.exp(x)],
    "sqrt": lambda n, x: [np.sqrt(x)],
    "neg": lambda n, x: [-x],
    "leaky_relu": lambda n, x: [np.where(x >= 0, x, x * n.attrs["alpha"]).astype(x.dtype)],
    "identity": lambda n, x: [x],
    "softmax": _k_softmax,
    "lrn": _k_lrn,
    "batchnorm": _k_batchnorm,
    "maxpool": _k_pool,
    "avgpool": _k_pool,
    "global_avgpool": lambda n, x: [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)],
    "global_maxpool": lambda n, x: [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)],
    "mean": lambda n, x: [x.mean(axis=tuple(n.attrs["axes"]), keepdims=n.attrs["keepdims"])
                          .astype(x.dtype)],
    "flatten": lambda n, x: [x.reshape(int(np.prod(x.shape[: n.attrs["axis"]])), -1)],
    "reshape": lambda n, x: [x.reshape(n.attrs["shape"])],
    "transpose": lambda n, x: [np.transpose(x, n.attrs["perm"] or None)],
    "concat": lambda n, *xs: [np.concatenate(xs, axis=n.attrs["axis"])],
    "slice": _k_slice,
    "pad": _k_pad,
    "cast": lambda n, x: [x.astype(n.attrs["to"])],
    "quantize": _k_quantize,
    "dequantize": lambda n, x: [x.astype(np.float32) * np.float32(n.attrs["scale"])],
    "qconv2d": _k_qconv2d,
    "qdense": _k_qdense,
    "qadd": _k_qadd,
    "requant": _k_requant,
    "qavgpool": _k_qavgpool,
    "qglobal_avgpool": _k_qglobal_avgpool,
    "pack": _k_pack,
    "unpack": _k_unpack,
}


def run(graph: Graph, feeds: Mapping[str, np.ndarray], *, all_tensors: bool = False,
        observe: Callable[[str, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` (input name -> array).

    Returns the graph outputs, or every tensor when ``all_tensors`` is set. ``observe`` is
    called with (tensor name, value) for every node output as it is produced (calibration).
    Intermediate tensors are freed after their last use unless ``all_tensors`` is set.
    """
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in feeds:
            raise CompileError(f"missing input {name!r} (graph inputs: {list(graph.inputs)})")
        info = graph.tensors[name]
        x = np.asarray(feeds[name])
        if tuple(x.shape) != info.shape:
            raise CompileError(f"input {name!r} must have shape {info.shape}, not {x.shape}")
        env[name] = x.astype(info.dtype, copy=False)
    unknown = set(feeds) - set(graph.inputs)
    if unknown:
        raise CompileError(f"unknown input(s) {sorted(unknown)}; graph inputs are "
                           f"{list(graph.inputs)}")
    env.update(graph.constants)
    last_use: dict[str, int] = {}
    for idx, n in enumerate(graph.nodes):
        for i in n.inputs:
            last_use[i] = idx
    keep = set(graph.outputs) | set(graph.constants)
    for idx, n in enumerate(graph.nodes):
        kernel = KERNELS.get(n.op)
        if kernel is None:
            raise CompileError(f"node {n.name!r}: the reference has no kernel for op {n.op!r}")
        args = [env[i] if i else None for i in n.inputs]
        outs = kernel(n, *args)
        for o, v in zip(n.outputs, outs):
            want = graph.tensors.get(o)
            if want is not None and v.dtype != np.dtype(want.dtype):
                v = v.astype(want.dtype)
            env[o] = v
            if observe is not None:
                observe(o, v)
        if not all_tensors:
            for i in set(n.inputs):
                if i and last_use.get(i) == idx and i not in keep:
                    env.pop(i, None)
    if all_tensors:
        return env
    return {o: env[o] for o in graph.outputs}
