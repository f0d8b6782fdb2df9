"""LLVM IR of the register-blocked int8 product kernels of :mod:`tessera.runtime.cpu.igemm`.

One loop nest for both instruction sets; only the multiply-accumulate step and the vector
width differ:

- ``avx512vnni``: 16 int32 lanes (zmm). A word is a quad of four reduction bytes, unsigned
  activations by signed weights: ``vpdpbusd`` (``llvm.x86.avx512.vpdpbusd.512``) adds the four
  products to the accumulator lane.
- ``avx2``: 8 int32 lanes (ymm). A word is a pair of two int16 reduction elements (int8 or
  uint8 values widened): ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``) gives each lane the pair's
  sum of products, exact in int32 since ``|x * w| <= 255 * 128``, and an ``add`` puts it on
  the accumulator (wrapping modulo 2**32 as ``vpdpbusd`` does).

``ir(isa, rb, vb)`` is the kernel ``out[o, m] = corr[o] + sum_q dot(x4[q, m], w4[o, q])`` for
``o < O, m < M``: ``RB`` output rows (their weight words broadcast from memory) by ``VB``
vectors of positions, ``RB * VB`` accumulators per word step, sizes in an int64 array. The IR
is scheduled by hand (built without the optimisation pipeline). The AVX2 kernel also prefetches
the activations (a distance the caller gives) and stores whole blocks with plain stores (AVX2's
masked stores, ``vpmaskmovd``, only at the edges: on Zen 3 they made a 32-word reduction 2.7x
slower).
"""

from __future__ import annotations

__all__ = ["ISAS", "LANES", "ir", "symbol", "panels_ir", "PANEL_SYMBOL"]

ISAS = ("avx512vnni", "avx2")
LANES = {"avx512vnni": 16, "avx2": 8}


def symbol(isa: str, rb: int, vb: int) -> str:
    """The entry point's name (the VNNI kernel's is the one it always had)."""
    return f"igemm_r{rb}v{vb}" if isa == "avx512vnni" else f"igemm_{isa}_r{rb}v{vb}"


def _splat(v: str, tmp: str, dst: str, scalar: str) -> list[str]:
    """IR lines broadcasting i32 ``scalar`` to all lanes of ``%dst`` (type ``v``, via
    ``%tmp``)."""
    return [f"  %{tmp} = insertelement {v} poison, i32 {scalar}, i32 0",
            f"  %{dst} = shufflevector {v} %{tmp}, {v} poison, {v} zeroinitializer"]


def _declares(isa: str, v: str, lanes: int) -> list[str]:
    mac = (f"declare {v} @llvm.x86.avx512.vpdpbusd.512({v}, {v}, {v})" if isa == "avx512vnni"
           else f"declare {v} @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)")
    out = [mac, f"declare void @llvm.masked.store.v{lanes}i32.p0({v}, ptr, i32 immarg, "
                f"<{lanes} x i1>)"]
    if isa == "avx2":
        out.append("declare void @llvm.prefetch.p0(ptr, i32 immarg, i32 immarg, i32 immarg)")
    return out


def _mac(isa: str, v: str, i: int, j: int) -> list[str]:
    """``%n{i}_{j}``: accumulator ``%a{i}_{j}`` plus the products of the activation vector
    ``%xv{j}`` and the broadcast weight word ``%wb{i}``."""
    if isa == "avx512vnni":
        return [f"  %n{i}_{j} = call {v} @llvm.x86.avx512.vpdpbusd.512("
                f"{v} %a{i}_{j}, {v} %xv{j}, {v} %wb{i})"]
    h = "<16 x i16>"
    return [f"  %p{i}_{j} = call {v} @llvm.x86.avx2.pmadd.wd({h} %xh{j}, {h} %wh{i})",
            f"  %n{i}_{j} = add {v} %a{i}_{j}, %p{i}_{j}"]


def _row_setup(v: str, p: str, row: str, i: int) -> list[str]:
    """``%{p}cb{i}``: ``corr[row]`` in every lane; ``%{p}orow{i}``: the output row ``row``."""
    return [f"  %{p}cp{i} = getelementptr i32, ptr %corr, i64 {row}",
            f"  %{p}cs{i} = load i32, ptr %{p}cp{i}",
            *_splat(v, f"{p}cbi{i}", f"{p}cb{i}", f"%{p}cs{i}"),
            f"  %{p}oo{i} = mul i64 {row}, %ldo",
            f"  %{p}orow{i} = getelementptr i32, ptr %out, i64 %{p}oo{i}"]


