"""Bias correction's error statistics in one pass, compiled through the JIT: per channel ``c``

    s1[c] += sum_i err[c, i],  s2[c] += sum_i err[c, i]**2,
    err[c, i] = z[c, i] / unit[c] - (acc[c, i] - offset[c])

with float32 ``z``, float64 ``unit``, integer ``acc`` (int32 lanes or int64) and int64
``offset`` — the same float64 values, bit for bit, as numpy's

    err = np.divide(z, unit[:, None], out=buf); err -= acc - offset[:, None]
    s1 += err.sum(axis=1); err *= err; s2 += err.sum(axis=1)

(:func:`tessera.compiler.quant.bias_correction._add_error_sums`' numpy path), read once
instead of five passes over a float64 buffer. Why the results are the same:

* each ``err`` is the same IEEE operations on the same operands: ``z`` widened to float64
  (exact), one correctly rounded division, the integer difference in int64 (exact: no sum of
  int8 products comes near 2**63) converted to float64, one subtraction; the square is one
  multiplication (no fused multiply-add: the IR carries no ``contract`` flags);
* the sums follow numpy's pairwise summation exactly (``pairwise_sum`` in numpy's
  ``loops_utils.h.src``, which a reduction over a contiguous row runs on the whole row): fewer
  than 8 terms add one by one from 0.0; up to 128 terms go into 8 partial sums (lane ``j``
  takes the terms ``j, j + 8, ...`` of the block's whole multiples of 8: one ``<8 x double>``
  vector here), combined as ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then the
  rest added one by one; longer runs split at ``n2 = n // 2 - (n // 2) % 8`` and add the two
  halves' sums. The reduction adds that to its initial 0.0, and ``+=`` adds the result.
"""

from __future__ import annotations

import numpy as np

from tessera.runtime.cpu.jit import IrKernels

__all__ = ["add_error_sums", "supports"]

_VERSION = "errsum-1"
_kernels = IrKernels()
_V = "<8 x double>"


def _terms(i: str, tag: str, acc: str, lanes: int) -> list[str]:
    """IR computing the err of terms ``i .. i + lanes - 1`` from %z, %a and the divisor and
    offset (%u, %o; their splats %uv, %ov for 8 lanes): ``%e{tag}`` and its square
    ``%ee{tag}`` for one lane, ``%v{tag}`` and ``%vv{tag}`` for 8."""
    vec = lanes > 1

    def t(scalar: str) -> str:
        return f"<{lanes} x {scalar}>" if vec else scalar
    err, sq, u, o = ("v", "vv", "%uv", "%ov") if vec else ("e", "ee", "%u", "%o")
    widen = (f"  %aw{tag} = sext {t(acc)} %ai{tag} to {t('i64')}" if acc == "i32" else
             f"  %aw{tag} = add {t('i64')} %ai{tag}, {'zeroinitializer' if vec else 0}")
    return [
        f"  %zp{tag} = getelementptr float, ptr %z, i64 {i}",
        f"  %zf{tag} = load {t('float')}, ptr %zp{tag}, align 4",
        f"  %zd{tag} = fpext {t('float')} %zf{tag} to {t('double')}",
        f"  %q{tag} = fdiv {t('double')} %zd{tag}, {u}",
        f"  %ap{tag} = getelementptr {acc}, ptr %a, i64 {i}",
        f"  %ai{tag} = load {t(acc)}, ptr %ap{tag}, align 4",
        widen,
        f"  %ad{tag} = sub {t('i64')} %aw{tag}, {o}",
        f"  %af{tag} = sitofp {t('i64')} %ad{tag} to {t('double')}",
        f"  %{err}{tag} = fsub {t('double')} %q{tag}, %af{tag}",
        f"  %{sq}{tag} = fmul {t('double')} %{err}{tag}, %{err}{tag}",
    ]


def _combine(vec: str, out: str) -> list[str]:
    """``out = ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))`` of ``<8 x double> vec``."""
    lines = [f"  %{out}.x{k} = extractelement {_V} %{vec}, i64 {k}" for k in range(8)]
    lines += [f"  %{out}.p{k} = fadd double %{out}.x{2 * k}, %{out}.x{2 * k + 1}"
              for k in range(4)]
    lines += [f"  %{out}.h0 = fadd double %{out}.p0, %{out}.p1",
              f"  %{out}.h1 = fadd double %{out}.p2, %{out}.p3",
              f"  %{out} = fadd double %{out}.h0, %{out}.h1"]
    return lines


