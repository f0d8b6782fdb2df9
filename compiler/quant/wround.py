"""Per-channel weight quantisation of large layers in one pass each, compiled through the JIT.

:func:`channel_absmax` is ``max|w[c]|`` per output channel (NaN when the channel holds one) and
:func:`round_rows` the int8 weights ``clip(rint(w[c] / scale[c]), lo, 127)`` together with
their per-channel sums ``sum w_q`` and ``sum |w_q|``: the same values as
:mod:`~tessera.compiler.quant.params`' numpy formulas, bit for bit, with one read of the float
weights instead of five (VGG-19's fc6 has 102M weights: ~0.4 s of numpy passes).

Why the results are the same:

* a maximum and integer sums do not depend on the order of their terms;
* the quotient: numpy divides in float64 (``N = fl(w / s)``). The kernel multiplies by the
  rounded reciprocal, ``m = fl(w * fl(1 / s))``, which is within ``3 * 2**-53 * |w / s|`` of
  ``N``; ``rint`` of the two can differ only when a half-integer lies between them. Wherever
  ``m`` is not farther than ``0.5 - |m| * 2**-49`` from its rounding (a margin of 16 units of
  the last place), the kernel divides exactly as numpy does (those 8 lanes), so every rounding
  is that of ``N``. ``rint`` is round-half-to-even (``llvm.roundeven``, numpy's default mode).
"""

from __future__ import annotations

import numpy as np

from tessera.runtime.cpu.jit import IrKernels

__all__ = ["channel_absmax", "round_rows", "ready", "prepare"]

_VERSION = "wround-1"
_kernels = IrKernels()

# The row loop both kernels share: row %r of %rows (ending at %exit; %tdone closes a row), its
# float row %rowp at element %base of %w.
_ROW_LOOP = [
    "  br label %row",
    "row:",
    "  %r = phi i64 [0, %entry], [%r.next, %tdone]",
    "  %more = icmp slt i64 %r, %rows",
    "  br i1 %more, label %rowbody, label %exit",
    "rowbody:",
    "  %base = mul i64 %r, %cols",
    "  %rowp = getelementptr float, ptr %w, i64 %base",
]


def _absmax_ir() -> str:
    """``wround_absmax(w f32[rows, cols], out f64[rows], dims i64[2])``: per row the largest
    |w| (NaN if the row has one)."""
    v = "<16 x float>"
    lanes = []
    prev = "%ms"
    for k in range(16):
        lanes += [f"  %e{k} = extractelement {v} %m, i64 {k}",
                  f"  %g{k} = fcmp ogt float %e{k}, {prev}",
                  f"  %n{k} = fcmp uno float %e{k}, 0.0",
                  f"  %t{k} = or i1 %g{k}, %n{k}",
                  f"  %r{k} = select i1 %t{k}, float %e{k}, float {prev}"]
        prev = f"%r{k}"
    return "\n".join([
        f"declare {v} @llvm.fabs.v16f32({v})",
        "declare float @llvm.fabs.f32(float)",
        "define void @wround_absmax(ptr noalias %w, ptr noalias %out, ptr noalias %dims) {",
        "entry:",
        "  %rows = load i64, ptr %dims",
        "  %pc = getelementptr i64, ptr %dims, i64 1",
        "  %cols = load i64, ptr %pc",
        "  %vend = and i64 %cols, -16",
        *_ROW_LOOP,
        "  br label %vloop",
        "vloop:",
        "  %i = phi i64 [0, %rowbody], [%i.next, %vbody]",
        f"  %m = phi {v} [zeroinitializer, %rowbody], [%m.next, %vbody]",
        "  %vmore = icmp slt i64 %i, %vend",
        "  br i1 %vmore, label %vbody, label %tloop",
        "vbody:",
        "  %p = getelementptr float, ptr %rowp, i64 %i",
        f"  %x = load {v}, ptr %p, align 4",
        f"  %a = call {v} @llvm.fabs.v16f32({v} %x)",
        f"  %gt = fcmp ogt {v} %a, %m",
        f"  %isnan = fcmp uno {v} %a, zeroinitializer",
        "  %take = or <16 x i1> %gt, %isnan",
        f"  %m.next = select <16 x i1> %take, {v} %a, {v} %m",
        "  %i.next = add i64 %i, 16",
        "  br label %vloop",
        "tloop:",
        "  %j = phi i64 [%vend, %vloop], [%j.next, %tbody]",
        "  %ms = phi float [0.0, %vloop], [%ms.next, %tbody]",
        "  %tmore = icmp slt i64 %j, %cols",
        "  br i1 %tmore, label %tbody, label %tdone",
        "tbody:",
        "  %tp = getelementptr float, ptr %rowp, i64 %j",
        "  %tx = load float, ptr %tp, align 4",
        "  %ta = call float @llvm.fabs.f32(float %tx)",
        "  %tgt = fcmp ogt float %ta, %ms",
        "  %tnan = fcmp uno float %ta, 0.0",
        "  %ttake = or i1 %tgt, %tnan",
        "  %ms.next = select i1 %ttake, float %ta, float %ms",
        "  %j.next = add i64 %j, 1",
        "  br label %tloop",
        "tdone:",
        *lanes,
        f"  %res = fpext float {prev} to double",
        "  %op = getelementptr double, ptr %out, i64 %r",
        "  store double %res, ptr %op, align 8",
        "  %r.next = add i64 %r, 1",
        "  br label %row",
        "exit:",
        "  ret void",
        "}",
    ]) + "\n"