def _masked_store(v: str, lanes_n: int, rb: int, vb: int) -> list[str]:
    """``out[r{i}, m0 + L j:][:L] = n{i}_{j} + corr[r{i}]`` where in range (masked stores)."""
    lines: list[str] = []
    lanes = ", ".join(f"i32 {k}" for k in range(lanes_n))
    mask = f"<{lanes_n} x i1>"
    for j in range(vb):
        lines += [f"  %mj{j} = add i64 %m0, {lanes_n * j}",
                  f"  %mjt{j} = trunc i64 %mj{j} to i32",
                  *_splat(v, f"mji{j}", f"mjs{j}", f"%mjt{j}"),
                  f"  %idx{j} = add {v} %mjs{j}, <{lanes}>",
                  f"  %mk{j} = icmp slt {v} %idx{j}, %msplat"]
    for i in range(rb):
        lines += _row_setup(v, "", f"%r{i}", i)
        for j in range(vb):
            lines += [f"  %s{i}_{j} = add {v} %n{i}_{j}, %cb{i}",
                      f"  %sm{i}_{j} = select i1 %rc{i}, {mask} %mk{j}, "
                      f"{mask} zeroinitializer",
                      f"  %op{i}_{j} = getelementptr i32, ptr %orow{i}, i64 %mj{j}",
                      f"  call void @llvm.masked.store.v{lanes_n}i32.p0({v} %s{i}_{j}, "
                      f"ptr %op{i}_{j}, i32 4, {mask} %sm{i}_{j})"]
    return lines