def _ir(acc: str) -> str:
    """``errsum_{acc}(z f32*, a acc*, unit f64[rows], off i64[rows], s1 f64[rows],
    s2 f64[rows], dims i64[4] = rows, cols, z row stride, a row stride)``."""
    pw = f"@errsum_pw_{acc}"
    lines = [
        "; pairwise sums of err and err**2 over n terms from %z / %a (numpy's pairwise_sum)",
        f"define internal {{double, double}} {pw}(ptr %z, ptr %a, i64 %n, double %u, i64 %o) {{",
        "entry:",
        "  %issmall = icmp slt i64 %n, 8",
        "  br i1 %issmall, label %small, label %notsmall",
        "small:",
        "  br label %sloop",
        "sloop:",
        "  %si = phi i64 [0, %small], [%si.next, %sbody]",
        "  %s1 = phi double [0.0, %small], [%s1.next, %sbody]",
        "  %s2 = phi double [0.0, %small], [%s2.next, %sbody]",
        "  %smore = icmp slt i64 %si, %n",
        "  br i1 %smore, label %sbody, label %sdone",
        "sbody:",
        *_terms("%si", "s", acc, 1),
        "  %s1.next = fadd double %s1, %es",
        "  %s2.next = fadd double %s2, %ees",
        "  %si.next = add i64 %si, 1",
        "  br label %sloop",
        "sdone:",
        "  %sr0 = insertvalue {double, double} undef, double %s1, 0",
        "  %sr = insertvalue {double, double} %sr0, double %s2, 1",
        "  ret {double, double} %sr",
        "notsmall:",
        "  %isblock = icmp sle i64 %n, 128",
        "  br i1 %isblock, label %block, label %split",
        "block:",
        f"  %ub0 = insertelement {_V} undef, double %u, i64 0",
        f"  %uv = shufflevector {_V} %ub0, {_V} undef, <8 x i32> zeroinitializer",
        "  %ob0 = insertelement <8 x i64> undef, i64 %o, i64 0",
        "  %ov = shufflevector <8 x i64> %ob0, <8 x i64> undef, <8 x i32> zeroinitializer",
        *_terms("0", "f", acc, 8),
        "  %rem = srem i64 %n, 8",
        "  %whole = sub i64 %n, %rem",
        "  br label %vloop",
        "vloop:",
        "  %vi = phi i64 [8, %block], [%vi.next, %vbody]",
        f"  %r1 = phi {_V} [%vf, %block], [%r1.next, %vbody]",
        f"  %r2 = phi {_V} [%vvf, %block], [%r2.next, %vbody]",
        "  %vmore = icmp slt i64 %vi, %whole",
        "  br i1 %vmore, label %vbody, label %vdone",
        "vbody:",
        *_terms("%vi", "b", acc, 8),
        f"  %r1.next = fadd {_V} %r1, %vb",
        f"  %r2.next = fadd {_V} %r2, %vvb",
        "  %vi.next = add i64 %vi, 8",
        "  br label %vloop",
        "vdone:",
        *_combine("r1", "h1"),
        *_combine("r2", "h2"),
        "  br label %tloop",
        "tloop:",
        "  %ti = phi i64 [%whole, %vdone], [%ti.next, %tbody]",
        "  %t1 = phi double [%h1, %vdone], [%t1.next, %tbody]",
        "  %t2 = phi double [%h2, %vdone], [%t2.next, %tbody]",
        "  %tmore = icmp slt i64 %ti, %n",
        "  br i1 %tmore, label %tbody, label %tdone",
        "tbody:",
        *_terms("%ti", "t", acc, 1),
        "  %t1.next = fadd double %t1, %et",
        "  %t2.next = fadd double %t2, %eet",
        "  %ti.next = add i64 %ti, 1",
        "  br label %tloop",
        "tdone:",
        "  %tr0 = insertvalue {double, double} undef, double %t1, 0",
        "  %tr = insertvalue {double, double} %tr0, double %t2, 1",
        "  ret {double, double} %tr",
        "split:",
        "  %half = sdiv i64 %n, 2",
        "  %hrem = srem i64 %half, 8",
        "  %n2 = sub i64 %half, %hrem",
        "  %nr = sub i64 %n, %n2",
        "  %zr = getelementptr float, ptr %z, i64 %n2",
        f"  %ar = getelementptr {acc}, ptr %a, i64 %n2",
        f"  %left = call {{double, double}} {pw}(ptr %z, ptr %a, i64 %n2, double %u, i64 %o)",
        f"  %right = call {{double, double}} {pw}(ptr %zr, ptr %ar, i64 %nr, double %u, "
        "i64 %o)",
        "  %l1 = extractvalue {double, double} %left, 0",
        "  %l2 = extractvalue {double, double} %left, 1",
        "  %q1 = extractvalue {double, double} %right, 0",
        "  %q2 = extractvalue {double, double} %right, 1",
        "  %m1 = fadd double %l1, %q1",
        "  %m2 = fadd double %l2, %q2",
        "  %mr0 = insertvalue {double, double} undef, double %m1, 0",
        "  %mr = insertvalue {double, double} %mr0, double %m2, 1",
        "  ret {double, double} %mr",
        "}",
        "",
        f"define void @errsum_{acc}(ptr %z, ptr %a, ptr %unit, ptr %off, ptr %s1, ptr %s2, "
        "ptr %dims) {",
        "entry:",
        "  %rows = load i64, ptr %dims, align 8",
        "  %dp1 = getelementptr i64, ptr %dims, i64 1",
        "  %cols = load i64, ptr %dp1, align 8",
        "  %dp2 = getelementptr i64, ptr %dims, i64 2",
        "  %zs = load i64, ptr %dp2, align 8",
        "  %dp3 = getelementptr i64, ptr %dims, i64 3",
        "  %as = load i64, ptr %dp3, align 8",
        "  br label %row",
        "row:",
        "  %r = phi i64 [0, %entry], [%r.next, %body]",
        "  %more = icmp slt i64 %r, %rows",
        "  br i1 %more, label %body, label %exit",
        "body:",
        "  %zo = mul i64 %r, %zs",
        "  %zrow = getelementptr float, ptr %z, i64 %zo",
        "  %ao = mul i64 %r, %as",
        f"  %arow = getelementptr {acc}, ptr %a, i64 %ao",
        "  %up = getelementptr double, ptr %unit, i64 %r",
        "  %u = load double, ptr %up, align 8",
        "  %op = getelementptr i64, ptr %off, i64 %r",
        "  %o = load i64, ptr %op, align 8",
        f"  %sums = call {{double, double}} {pw}(ptr %zrow, ptr %arow, i64 %cols, double %u, "
        "i64 %o)",
        "  %x1 = extractvalue {double, double} %sums, 0",
        "  %x2 = extractvalue {double, double} %sums, 1",
        "  %y1 = fadd double 0.0, %x1",  # the reduction's initial value
        "  %y2 = fadd double 0.0, %x2",
        "  %s1p = getelementptr double, ptr %s1, i64 %r",
        "  %s1o = load double, ptr %s1p, align 8",
        "  %s1n = fadd double %s1o, %y1",
        "  store double %s1n, ptr %s1p, align 8",
        "  %s2p = getelementptr double, ptr %s2, i64 %r",
        "  %s2o = load double, ptr %s2p, align 8",
        "  %s2n = fadd double %s2o, %y2",
        "  store double %s2n, ptr %s2p, align 8",
        "  %r.next = add i64 %r, 1",
        "  br label %row",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _kernel(acc: str):
    return _kernels.get(acc, lambda: (_ir(acc), f"errsum_{acc}", 7, f"{_VERSION} {acc}"))


def _rows_ok(x: np.ndarray, dtype) -> bool:
    """A 2-D ``dtype`` array whose rows are contiguous (any row stride)."""
    return (x.ndim == 2 and x.dtype == dtype and (x.shape[1] <= 1 or x.strides[1] == x.itemsize)
            and x.strides[0] % x.itemsize == 0 and x.strides[0] >= 0)


def supports(z: np.ndarray, acc: np.ndarray) -> bool:
    """Whether :func:`add_error_sums` takes these operands (float32 ``z`` and int32/int64
    ``acc``, both [channels, positions] of the same shape with contiguous rows)."""
    return (z.shape == acc.shape and _rows_ok(z, np.float32)
            and (_rows_ok(acc, np.int32) or _rows_ok(acc, np.int64)))


def add_error_sums(z: np.ndarray, acc: np.ndarray, unit: np.ndarray, offset: np.ndarray,
                   s1: np.ndarray, s2: np.ndarray) -> None:
    """Add each channel's sum of ``err`` and of ``err**2`` (module docstring) to ``s1`` and
    ``s2`` (float64 per channel, updated in place). ``z`` and ``acc`` must pass
    :func:`supports`; ``unit`` is float64 and ``offset`` int64, one per channel."""
    assert supports(z, acc), "operands the kernel does not take"
    rows, cols = z.shape
    u = np.ascontiguousarray(unit, np.float64).reshape(-1)
    o = np.ascontiguousarray(offset, np.int64).reshape(-1)
    assert u.shape == o.shape == (rows,) and s1.shape == s2.shape == (rows,)
    assert s1.dtype == s2.dtype == np.float64 and s1.flags.c_contiguous \
        and s2.flags.c_contiguous
    dims = np.array([rows, cols, z.strides[0] // z.itemsize, acc.strides[0] // acc.itemsize],
                    np.int64)
    kind = "i32" if acc.dtype == np.int32 else "i64"
    _kernel(kind).call_pointers(z.ctypes.data, acc.ctypes.data, u.ctypes.data, o.ctypes.data,
                                s1.ctypes.data, s2.ctypes.data, dims.ctypes.data)
