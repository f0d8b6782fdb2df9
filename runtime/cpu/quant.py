"""Quantised-inference CPU kernels, bit-exact with :mod:`tessera.runtime.accel.epilogue`.

- Requant: int32 (or int8) -> int8 through a list of accelerator ALU steps (SPEC §4), exactly
  like :func:`reference.apply_epilogue`: every step works on int32 lanes, ADD and MUL wrap mod
  2**32, SHR by ``b`` is an arithmetic right shift for ``b >= 0`` and a (wrapping) left shift by
  ``-b`` otherwise, ``b`` clamped to [-31, 31]; the result is truncated to int8. Operands are
  int32 immediates or per-channel vectors (along ``channel_axis``). An optional int8 residual
  input is sign-extended and run through the ``"residual"`` steps; a ``"combine"`` step adds it
  to the main value. Build the attributes from an :class:`~reference.Epilogue` with
  :func:`requant_attrs`;
- Dense: ``y = x @ w.T (+ b)`` for x [N, K], w [M, K]; float32, or int8 x int8 -> int32
  (wrapping, optional int32 bias);
- SumPool: int8 NCHW window sums -> int32 (pads add nothing), the accumulator of ``qavgpool``;
  with ``divide=1`` the int8 window average truncated toward zero, like the reference's
  ``(sum / count).astype(int8)``;
- Quantize: float32 -> int8, ``clip(round_half_even(x / scale) + zero_point, lo, hi)`` (NaN ->
  0, as the reference's cast gives); Dequantize: int8/int32 -> float32,
  ``float32(x - zero_point) * scale``. ``scale`` and ``zero_point`` are numbers, or lists along
  ``axis`` (per-axis, as ONNX QuantizeLinear/DequantizeLinear).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    FAST,
    I8,
    I32,
    I64,
    KernelBuilder,
    Spec,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    fail,
    int_attr,
    ints_attr,
    norm_axis,
    size,
    spatial_params,
    window_taps,
)

__all__ = ["GENERATORS", "ALU_OPCODES", "BRANCHES", "requant_attrs"]

ALU_OPCODES = ("MIN", "MAX", "ADD", "MUL", "SHR")
BRANCHES = ("main", "residual", "combine")
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def requant_attrs(epilogue: Any, channel_axis: int = 1) -> dict[str, Any]:
    """Requant attributes (JSON-able) running ``epilogue.alu_steps()`` of a
    :class:`~tessera.runtime.accel.epilogue.Epilogue`; vector operands become int lists."""
    steps = []
    for st in epilogue.alu_steps():
        operand = st.operand
        if isinstance(operand, np.ndarray):
            operand = [int(v) for v in operand.reshape(-1)]
        else:
            operand = int(operand)
        steps.append([st.opcode, operand, st.branch])
    return {"steps": steps, "channel_axis": int(channel_axis)}


def _int32(op: str, v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise fail(op, f"{what} must be an integer, not {v!r}")
    if not _I32_MIN <= int(v) <= _I32_MAX:
        raise fail(op, f"{what} must fit int32, not {v}")
    return int(v)


def _parse_steps(op: str, attrs: dict[str, Any],
                 channels: int | None) -> list[tuple[str, int | list[int], str]]:
    raw = attrs.get("steps")
    if not isinstance(raw, (list, tuple)):
        raise fail(op, f"attribute steps must be a list of [opcode, operand, branch], "
                       f"not {raw!r}")
    steps = []
    for k, item in enumerate(raw):
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
            raise fail(op, f"steps[{k}] must be [opcode, operand, branch], not {item!r}")
        opcode, operand = item[0], item[1]
        branch = item[2] if len(item) == 3 else "main"
        if opcode not in ALU_OPCODES:
            raise fail(op, f"steps[{k}] opcode must be one of {', '.join(ALU_OPCODES)}, "
                           f"not {opcode!r}")
        if branch not in BRANCHES:
            raise fail(op, f"steps[{k}] branch must be one of {', '.join(BRANCHES)}, "
                           f"not {branch!r}")
        if isinstance(operand, (list, tuple, np.ndarray)):
            vec = [_int32(op, v, f"steps[{k}] operand element") for v in np.asarray(
                operand).reshape(-1).tolist()]
            if len(vec) == 1:
                operand = vec[0]
            else:
                check(channels is not None and len(vec) == channels, op,
                      f"steps[{k}] has a vector of {len(vec)} operands but the channel axis "
                      f"has {channels} entries")
                operand = vec
        else:
            operand = _int32(op, operand, f"steps[{k}] operand")
        steps.append((opcode, operand, branch))
    return steps


def _requant(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("steps", "channel_axis"))
    check_inputs(op, in_specs, (1, 2))
    dt = check_dtype(op, "input", in_specs[0], ("int8", "int32"))
    shape = in_specs[0][0]
    rank = len(shape)
    axis = int_attr(op, attrs, "channel_axis", 1)
    channels = None
    if rank:
        axis = norm_axis(op, axis, rank, "channel_axis")
        channels = shape[axis]
    steps = _parse_steps(op, attrs, channels)
    has_res = len(in_specs) == 2
    if has_res:
        check_dtype(op, "residual", in_specs[1], ("int8",))
        check(in_specs[1][0] == shape, op,
              f"residual must have the input's shape {shape}, not {in_specs[1][0]}")
    uses_res = any(br != "main" for _, _, br in steps)
    check(has_res or not uses_res, op, "steps use a residual branch but no residual is given")
    vector = any(isinstance(v, list) for _, v, _ in steps)
    if vector:
        outer, inner = size(shape[:axis]), size(shape[axis + 1:])
    else:
        outer, channels, inner = 1, 1, size(shape)
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_requant_{dt}", len(in_specs), 1)
    b = kb.b
    zero = ir.Constant(I32, 0)
    tables = {k: kb.table(v, I32) for k, (_, v, _) in enumerate(steps) if isinstance(v, list)}

    def alu(opcode: str, a: ir.Value, v: ir.Value | int) -> ir.Value:
        if opcode == "SHR":
            if isinstance(v, int):
                s = max(-31, min(31, v))
                if s >= 0:
                    return b.ashr(a, ir.Constant(I32, s)) if s else a
                return b.shl(a, ir.Constant(I32, -s))
            s = kb.smin(kb.smax(v, ir.Constant(I32, -31)), ir.Constant(I32, 31))
            right = b.ashr(a, kb.smax(s, zero))
            left = b.shl(a, kb.smax(b.sub(zero, s), zero))
            return b.select(b.icmp_signed(">=", s, zero), right, left)
        c = ir.Constant(I32, v) if isinstance(v, int) else v
        if opcode == "ADD":
            return b.add(a, c)
        if opcode == "MUL":
            return b.mul(a, c)
        if opcode == "MIN":
            return kb.smin(a, c)
        return kb.smax(a, c)

    if size(shape):
        with kb.loop(0, outer, name="o") as o, kb.loop(0, channels, name="c") as c:
            operands: dict[int, ir.Value] = {k: kb.load(t, I32, c) for k, t in tables.items()}
            base = kb.index([(o, channels * inner), (c, inner)])
            with kb.loop(0, inner, name="i") as i:
                idx = b.add(base, i, flags=("nsw",))
                v = kb.load(kb.ins[0], ty, idx)
                v = b.sext(v, I32) if dt == "int8" else v
                u = b.sext(kb.load(kb.ins[1], I8, idx), I32) if uses_res else None
                for k, (opcode, operand, branch) in enumerate(steps):
                    arg = operands.get(k, operand)
                    if branch == "residual":
                        u = alu(opcode, u, arg)
                    elif branch == "combine":
                        v = b.add(v, u)
                    else:
                        v = alu(opcode, v, arg)
                kb.store(b.trunc(v, I8), kb.outs[0], I8, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("int8"))]


def _dense(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    """``y = x @ w.T (+ b)``: float32, or int8 operands accumulated in wrapping int32."""
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (2, 3))
    dt = check_dtype(op, "x", in_specs[0], ("float32", "int8"))
    check(in_specs[1][1].name == dt, op,
          f"w must have the dtype of x ({dt}), not {in_specs[1][1].name}")
    (xs, _), (ws, _) = in_specs[0], in_specs[1]
    check(len(xs) == 2 and len(ws) == 2 and xs[1] == ws[1], op,
          f"needs x [N, K] and w [M, K], not {xs} and {ws}")
    n, k_dim = xs
    m = ws[0]
    acc_dt = "float32" if dt == "float32" else "int32"
    if len(in_specs) == 3:
        check_dtype(op, "b", in_specs[2], (acc_dt,))
        check(in_specs[2][0] == (m,), op, f"b must have shape ({m},), not {in_specs[2][0]}")
    ty, acc_ty = DTYPES[dt], DTYPES[acc_dt]
    kb = KernelBuilder(f"tsr_dense_{dt}", len(in_specs), 1)
    b = kb.b
    x, w, y = kb.ins[0], kb.ins[1], kb.outs[0]
    slot = kb.alloca(acc_ty, 1)
    with kb.loop(0, n, name="n") as ni, kb.loop(0, m, name="m") as mi:
        init = kb.load(kb.ins[2], acc_ty, mi) if len(in_specs) == 3 else kb.const(acc_ty, 0)
        b.store(kb.const(acc_ty, 0), slot)
        xrow, wrow = kb.index([(ni, k_dim)]), kb.index([(mi, k_dim)])
        with kb.loop(0, k_dim, name="k") as k:
            xv = kb.load(x, ty, b.add(xrow, k, flags=("nsw",)))
            wv = kb.load(w, ty, b.add(wrow, k, flags=("nsw",)))
            acc = b.load(slot, typ=acc_ty)
            if dt == "int8":
                acc = b.add(acc, b.mul(b.sext(xv, I32), b.sext(wv, I32)))
            else:
                acc = b.fadd(acc, b.fmul(xv, wv, flags=FAST), flags=FAST)
            b.store(acc, slot)
        acc = b.load(slot, typ=acc_ty)
        acc = b.add(acc, init) if dt == "int8" else b.fadd(acc, init)
        kb.store(acc, y, acc_ty, kb.index([(ni, m), (mi, 1)]))
    return kb.finish(), kb.name, [((n, m), np.dtype(acc_dt))]


def _sum_pool(op: str, attrs: dict[str, Any],
              in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad",
                            "divide"))
    check_inputs(op, in_specs, (1,))
    check_dtype(op, "input", in_specs[0], ("int8",))
    shape = in_specs[0][0]
    check(len(shape) == 4 and size(shape) > 0, op,
          f"input must be a non-empty 4-D NCHW tensor, not shape {shape}")
    n, c, h, w = shape
    kernel = ints_attr(op, attrs, "kernel_shape", 2)
    divide = int_attr(op, attrs, "divide", 0)
    include_pad = int_attr(op, attrs, "count_include_pad", 0)
    check(divide in (0, 1), op, f"divide must be 0 or 1, not {divide}")
    check(include_pad in (0, 1), op, f"count_include_pad must be 0 or 1, not {include_pad}")
    p = spatial_params(op, attrs, (h, w), kernel, allow_ceil=True)
    oh, ow = p["out"]
    check(oh > 0 and ow > 0, op, f"output would be empty ({oh}x{ow})")
    (sh, sw), (pt, pl), (pb, pr) = p["strides"], p["pad_begin"], p["pad_end"]
    hlo, hhi, hpad = window_taps(h, oh, kernel[0], sh, 1, pt, pb)
    wlo, whi, wpad = window_taps(w, ow, kernel[1], sw, 1, pl, pr)
    kb = KernelBuilder(f"tsr_sumpool_{'avg' if divide else 'sum'}", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    t_hlo, t_hhi, t_wlo, t_whi = (kb.table(t) for t in (hlo, hhi, wlo, whi))
    if include_pad:
        hc, wc = hpad, wpad
    else:
        hc = [hi - lo for lo, hi in zip(hlo, hhi, strict=True)]
        wc = [hi - lo for lo, hi in zip(wlo, whi, strict=True)]
    t_hc, t_wc = kb.table([max(v, 1) for v in hc], I32), kb.table([max(v, 1) for v in wc], I32)
    slot = kb.alloca(I32, 1)
    with kb.loop(0, n * c, name="nc") as nc, kb.loop(0, oh, name="oh") as yo, \
            kb.loop(0, ow, name="ow") as xo:
        b.store(ir.Constant(I32, 0), slot)
        with kb.loop(kb.load(t_hlo, I64, yo), kb.load(t_hhi, I64, yo), name="th") as th:
            row = kb.index([(nc, h * w), (yo, sh * w), (th, w)], base=-pt * w - pl)
            with kb.loop(kb.load(t_wlo, I64, xo), kb.load(t_whi, I64, xo), name="tw") as tw:
                v = kb.load(x, I8, kb.index([(row, 1), (xo, sw), (tw, 1)]))
                b.store(b.add(b.load(slot, typ=I32), b.sext(v, I32)), slot)
        acc = b.load(slot, typ=I32)
        out = kb.index([(nc, oh * ow), (yo, ow), (xo, 1)])
        if divide:
            count = b.mul(kb.load(t_hc, I32, yo), kb.load(t_wc, I32, xo))
            kb.store(b.trunc(b.sdiv(acc, count), I8), y, I8, out)
        else:
            kb.store(acc, y, I32, out)
    return kb.finish(), kb.name, [((n, c, oh, ow), np.dtype("int8" if divide else "int32"))]


def _axis_params(op: str, attrs: dict[str, Any], shape: tuple[int, ...]
                 ) -> tuple[list[float], list[int], int]:
    """``scale`` / ``zero_point`` as per-channel lists along ``axis`` (one entry each when
    per-tensor): (scales, zero points, channels)."""
    raw_s, raw_z = attrs.get("scale", 1.0), attrs.get("zero_point", 0)
    scales = [float(np.float32(v)) for v in np.asarray(raw_s, dtype=np.float64).reshape(-1)] \
        if not isinstance(raw_s, (bool, str)) else []
    zps_arr = np.asarray(raw_z).reshape(-1)
    check(len(scales) > 0, op, f"scale must be a number or a non-empty list, not {raw_s!r}")
    check(np.issubdtype(zps_arr.dtype, np.integer) and zps_arr.size > 0, op,
          f"zero_point must be an integer or a list of integers, not {raw_z!r}")
    zps = [int(v) for v in zps_arr]
    for v in scales:
        check(np.isfinite(v) and v != 0, op, f"scale must be finite and non-zero, not {v}")
    for v in zps:
        check(-128 <= v <= 127, op, f"zero_point must be in [-128, 127], not {v}")
    n = max(len(scales), len(zps))
    if n == 1:
        return scales, zps, 1
    check(len(shape) > 0, op, "per-axis parameters need a tensor of rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", 1), len(shape), "axis")
    check(len(scales) in (1, shape[axis]) and len(zps) in (1, shape[axis]), op,
          f"per-axis scale ({len(scales)}) and zero_point ({len(zps)}) must have "
          f"{shape[axis]} entries (the size of axis {axis})")
    c = shape[axis]
    return (scales * c if len(scales) == 1 else scales), (zps * c if len(zps) == 1 else zps), c


def _quantize(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    quant = op == "Quantize"
    check_attrs(op, attrs, ("scale", "zero_point", "axis", "lo", "hi") if quant
                else ("scale", "zero_point", "axis"))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], ("float32",) if quant else ("int8", "int32"))
    shape = in_specs[0][0]
    scales, zps, channels = _axis_params(op, attrs, shape)
    axis = norm_axis(op, int_attr(op, attrs, "axis", 1), len(shape), "axis") \
        if channels > 1 else 0
    outer, inner = (size(shape[:axis]), size(shape[axis + 1:])) if channels > 1 \
        else (1, size(shape))
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    b = kb.b
    t_s = kb.table([int(np.float32(v).view(np.int32)) for v in scales], I32)
    t_z = kb.table(zps, I32)
    if quant:
        lo, hi = int_attr(op, attrs, "lo", -128), int_attr(op, attrs, "hi", 127)
        check(-128 <= lo <= hi <= 127, op, f"need -128 <= lo <= hi <= 127, not [{lo}, {hi}]")
    in_ty, out_ty = (F32, I8) if quant else (DTYPES[dt], F32)
    if size(shape):
        with kb.loop(0, outer, name="o") as o, kb.loop(0, channels, name="c") as c:
            scale = b.bitcast(kb.load(t_s, I32, c), F32)
            zp = kb.load(t_z, I32, c)
            base = kb.index([(o, channels * inner), (c, inner)])
            with kb.loop(0, inner, name="i") as i:
                idx = b.add(base, i, flags=("nsw",))
                v = kb.load(kb.ins[0], in_ty, idx)
                if quant:
                    r = kb.call1("llvm.roundeven", b.fdiv(v, scale))
                    r = b.fadd(r, b.sitofp(zp, F32))
                    q = kb.fmin(kb.fmax(r, kb.fconst(lo)), kb.fconst(hi))
                    nan = b.fcmp_unordered("uno", r, r)
                    y = b.select(nan, ir.Constant(I8, 0), b.fptosi(q, I8))
                else:
                    w = b.sext(v, I32) if dt == "int8" else v
                    y = b.fmul(b.sitofp(b.sub(w, zp), F32), scale)
                kb.store(y, kb.outs[0], out_ty, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("int8" if quant else "float32"))]


def _recenter(op: str, attrs: dict[str, Any], in_specs: list[Spec]
              ) -> tuple[str, str, list[Spec]]:
    """int8 <-> uint8 carrier: ``x + 128`` to uint8, ``x - 128`` to int8 (the top bit flips)."""
    check_attrs(op, attrs, ("to",))
    check_inputs(op, in_specs, (1,))
    to = attrs.get("to")
    check(to in ("int8", "uint8"), op, f"attribute to must be 'int8' or 'uint8', not {to!r}")
    src = check_dtype(op, "input", in_specs[0], ("uint8",) if to == "int8" else ("int8",))
    shape = in_specs[0][0]
    kb = KernelBuilder(f"tsr_recenter_{src}", 1, 1)
    b = kb.b
    with kb.nest((size(shape),)) as (i,):
        v = kb.load(kb.ins[0], I8, i)
        kb.store(b.xor(v, ir.Constant(I8, 0x80)), kb.outs[0], I8, i)
    return kb.finish(), kb.name, [(shape, np.dtype(to))]


GENERATORS = {
    "Recenter": _recenter,
    "Requant": _requant,
    "Dense": _dense,
    "SumPool": _sum_pool,
    "Quantize": _quantize,
    "Dequantize": _quantize,
}