def ir(isa: str, rb: int, vb: int) -> str:
    """LLVM IR of ``symbol(isa, rb, vb)(x4, w4, corr, out, dims)``: dims = (M, ldx, O, Q,
    ldw, ldo, ldb, pfd) as int64. ``out[o, m] = corr[o] + sum_q dot(x4[q, m], w4[o, q])`` for
    ``o < O, m < M`` (int32, wrapping), where the ``L vb`` words of block ``b`` (``L`` lanes)
    at reduction step ``q`` start at word ``q * ldx + b * ldb`` of ``x4`` (rows: ``ldb = L
    vb``; panels: ``ldx = L vb``, ``ldb = Q L vb``); the AVX2 kernel prefetches ``pfd`` words
    ahead of each step's."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, not {isa!r}")
    lanes_n = LANES[isa]
    cols = lanes_n * vb
    name = symbol(isa, rb, vb)
    v = f"<{lanes_n} x i32>"
    lines = [
        *_declares(isa, v, lanes_n),
        f"define void @{name}(ptr noalias %x, ptr noalias %w, ptr noalias %corr, "
        "ptr noalias %out, ptr noalias %dims) {",
        "entry:",
    ]
    for k, d in enumerate(("m", "ldx", "o", "q", "ldw", "ldo", "ldb", "pfd")):
        lines += [f"  %pd{k} = getelementptr i64, ptr %dims, i64 {k}",
                  f"  %{d} = load i64, ptr %pd{k}"]
    lines += [
        f"  %m1 = add i64 %m, {cols - 1}",
        f"  %nmb = udiv i64 %m1, {cols}",
        f"  %o1 = add i64 %o, {rb - 1}",
        f"  %nob = udiv i64 %o1, {rb}",
        "  %olast = sub i64 %o, 1",
        "  %mt = trunc i64 %m to i32",
        *_splat(v, "msplat0", "msplat", "%mt"),
        "  br label %mb_head",
        "mb_head:",
        "  %mb = phi i64 [0, %entry], [%mb_next, %mb_tail]",
        f"  %m0 = mul i64 %mb, {cols}",
        "  %xb = mul i64 %mb, %ldb",
        "  br label %ob_head",
        "ob_head:",
        "  %ob = phi i64 [0, %mb_head], [%ob_next, %ob_tail]",
        f"  %o0 = mul i64 %ob, {rb}",
    ]
    for i in range(rb):
        lines += [f"  %ri{i} = add i64 %o0, {i}",
                  f"  %rc{i} = icmp ult i64 %ri{i}, %o",
                  f"  %r{i} = select i1 %rc{i}, i64 %ri{i}, i64 %olast",
                  f"  %wo{i} = mul i64 %r{i}, %ldw",
                  f"  %wrow{i} = getelementptr i32, ptr %w, i64 %wo{i}"]
    lines += ["  br label %q_loop", "q_loop:",
              "  %qi = phi i64 [0, %ob_head], [%q_next, %q_loop]"]
    for i in range(rb):
        for j in range(vb):
            lines.append(f"  %a{i}_{j} = phi {v} [zeroinitializer, %ob_head], "
                         f"[%n{i}_{j}, %q_loop]")
    lines += ["  %xq = mul i64 %qi, %ldx", "  %xm = add i64 %xq, %xb"]
    if isa == "avx2":  # a software prefetch %pfd words ahead
        lines += ["  %pfo = add i64 %xm, %pfd",
                  "  %pfp = getelementptr i32, ptr %x, i64 %pfo",
                  "  call void @llvm.prefetch.p0(ptr %pfp, i32 0, i32 3, i32 1)"]
    for j in range(vb):
        lines += [f"  %xo{j} = add i64 %xm, {lanes_n * j}",
                  f"  %xp{j} = getelementptr i32, ptr %x, i64 %xo{j}",
                  f"  %xv{j} = load {v}, ptr %xp{j}, align 4"]
        if isa == "avx2":
            lines.append(f"  %xh{j} = bitcast {v} %xv{j} to <16 x i16>")
    for i in range(rb):
        lines += [f"  %wp{i} = getelementptr i32, ptr %wrow{i}, i64 %qi",
                  f"  %ws{i} = load i32, ptr %wp{i}, align 4",
                  *_splat(v, f"wbi{i}", f"wb{i}", f"%ws{i}")]
        if isa == "avx2":
            lines.append(f"  %wh{i} = bitcast {v} %wb{i} to <16 x i16>")
        for j in range(vb):
            lines += _mac(isa, v, i, j)
    lines += ["  %q_next = add i64 %qi, 1",
              "  %q_more = icmp ult i64 %q_next, %q",
              "  br i1 %q_more, label %q_loop, label %store",
              "store:"]
    if isa == "avx512vnni":
        lines += _masked_store(v, lanes_n, rb, vb)
    else:  # a masked store costs a dozen plain ones on AMD: plain stores unless at an edge
        lines += [f"  %mend = add i64 %m0, {cols}",
                  "  %mfull = icmp ule i64 %mend, %m",
                  f"  %oend = add i64 %o0, {rb}",
                  "  %ofull = icmp ule i64 %oend, %o",
                  "  %full = and i1 %mfull, %ofull",
                  "  br i1 %full, label %store_full, label %store_edge",
                  "store_full:"]
        for i in range(rb):
            lines += _row_setup(v, "f", f"%ri{i}", i)
            for j in range(vb):
                lines += [f"  %fs{i}_{j} = add {v} %n{i}_{j}, %fcb{i}",
                          f"  %fmj{i}_{j} = add i64 %m0, {lanes_n * j}",
                          f"  %fop{i}_{j} = getelementptr i32, ptr %forow{i}, i64 %fmj{i}_{j}",
                          f"  store {v} %fs{i}_{j}, ptr %fop{i}_{j}, align 4"]
        lines += ["  br label %ob_tail", "store_edge:", *_masked_store(v, lanes_n, rb, vb)]
    lines += ["  br label %ob_tail",
              "ob_tail:",
              "  %ob_next = add i64 %ob, 1",
              "  %ob_more = icmp ult i64 %ob_next, %nob",
              "  br i1 %ob_more, label %ob_head, label %mb_tail",
              "mb_tail:",
              "  %mb_next = add i64 %mb, 1",
              "  %mb_more = icmp ult i64 %mb_next, %nmb",
              "  br i1 %mb_more, label %mb_head, label %done",
              "done:",
              "  ret void",
              "}"]
    return "\n".join(lines) + "\n"


PANEL_SYMBOL = "igemm_avx2_panels"
_ALL = "<" + ", ".join(["i32 -1"] * 8) + ">"  # every lane


def panels_ir() -> str:
    """LLVM IR of ``igemm_avx2_panels(x, base, off, out, dims)``, dims = (B, Q) as int64: the
    AVX2 kernel's activation panels straight from the padded input words ``x`` (an im2col by
    ``vpgatherdd``), ``out[b, q, j] = x[base[16 b + j] + off[q]]`` for ``b < B, q < Q, j <
    16`` (``base``: int32 word offset of each output position's window, ``off``: of each
    reduction word within a window; ``out`` (B, Q, 16) uint32 words, ``base`` 16 B long)."""
    v = "<8 x i32>"
    lines = [
        f"declare {v} @llvm.x86.avx2.gather.d.d.256({v}, ptr, {v}, {v}, i8 immarg)",
        "define void @igemm_avx2_panels(ptr noalias %x, ptr noalias %base, ptr noalias %off, "
        "ptr noalias %out, ptr noalias %dims) {",
        "entry:",
        "  %nb = load i64, ptr %dims",
        "  %pq = getelementptr i64, ptr %dims, i64 1",
        "  %q = load i64, ptr %pq",
        "  br label %b_head",
        "b_head:",
        "  %b = phi i64 [0, %entry], [%b_next, %b_tail]",
        "  %b16 = mul i64 %b, 16",
        "  %bp0 = getelementptr i32, ptr %base, i64 %b16",
        f"  %i0 = load {v}, ptr %bp0, align 4",
        "  %bp1 = getelementptr i32, ptr %bp0, i64 8",
        f"  %i1 = load {v}, ptr %bp1, align 4",
        "  %row = mul i64 %b16, %q",
        "  %orow = getelementptr i32, ptr %out, i64 %row",
        # a block of 16 consecutive words (one output row, unit stride): plain loads
        "  %first = load i32, ptr %bp0",
        "  %lp = getelementptr i32, ptr %bp0, i64 15",
        "  %last = load i32, ptr %lp",
        "  %span = sub i32 %last, %first",
        "  %runs = icmp eq i32 %span, 15",
        "  %fx = sext i32 %first to i64",
        "  %xrun = getelementptr i32, ptr %x, i64 %fx",
        "  br i1 %runs, label %c_loop, label %q_loop",
        "c_loop:",
        "  %ci = phi i64 [0, %b_head], [%c_next, %c_loop]",
        "  %cop = getelementptr i32, ptr %off, i64 %ci",
        "  %co = load i32, ptr %cop",
        "  %cox = sext i32 %co to i64",
        "  %cp0 = getelementptr i32, ptr %xrun, i64 %cox",
        f"  %c0 = load {v}, ptr %cp0, align 4",
        "  %cp1 = getelementptr i32, ptr %cp0, i64 8",
        f"  %c1 = load {v}, ptr %cp1, align 4",
        "  %cw16 = mul i64 %ci, 16",
        "  %cd0 = getelementptr i32, ptr %orow, i64 %cw16",
        f"  store {v} %c0, ptr %cd0, align 4",
        "  %cd1 = getelementptr i32, ptr %cd0, i64 8",
        f"  store {v} %c1, ptr %cd1, align 4",
        "  %c_next = add i64 %ci, 1",
        "  %c_more = icmp ult i64 %c_next, %q",
        "  br i1 %c_more, label %c_loop, label %b_tail",
        "q_loop:",
        "  %qi = phi i64 [0, %b_head], [%q_next, %q_loop]",
        "  %op = getelementptr i32, ptr %off, i64 %qi",
        "  %o = load i32, ptr %op",
        f"  %os0 = insertelement {v} poison, i32 %o, i32 0",
        f"  %os = shufflevector {v} %os0, {v} poison, {v} zeroinitializer",
        f"  %j0 = add {v} %i0, %os",
        f"  %j1 = add {v} %i1, %os",
        f"  %g0 = call {v} @llvm.x86.avx2.gather.d.d.256({v} zeroinitializer, ptr %x, "
        f"{v} %j0, {v} {_ALL}, i8 4)",
        f"  %g1 = call {v} @llvm.x86.avx2.gather.d.d.256({v} zeroinitializer, ptr %x, "
        f"{v} %j1, {v} {_ALL}, i8 4)",
        "  %w16 = mul i64 %qi, 16",
        "  %dp0 = getelementptr i32, ptr %orow, i64 %w16",
        f"  store {v} %g0, ptr %dp0, align 4",
        "  %dp1 = getelementptr i32, ptr %dp0, i64 8",
        f"  store {v} %g1, ptr %dp1, align 4",
        "  %q_next = add i64 %qi, 1",
        "  %q_more = icmp ult i64 %q_next, %q",
        "  br i1 %q_more, label %q_loop, label %b_tail",
        "b_tail:",
        "  %b_next = add i64 %b, 1",
        "  %b_more = icmp ult i64 %b_next, %nb",
        "  br i1 %b_more, label %b_head, label %done",
        "done:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines) + "\n"
