"""Shared pieces of the CPU kernel generators: the function builder, loops, math, checks.

A kernel is one LLVM function ``void name(ptr in0, ..., ptr out0, ...)`` over C-contiguous
arrays, fully specialised: every shape, stride and attribute is a constant in the IR, so LLVM can
unroll, vectorise and fold. Pointers are ``noalias``: inputs and outputs must not overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.errors import KernelError

Shape = tuple[int, ...]
Spec = tuple[Shape, np.dtype]

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
PTR = ir.PointerType()

# bool and uint8 are stored as one byte (bool: 0 or 1); generators that accept them say so.
DTYPES: dict[str, ir.Type] = {"float32": F32, "int8": I8, "int32": I32, "int64": I64,
                              "bool": I8, "uint8": I8}
FAST = ("reassoc", "nsz", "contract")  # reductions only: lets LLVM reorder and vectorise sums
MAX_EXTENT = 1 << 24  # largest kernel, stride, dilation or pad a window may have


# -- checks ---------------------------------------------------------------------------------------


def fail(op: str, message: str) -> KernelError:
    return KernelError(f"{op}: {message}")


def check(cond: bool, op: str, message: str) -> None:
    if not cond:
        raise fail(op, message)


def check_attrs(op: str, attrs: dict[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(attrs) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise fail(op, f"unsupported attribute(s) {', '.join(unknown)} (supported: {allowed})")


def check_inputs(op: str, in_specs: Sequence[Spec], counts: Sequence[int]) -> None:
    if len(in_specs) not in counts:
        if isinstance(counts, range):
            want = f"{counts.start} to {counts.stop - 1}"
        else:
            want = " or ".join(str(c) for c in counts)
        raise fail(op, f"takes {want} input(s), not {len(in_specs)}")


def check_dtype(op: str, what: str, spec: Spec, allowed: Sequence[str]) -> str:
    name = spec[1].name
    if name not in allowed:
        raise fail(op, f"{what} must have dtype {' or '.join(allowed)}, not {name}")
    return name


def int_attr(op: str, attrs: dict[str, Any], key: str, default: int | None = None) -> int:
    value = attrs.get(key, default)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise fail(op, f"attribute {key} must be an integer, not {value!r}")
    return int(value)


def float_attr(op: str, attrs: dict[str, Any], key: str, default: float | None = None) -> float:
    value = attrs.get(key, default)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise fail(op, f"attribute {key} must be a number, not {value!r}")
    return float(value)


def ints_attr(op: str, attrs: dict[str, Any], key: str, length: int | None,
              default: Sequence[int] | None = None) -> tuple[int, ...]:
    value = attrs.get(key, default)
    if value is None:
        raise fail(op, f"attribute {key} is required")
    try:
        out = tuple(int(v) for v in value)
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    except TypeError:
        ok = False
    if not ok:
        raise fail(op, f"attribute {key} must be a list of integers, not {value!r}")
    if length is not None and len(out) != length:
        raise fail(op, f"attribute {key} must have {length} values, not {len(out)}")
    return out


def norm_axis(op: str, axis: int, rank: int, key: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise fail(op, f"{key} must be in [{-rank}, {rank - 1}] for rank {rank}, not {axis}")
    return axis % rank if rank else 0


def itemsize(ty: ir.Type) -> int:
    return 4 if isinstance(ty, ir.FloatType) else ty.width // 8


def size(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


# -- broadcasting (numpy rules) ---------------------------------------------------------------


def broadcast_shape(op: str, shapes: Sequence[Shape]) -> Shape:
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0} - {1}
        if len(dims) > 1:
            raise fail(op, f"shapes {' and '.join(str(tuple(s)) for s in shapes)} "
                           "do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcast_strides(shape: Shape, out_shape: Shape) -> tuple[int, ...]:
    """Element strides of ``shape`` read as ``out_shape`` (0 along broadcast dimensions)."""
    own = contiguous_strides(shape)
    pad = len(out_shape) - len(shape)
    return tuple(0 if k < pad or shape[k - pad] == 1 else own[k - pad]
                 for k in range(len(out_shape)))


def coalesce(shape: Shape, strides: Sequence[Sequence[int]]) -> tuple[Shape, list[tuple]]:
    """Merge dimensions that every operand walks contiguously; drop size-1 dimensions."""
    dims = [(n, [s[k] for s in strides]) for k, n in enumerate(shape) if n != 1]
    if not dims:
        return (1,), [(0,) for _ in strides]
    merged = [dims[-1]]
    for n, st in reversed(dims[:-1]):
        inner_n, inner_st = merged[-1]
        if all(a == b * inner_n for a, b in zip(st, inner_st, strict=True)):
            merged[-1] = (n * inner_n, inner_st)
        else:
            merged.append((n, st))
    merged.reverse()
    new_shape = tuple(n for n, _ in merged)
    new_strides = [tuple(st[j] for _, st in merged) for j in range(len(strides))]
    return new_shape, new_strides


# -- pooling / convolution windows ------------------------------------------------------------


def spatial_params(op: str, attrs: dict[str, Any], in_hw: Shape, kernel: Shape,
                   allow_ceil: bool) -> dict[str, Shape]:
    """Strides, dilations, pads (begin, end per axis) and the output size, ONNX rules."""
    nd = len(in_hw)
    strides = ints_attr(op, attrs, "strides", nd, (1,) * nd)
    dil = ints_attr(op, attrs, "dilations", nd, (1,) * nd)
    check(all(s >= 1 for s in strides), op, f"strides must be >= 1, not {strides}")
    check(all(d >= 1 for d in dil), op, f"dilations must be >= 1, not {dil}")
    check(all(k >= 1 for k in kernel), op, f"kernel_shape must be >= 1, not {kernel}")
    for key, vals in (("strides", strides), ("dilations", dil), ("kernel_shape", kernel),
                      ("pads", tuple(attrs.get("pads", ())))):
        check(all(abs(int(v)) <= MAX_EXTENT for v in vals), op,
              f"{key} must be at most {MAX_EXTENT}, not {vals}")
    ceil_mode = int_attr(op, attrs, "ceil_mode", 0) if allow_ceil else 0
    check(ceil_mode in (0, 1), op, f"ceil_mode must be 0 or 1, not {ceil_mode}")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        check("pads" not in attrs, op, "pads cannot be combined with auto_pad")
        out = tuple(-(-n // s) for n, s in zip(in_hw, strides, strict=True))
        begin, end = [], []
        for n, s, e, o in zip(in_hw, strides, eff, out, strict=True):
            total = max((o - 1) * s + e - n, 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return dict(strides=strides, dilations=dil, pad_begin=tuple(begin),
                    pad_end=tuple(end), out=out)
    if auto_pad == "VALID":
        pads = (0,) * (2 * nd)
    elif auto_pad == "NOTSET":
        pads = ints_attr(op, attrs, "pads", 2 * nd, (0,) * (2 * nd))
    else:
        raise fail(op, f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, "
                       f"not {auto_pad!r}")
    check(all(p >= 0 for p in pads), op, f"pads must be >= 0, not {pads}")
    begin, end = pads[:nd], pads[nd:]
    out = []
    for n, s, e, pb, pe in zip(in_hw, strides, eff, begin, end, strict=True):
        span = n + pb + pe - e
        check(span >= 0, op, f"kernel extent {e} exceeds padded input size {n + pb + pe}")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= n + pb:
            o -= 1  # the last window would start inside the end padding
        out.append(o)
    return dict(strides=strides, dilations=dil, pad_begin=tuple(begin), pad_end=tuple(end),
                out=tuple(out))


def window_taps(n_in: int, n_out: int, k: int, s: int, d: int, pb: int,
                pe: int) -> tuple[list[int], list[int], list[int]]:
    """Per output position: first valid tap, one past the last valid tap, taps in padded input.

    Tap ``t`` of output ``o`` reads input ``o*s - pb + t*d``; it is valid when inside
    ``[0, n_in)`` and inside the padded input when inside ``[-pb, n_in + pe)``.
    """
    lo, hi, padded = [], [], []
    for o in range(n_out):  # closed forms: O(1) per output whatever the kernel size
        start = o * s - pb
        first = max(0, -(start // d))  # ceil(-start / d)
        last = min(k - 1, (n_in - 1 - start) // d)
        lo.append(first if first <= last else 0)
        hi.append(last + 1 if first <= last else 0)
        padded.append(min(k, max(0, -((start - n_in - pe) // d))))  # ceil((n_in+pe-start)/d)
    return lo, hi, padded


# -- the function builder ---------------------------------------------------------------------


class IrText:
    """The IR text of a finished module, rendered on the first ``str()`` and kept."""

    __slots__ = ("_module", "_text")

    def __init__(self, module: ir.Module):
        self._module: ir.Module | None = module
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            assert self._module is not None
            self._text = str(self._module)
            self._module = None
        return self._text


class KernelBuilder:
    """One kernel function ``void name(ptr in0.., ptr out0..)`` and helpers to fill it."""

    def __init__(self, name: str, n_in: int, n_out: int):
        self.module = ir.Module(name=name)
        self.name = name
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * (n_in + n_out))
        self.fn = ir.Function(self.module, fnty, name)
        self.fn.attributes.add("nounwind")
        for arg in self.fn.args:
            arg.add_attribute("noalias")
            arg.add_attribute("nonnull")
        self.ins = list(self.fn.args[:n_in])
        self.outs = list(self.fn.args[n_in:])
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self._intrinsics: dict[str, ir.Function] = {}
        self._n_tables = 0

    def finish(self) -> IrText:
        """Close the function; its IR text is rendered when first asked for (a kernel planned
        at compile time may never need it: its machine code is cached by description)."""
        self.b.ret_void()
        return IrText(self.module)

    # constants and addressing

    @staticmethod
    def i64(v: int | ir.Value) -> ir.Value:
        return v if isinstance(v, ir.Value) else ir.Constant(I64, int(v))

    @staticmethod
    def const(ty: ir.Type, v: float | int) -> ir.Constant:
        return ir.Constant(ty, float(v) if ty == F32 else int(v))

    def index(self, terms: Sequence[tuple[ir.Value | int, int]], base: int = 0) -> ir.Value:
        """``base + sum(i * stride)`` in i64 (index arithmetic never overflows: nsw)."""
        b = self.b
        acc: ir.Value = self.i64(base)
        for idx, stride in terms:
            if stride == 0:
                continue
            term = self.i64(idx) if stride == 1 else b.mul(self.i64(idx), self.i64(stride),
                                                           flags=("nsw",))
            acc = term if (isinstance(acc, ir.Constant) and acc.constant == 0) else b.add(
                acc, term, flags=("nsw",))
        return acc

    def ptr(self, base: ir.Value, ty: ir.Type, idx: ir.Value | int) -> ir.Value:
        return self.b.gep(base, [self.i64(idx)], inbounds=True, source_etype=ty)

    def load(self, base: ir.Value, ty: ir.Type, idx: ir.Value | int) -> ir.Value:
        return self.b.load(self.ptr(base, ty, idx), typ=ty)

    def store(self, value: ir.Value, base: ir.Value, ty: ir.Type, idx: ir.Value | int) -> None:
        self.b.store(value, self.ptr(base, ty, idx))

    def table(self, values: Sequence[int] | Sequence[float],
              ty: ir.Type = I64) -> ir.GlobalVariable:
        """A private constant array (e.g. per-output window bounds); ``ty`` F32 holds floats."""
        arr_ty = ir.ArrayType(ty, max(len(values), 1))
        values = list(values) or [0]
        g = ir.GlobalVariable(self.module, arr_ty, name=f"tab{self._n_tables}")
        self._n_tables += 1
        g.linkage = "private"
        g.global_constant = True
        g.unnamed_addr = True
        cast = float if isinstance(ty, ir.FloatType) else int
        g.initializer = ir.Constant(arr_ty, [cast(v) for v in values])
        return g

    def alloca(self, ty: ir.Type, count: int) -> ir.Value:
        """A stack buffer allocated once in the entry block."""
        with self.b.goto_block(self.entry):
            if self.entry.instructions:
                self.b.position_before(self.entry.instructions[0])
            buf = self.b.alloca(ty, size=None if count == 1 else self.i64(count))
        return buf

    def memcpy(self, dst: ir.Value, src: ir.Value, nbytes: int | ir.Value) -> None:
        f = self.intrinsic("llvm.memcpy.p0.p0.i64", ir.VoidType(), [PTR, PTR, I64, I1])
        self.b.call(f, [dst, src, self.i64(nbytes), ir.Constant(I1, 0)])

    def byte_ptr(self, base: ir.Value, offset: ir.Value | int) -> ir.Value:
        return self.ptr(base, I8, offset)

    # loops

    @contextmanager
    def loop(self, start: int | ir.Value, stop: int | ir.Value, step: int = 1,
             name: str = "i") -> Iterator[ir.Value]:
        """``for i in range(start, stop, step)`` (step > 0); yields ``i`` (i64)."""
        b = self.b
        start, stop = self.i64(start), self.i64(stop)
        pre = b.block
        head = self.fn.append_basic_block(f"{name}.head")
        body = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=name)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        yield i
        nxt = b.add(i, self.i64(step), flags=("nsw",))
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(done)

    @contextmanager
    def nest(self, shape: Sequence[int], name: str = "d") -> Iterator[list[ir.Value]]:
        """Nested loops over ``shape`` (outermost first); yields the index list."""
        if not shape:
            yield []
            return
        with self.loop(0, shape[0], name=f"{name}0") as i, \
                self.nest(shape[1:], name=f"{name}{len(shape) - 1}_") as rest:
            yield [i, *rest]

    @contextmanager
    def if_then(self, cond: ir.Value) -> Iterator[None]:
        with self.b.if_then(cond):
            yield

    # math

    def intrinsic(self, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        f = self._intrinsics.get(name)
        if f is None:
            f = ir.Function(self.module, ir.FunctionType(ret, list(args)), name)
            self._intrinsics[name] = f
        return f

    def call1(self, name: str, x: ir.Value) -> ir.Value:
        return self.b.call(self.intrinsic(f"{name}.f32", F32, [F32]), [x])

    def fmax(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """``x if x > y else y`` (what x86 maxps computes; vectorises)."""
        return self.b.select(self.b.fcmp_ordered(">", x, y), x, y)

    def fmax_reduce(self, acc: ir.Value, v: ir.Value) -> ir.Value:
        """``maxnum(acc, v)``: the form LLVM vectorises as a max reduction (NaNs are skipped)."""
        return self.b.call(self.intrinsic("llvm.maxnum.f32", F32, [F32, F32]), [acc, v])

    def fmin(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.fcmp_ordered("<", x, y), x, y)

    def smax(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed(">", x, y), x, y)

    def smin(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed("<", x, y), x, y)

    def fconst(self, v: float) -> ir.Constant:
        return ir.Constant(F32, float(v))

    def exp(self, x: ir.Value) -> ir.Value:
        """exp(x) in float32 (Cephes expf: range reduction + degree-5 polynomial, ~1 ulp)."""
        b, c = self.b, self.fconst
        xc = self.fmax(self.fmin(x, c(88.75)), c(-104.0))
        n = self.call1("llvm.floor", b.fadd(b.fmul(xc, c(1.44269504088896341)), c(0.5)))
        r = b.fsub(b.fsub(xc, b.fmul(n, c(0.693359375))), b.fmul(n, c(-2.12194440e-4)))
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                     5.0000001201e-1):
            p = b.fadd(b.fmul(p, r), c(coef))
        y = b.fadd(b.fadd(b.fmul(p, b.fmul(r, r)), r), c(1.0))
        ni = b.fptosi(n, I32)
        n1 = b.ashr(ni, ir.Constant(I32, 1))
        n2 = b.sub(ni, n1)
        s1 = b.bitcast(b.shl(b.add(n1, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
        s2 = b.bitcast(b.shl(b.add(n2, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)
        res = b.fmul(b.fmul(y, s1), s2)
        res = b.select(b.fcmp_ordered(">", x, c(88.72283935546875)), c(math.inf), res)
        return b.select(b.fcmp_unordered("uno", x, x), x, res)

    def tanh(self, x: ir.Value) -> ir.Value:
        """tanh(x) in float32 (Cephes tanhf: odd polynomial below 0.625, exp above)."""
        b, c = self.b, self.fconst
        ax = self.call1("llvm.fabs", x)
        z = b.fmul(x, x)
        p = c(-5.70498872745e-3)
        for coef in (2.06390887954e-2, -5.37397992122e-2, 1.33314422036e-1, -3.33332819422e-1):
            p = b.fadd(b.fmul(p, z), c(coef))
        small = b.fadd(x, b.fmul(b.fmul(x, z), p))
        e = self.exp(b.fmul(self.fmin(ax, c(44.0)), c(2.0)))
        big = b.fsub(c(1.0), b.fdiv(c(2.0), b.fadd(e, c(1.0))))
        copysign = self.intrinsic("llvm.copysign.f32", F32, [F32, F32])
        big = b.call(copysign, [big, x])
        res = b.select(b.fcmp_ordered("<", ax, c(0.625)), small, big)
        return b.select(b.fcmp_unordered("uno", x, x), x, res)

    def sigmoid(self, x: ir.Value) -> ir.Value:
        b, c = self.b, self.fconst
        return b.fdiv(c(1.0), b.fadd(c(1.0), self.exp(b.fneg(x))))

    def round_div_away(self, num: ir.Value, den: ir.Value) -> ir.Value:
        """``num / den`` rounded to nearest, ties away from zero (i32, den > 0)."""
        b = self.b
        neg = b.icmp_signed("<", num, ir.Constant(I32, 0))
        twice = b.shl(num, ir.Constant(I32, 1))
        adj = b.select(neg, b.sub(twice, den), b.add(twice, den))
        return b.sdiv(adj, b.shl(den, ir.Constant(I32, 1)))

    def saturate_i8(self, v: ir.Value, lo: int = -128, hi: int = 127) -> ir.Value:
        v = self.smin(self.smax(v, ir.Constant(I32, lo)), ir.Constant(I32, hi))
        return self.b.trunc(v, I8)
