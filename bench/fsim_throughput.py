"""Functional-simulator throughput on conv-shaped instruction streams.

Builds, for a 3x3 stride-1 convolution layer, the stream a VTA-style schedule produces per
row tile: LOAD the padded input tile (zero border via the LOAD padding fields), LOAD the weight
block, GEMM reset, one GEMM whose micro-ops walk output pixels x input-channel blocks with the
3x3 window as the two loop levels, requantise with ALU (MUL, ADD, SHR, MIN, MAX), STORE. It
checks the result against a numpy integer reference and prints the simulator's MAC rate and its
ratio to the numpy reference's rate, measured in the same run.

    python bench/fsim_throughput.py [--config default] [--channels 64] [--size 56]
"""

from __future__ import annotations

import os

# One core: the figure is the simulator's, not a multi-threaded BLAS's.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from tessera.config import Config  # noqa: E402
from tessera.driver import open_device  # noqa: E402
from tessera.isa import (  # noqa: E402
    AluInsn,
    AluOp,
    FinishInsn,
    GemmInsn,
    MemInsn,
    MemType,
    Opcode,
    Uop,
    to_bytes,
    uops_to_bytes,
)


def conv_stream(cfg: Config, dev, c_in: int, c_out: int, size: int, rows: int, rng):
    """The instruction stream of one conv layer, row tile by row tile (tokens serialise tiles)."""
    blk = cfg.block_in
    cb, ob = c_in // blk, c_out // blk
    h = w = size
    x = rng.integers(-128, 128, (cb, h, w, blk), dtype=np.int8)  # packed (C/B, H, W, B)
    wt = rng.integers(-128, 128, (ob, cb, 3, 3, blk, blk), dtype=np.int8)
    bx, bw = dev.alloc(x.nbytes), dev.alloc(wt.nbytes)
    dev.write(bx.addr, x)
    dev.write(bw.addr, wt)
    out = dev.alloc(ob * h * w * blk)
    pw, npix = w + 2, rows * w
    plane = (rows + 2) * pw
    if (cb * plane > cfg.inp_depth or cb * 9 * ob > cfg.wgt_depth or ob * npix > cfg.acc_depth
            or ob * npix * cb > cfg.uop_depth or h % rows):
        raise SystemExit("layer tile does not fit this config's SRAM; pick other sizes")
    # one micro-op per (output block, pixel, input block); the 3x3 window is the loop nest
    uops = [Uop(dst_idx=o * npix + y * w + xx, src_idx=c * plane + y * pw + xx,
                wgt_idx=(o * cb + c) * 9)
            for o in range(ob) for y in range(rows) for xx in range(w) for c in range(cb)]
    bu = dev.alloc(4 * len(uops))
    dev.write(bu.addr, uops_to_bytes(uops, cfg))
    acc_rows = [Uop(dst_idx=i) for i in range(ob * npix)]
    bu2 = dev.alloc(4 * len(acc_rows))
    dev.write(bu2.addr, uops_to_bytes(acc_rows, cfg))
    nu = len(uops)
    insns = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=bu.addr // 4,
                     y_size=1, x_size=nu, x_stride=nu),
             MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, sram_base=nu,
                     dram_base=bu2.addr // 4, y_size=1, x_size=ob * npix, x_stride=ob * npix),
             MemInsn(opcode=Opcode.LOAD, memory_type=MemType.WGT,
                     dram_base=bw.addr // cfg.wgt_elem_bytes, y_size=1, x_size=ob * cb * 9,
                     x_stride=ob * cb * 9)]
    ebase = bx.addr // cfg.inp_elem_bytes
    for t, r0 in enumerate(range(0, h, rows)):
        top, bot = max(r0 - 1, 0), min(r0 + rows + 1, h)
        loads = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, sram_base=c * plane,
                         dram_base=ebase + (c * h + top) * w, y_size=bot - top, x_size=w,
                         x_stride=w, x_pad_0=1, x_pad_1=1, y_pad_0=top - (r0 - 1),
                         y_pad_1=(r0 + rows + 1) - bot)
                 for c in range(cb)]
        loads[0] = _set(loads[0], pop_next=int(t > 0))
        loads[-1] = _set(loads[-1], push_next=1)
        insns += loads
        insns.append(GemmInsn(reset=1, uop_bgn=nu, uop_end=nu + ob * npix, pop_prev=1,
                              pop_next=int(t > 0)))
        insns.append(GemmInsn(uop_bgn=0, uop_end=nu, iter_out=3, iter_in=3,
                              src_factor_out=pw, src_factor_in=1, wgt_factor_out=3,
                              wgt_factor_in=1))
        for op, imm in ((AluOp.MUL, 3), (AluOp.ADD, 1 << 12), (AluOp.SHR, 13),
                        (AluOp.MIN, 127), (AluOp.MAX, -128)):
            insns.append(AluInsn(uop_bgn=nu, uop_end=nu + ob * npix, alu_opcode=op, use_imm=1,
                                 imm=imm))
        insns[-1] = _set(insns[-1], push_next=1, push_prev=1)
        insns.append(MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT,
                             dram_base=out.addr // cfg.out_elem_bytes + r0 * w, y_size=ob,
                             x_size=npix, x_stride=h * w, pop_prev=1, push_prev=1))
    insns.append(FinishInsn())
    return insns, x, wt, out