def _round_ir() -> str:
    """``wround_rows(w f32[rows, cols], scale f64[rows], out i8[rows, cols], sums i64[rows, 2],
    dims i64[4] = rows, cols, lo, clip)``: ``out = rint(w / scale[r])`` (clipped to
    ``[lo, 127]`` when ``clip``), ``sums[r] = (sum out[r], sum |out[r]|)``."""
    d, f, i32, i64 = "<8 x double>", "<8 x float>", "<8 x i32>", "<8 x i64>"

    def quotient(tag: str, x: str, block: str) -> list[str]:
        """Lines computing the rounded quotient ``%q{tag}`` of the f32 vector ``x`` (the
        reciprocal product where it provably rounds like the division, else the division);
        ``block``: the label the lines start in (they end in ``{tag}.join``)."""
        return [
            f"  %xd{tag} = fpext {f} {x} to {d}",
            f"  %qm{tag} = fmul {d} %xd{tag}, %rv",
            f"  %rm{tag} = call {d} @llvm.roundeven.v8f64({d} %qm{tag})",
            f"  %df{tag} = fsub {d} %qm{tag}, %rm{tag}",
            f"  %ad{tag} = call {d} @llvm.fabs.v8f64({d} %df{tag})",
            f"  %aq{tag} = call {d} @llvm.fabs.v8f64({d} %qm{tag})",
            f"  %mg{tag} = fmul {d} %aq{tag}, <{', '.join(['double 0x3CE0000000000000'] * 8)}>",
            f"  %lim{tag} = fsub {d} <{', '.join(['double 0.5'] * 8)}>, %mg{tag}",
            f"  %ok{tag} = fcmp olt {d} %ad{tag}, %lim{tag}",
            f"  %okall{tag} = call i1 @llvm.vector.reduce.and.v8i1(<8 x i1> %ok{tag})",
            f"  br i1 %okall{tag}, label %{tag}.join, label %{tag}.div",
            f"{tag}.div:",
            f"  %qd{tag} = fdiv {d} %xd{tag}, %sv",
            f"  %rd{tag} = call {d} @llvm.roundeven.v8f64({d} %qd{tag})",
            f"  br label %{tag}.join",
            f"{tag}.join:",
            f"  %qr{tag} = phi {d} [%rm{tag}, %{block}], [%rd{tag}, %{tag}.div]",
            f"  %lt{tag} = fcmp olt {d} %qr{tag}, %lov",
            f"  %c1{tag} = select <8 x i1> %lt{tag}, {d} %lov, {d} %qr{tag}",
            f"  %gt{tag} = fcmp ogt {d} %c1{tag}, <{', '.join(['double 127.0'] * 8)}>",
            f"  %c2{tag} = select <8 x i1> %gt{tag}, {d} <{', '.join(['double 127.0'] * 8)}>, "
            f"{d} %c1{tag}",
            f"  %q{tag} = select i1 %clip, {d} %c2{tag}, {d} %qr{tag}",
        ]

    lines = [
        f"declare {d} @llvm.roundeven.v8f64({d})",
        f"declare {d} @llvm.fabs.v8f64({d})",
        "declare i1 @llvm.vector.reduce.and.v8i1(<8 x i1>)",
        f"declare i64 @llvm.vector.reduce.add.v8i64({i64})",
        f"declare {i32} @llvm.abs.v8i32({i32}, i1)",
        "declare double @llvm.roundeven.f64(double)",
        "declare i32 @llvm.abs.i32(i32, i1)",
        "define void @wround_rows(ptr noalias %w, ptr noalias %scale, ptr noalias %out, "
        "ptr noalias %sums, ptr noalias %dims) {",
        "entry:",
        "  %rows = load i64, ptr %dims",
        "  %p1 = getelementptr i64, ptr %dims, i64 1",
        "  %cols = load i64, ptr %p1",
        "  %p2 = getelementptr i64, ptr %dims, i64 2",
        "  %lo = load i64, ptr %p2",
        "  %p3 = getelementptr i64, ptr %dims, i64 3",
        "  %clipv = load i64, ptr %p3",
        "  %clip = icmp ne i64 %clipv, 0",
        "  %lof = sitofp i64 %lo to double",
        f"  %lo0 = insertelement {d} undef, double %lof, i64 0",
        f"  %lov = shufflevector {d} %lo0, {d} undef, <8 x i32> zeroinitializer",
        "  %vend = and i64 %cols, -8",
        *_ROW_LOOP,
        "  %outp = getelementptr i8, ptr %out, i64 %base",
        "  %sp = getelementptr double, ptr %scale, i64 %r",
        "  %s = load double, ptr %sp, align 8",
        "  %rs = fdiv double 1.0, %s",
        f"  %s0 = insertelement {d} undef, double %s, i64 0",
        f"  %sv = shufflevector {d} %s0, {d} undef, <8 x i32> zeroinitializer",
        f"  %r0 = insertelement {d} undef, double %rs, i64 0",
        f"  %rv = shufflevector {d} %r0, {d} undef, <8 x i32> zeroinitializer",
        "  br label %vloop",
        "vloop:",
        "  %i = phi i64 [0, %rowbody], [%i.next, %v.join]",
        f"  %sum = phi {i64} [zeroinitializer, %rowbody], [%sum.next, %v.join]",
        f"  %mag = phi {i64} [zeroinitializer, %rowbody], [%mag.next, %v.join]",
        "  %vmore = icmp slt i64 %i, %vend",
        "  br i1 %vmore, label %vbody, label %vdone",
        "vbody:",
        "  %p = getelementptr float, ptr %rowp, i64 %i",
        f"  %x = load {f}, ptr %p, align 4",
        *quotient("v", "%x", "vbody"),
        f"  %qi = fptosi {d} %qv to {i32}",
        "  %qb = trunc <8 x i32> %qi to <8 x i8>",
        "  %o = getelementptr i8, ptr %outp, i64 %i",
        "  store <8 x i8> %qb, ptr %o, align 1",
        f"  %qw = sext {i32} %qi to {i64}",
        f"  %sum.next = add {i64} %sum, %qw",
        f"  %qa = call {i32} @llvm.abs.v8i32({i32} %qi, i1 false)",
        f"  %qaw = zext {i32} %qa to {i64}",
        f"  %mag.next = add {i64} %mag, %qaw",
        "  %i.next = add i64 %i, 8",
        "  br label %vloop",
        "vdone:",
        f"  %vsum = call i64 @llvm.vector.reduce.add.v8i64({i64} %sum)",
        f"  %vmag = call i64 @llvm.vector.reduce.add.v8i64({i64} %mag)",
        "  br label %tloop",
        # the tail: the same arithmetic on one element (division: no reciprocal shortcut)
        "tloop:",
        "  %j = phi i64 [%vend, %vdone], [%j.next, %tbody]",
        "  %ts = phi i64 [%vsum, %vdone], [%ts.next, %tbody]",
        "  %tm = phi i64 [%vmag, %vdone], [%tm.next, %tbody]",
        "  %tmore = icmp slt i64 %j, %cols",
        "  br i1 %tmore, label %tbody, label %tdone",
        "tbody:",
        "  %tp = getelementptr float, ptr %rowp, i64 %j",
        "  %tx = load float, ptr %tp, align 4",
        "  %txd = fpext float %tx to double",
        "  %tq = fdiv double %txd, %s",
        "  %tr = call double @llvm.roundeven.f64(double %tq)",
        "  %tlt = fcmp olt double %tr, %lof",
        "  %tc1 = select i1 %tlt, double %lof, double %tr",
        "  %tgt = fcmp ogt double %tc1, 127.0",
        "  %tc2 = select i1 %tgt, double 127.0, double %tc1",
        "  %tqv = select i1 %clip, double %tc2, double %tr",
        "  %ti = fptosi double %tqv to i32",
        "  %tb = trunc i32 %ti to i8",
        "  %to = getelementptr i8, ptr %outp, i64 %j",
        "  store i8 %tb, ptr %to, align 1",
        "  %tw = sext i32 %ti to i64",
        "  %ts.next = add i64 %ts, %tw",
        "  %ta = call i32 @llvm.abs.i32(i32 %ti, i1 false)",
        "  %taw = zext i32 %ta to i64",
        "  %tm.next = add i64 %tm, %taw",
        "  %j.next = add i64 %j, 1",
        "  br label %tloop",
        "tdone:",
        "  %s2 = mul i64 %r, 2",
        "  %sp0 = getelementptr i64, ptr %sums, i64 %s2",
        "  store i64 %ts, ptr %sp0, align 8",
        "  %sp1 = getelementptr i64, ptr %sp0, i64 1",
        "  store i64 %tm, ptr %sp1, align 8",
        "  %r.next = add i64 %r, 1",
        "  br label %row",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _kernel(name: str):
    # code generation alone ~0.02 s cold; the optimisation pipeline would cost ~0.1 s more
    # and gains nothing measurable
    ir, n_args = (_absmax_ir, 3) if name == "wround_absmax" else (_round_ir, 5)
    return _kernels.get(name, lambda: (ir(), name, n_args, f"{_VERSION} {name}"))


def ready() -> bool:
    """Whether both kernels are compiled in this process (then they are the cheaper path for
    any layer but the smallest)."""
    return len(_kernels) == 2


def prepare() -> None:
    """Compile (or load) both kernels now."""
    _kernel("wround_absmax")
    _kernel("wround_rows")


def _rows(w: np.ndarray) -> np.ndarray:
    if w.dtype != np.float32 or w.ndim < 1:
        raise TypeError(f"weights must be a float32 array with an output-channel axis, not "
                        f"{w.dtype} of shape {w.shape}")
    flat = np.ascontiguousarray(w)
    return flat.reshape(flat.shape[0], -1)


def channel_absmax(w: np.ndarray) -> np.ndarray:
    """``max|w[c]|`` per output channel (axis 0) of float32 weights, float64 (NaN where the
    channel has a NaN)."""
    flat = _rows(w)
    out = np.empty(flat.shape[0], np.float64)
    dims = np.array(flat.shape, np.int64)
    _kernel("wround_absmax").call_pointers(flat.ctypes.data, out.ctypes.data, dims.ctypes.data)
    return out


def round_rows(w: np.ndarray, scale: np.ndarray, lo: int, clip: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w_q, sum w_q, sum |w_q|)`` for float32 weights ``w`` (finite) and positive
    per-channel ``scale``: ``w_q = rint(w[c] / scale[c])`` as int8 of ``w``'s shape, clipped to
    ``[lo, 127]`` when ``clip`` (else every quotient must round into int8: the caller's
    invariant), the sums int64 per channel."""
    flat = _rows(w)
    s = np.ascontiguousarray(scale, np.float64).reshape(-1)
    assert s.shape[0] == flat.shape[0] and -128 <= lo <= 127
    out = np.empty(flat.shape, np.int8)
    sums = np.empty((flat.shape[0], 2), np.int64)
    dims = np.array([flat.shape[0], flat.shape[1], lo, int(clip)], np.int64)
    _kernel("wround_rows").call_pointers(flat.ctypes.data, s.ctypes.data, out.ctypes.data,
                                         sums.ctypes.data, dims.ctypes.data)
    return out.reshape(np.shape(w)), sums[:, 0].copy(), sums[:, 1].copy()