def _set(insn, **kw):
    return type(insn)(**{**insn.__dict__, **kw})


def reference(x, wt, rows_unused=None):
    cb, h, w, blk = x.shape
    ob = wt.shape[0]
    xp = np.zeros((cb, h + 2, w + 2, blk), np.float64)
    xp[:, 1:-1, 1:-1] = x
    acc = np.zeros((ob, h, w, blk), np.float64)
    for kh in range(3):
        for kw in range(3):
            patch = xp[:, kh:kh + h, kw:kw + w]  # (cb, h, w, blk)
            # acc[o, y, x, p] += sum_c,k patch[c, y, x, k] * wt[o, c, kh, kw, p, k]
            acc += np.einsum("cyxk,ocpk->oyxp", patch, wt[:, :, kh, kw].astype(np.float64),
                             optimize=True)
    a = acc.astype(np.int64)
    a = ((a * 3).astype(np.int32).astype(np.int64) + (1 << 12)) >> 13
    return np.clip(a, -128, 127).astype(np.int8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()
    cfg = Config.resolve(args.config)
    rng = np.random.default_rng(0)
    dev = open_device("fsim", cfg)
    insns, x, wt, out = conv_stream(cfg, dev, args.channels, args.channels, args.size,
                                    args.rows, rng)
    code = to_bytes(insns, cfg)
    prog = dev.alloc(len(code))
    dev.write(prog.addr, code)
    dev.run(prog.addr, len(insns))  # warm-up (page faults, caches)
    t0 = time.perf_counter()
    stats = dev.run(prog.addr, len(insns))
    t_sim = time.perf_counter() - t0
    macs = stats.counters["gemm_steps"] * cfg.macs_per_gemm_step
    t0 = time.perf_counter()
    want = reference(x, wt)
    t_ref = time.perf_counter() - t0
    got = dev.read_array(out.addr, want.shape, np.int8)
    if not np.array_equal(got, want):
        raise SystemExit("MISMATCH: fsim result differs from the numpy reference")
    print(f"config {args.config}: conv {args.channels}->{args.channels} {args.size}x{args.size} "
          f"3x3, {len(insns)} instructions, {macs / 1e6:.1f} M MACs (result verified)")
    print(f"fsim:            {t_sim * 1e3:8.1f} ms  {macs / t_sim / 1e9:6.2f} GMAC/s")
    print(f"numpy reference: {t_ref * 1e3:8.1f} ms  {macs / t_ref / 1e9:6.2f} GMAC/s")
    print(f"fsim / numpy-reference speed ratio: {t_ref / t_sim:.2f}")


if __name__ == "__main__":
    main()
