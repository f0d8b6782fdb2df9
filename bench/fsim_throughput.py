"""Functional-simulator throughput: the whole ResNet-18 and one conv stream, beside numpy.

Everything is measured in one run and printed side by side, for each BLAS thread count asked
for (each in its own process, since OpenBLAS reads its thread count at import; the simulator is
opened with ``blas_threads`` set to the same count — its default is 1). On a shared machine
wall time includes waiting for a core; the CPU seconds of the process (in brackets) show what
the same work costs on an idle one.

* **ResNet-18 224x224** (``tessera.compiler.zoo``, compiled with the public ``tessera.compile``
  on ``--config``): accelerator MACs per second of ``model.run(device="fsim")`` wall time — the
  first run on a fresh device (cold caches) and the best of ``--runs`` steady-state runs (race
  checking is always on in fsim). References in the same process: the network's 20 convolutions
  and its FC layer as plain numpy im2col matrix products on random int8 data of the same shapes,
  (a) in exact int32 (``np.matmul`` on int32: what the simulator must compute), and (b) in
  float32 BLAS (a speed ceiling for any numpy formulation; not exact in general). Unless
  ``--no-verify``, the fast simulator's outputs and every allocated DRAM byte are compared with
  its plain SPEC loop nests (``fast=False``) on the same input (the fast device having run
  another input first, so that its memos are replayed on new data).
* **Single conv stream**: the stream a VTA-style schedule produces for one 3x3 conv layer (row
  tiles: LOAD padded input tile and weights, GEMM reset, one GEMM whose micro-ops walk pixels x
  input-channel blocks with the 3x3 window as the loop nest, ALU requantisation, STORE), checked
  against a numpy integer reference, whose time is printed beside it.

    python bench/fsim_throughput.py [--threads 1,2] [--runs 5] [--config default] [--no-verify]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="BLAS thread counts, comma-separated")
    ap.add_argument("--runs", type=int, default=5, help="steady-state ResNet-18 runs")
    ap.add_argument("--config", default="default")
    ap.add_argument("--no-verify", action="store_true", help="skip the plain-path comparison")
    ap.add_argument("--channels", type=int, default=64, help="conv stream channels")
    ap.add_argument("--size", type=int, default=56, help="conv stream image size")
    ap.add_argument("--rows", type=int, default=4, help="conv stream rows per tile")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _measure(args)
        return
    counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--threads must list positive integers, not {args.threads!r}")
    for n in counts:
        env = dict(os.environ, **{v: str(n) for v in _THREAD_VARS})
        cmd = [sys.executable, __file__, "--child", "--threads", str(n), "--runs",
               str(args.runs), "--config", args.config, "--channels", str(args.channels),
               "--size", str(args.size), "--rows", str(args.rows)]
        if args.no_verify:
            cmd.append("--no-verify")
        sys.stdout.flush()
        done = subprocess.run(cmd, env=env, check=False)
        if done.returncode:
            raise SystemExit(done.returncode)


def _measure(args) -> None:
    import numpy as np

    print(f"== BLAS threads: {os.environ.get('OPENBLAS_NUM_THREADS', '?')}  (config "
          f"{args.config}; wall seconds, CPU seconds of this process in brackets)")
    _resnet18(args, np)
    _conv_stream_figure(args, np)
    print()


# -- ResNet-18 ---------------------------------------------------------------------------------


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _resnet18(args, np) -> None:
    import tessera
    from tessera.compiler import zoo
    from tessera.driver import open_device

    proto = zoo.resnet18()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config=args.config, calibration=cal)
    threads = int(os.environ["OPENBLAS_NUM_THREADS"])
    dev = open_device("fsim", model.config, blas_threads=threads)
    (outs, prof), wall, cpu = _timed(lambda: model.run(x, device=dev, profile=True))
    macs = prof.totals()["accel_macs"]
    print(f"ResNet-18 224x224: {macs / 1e9:.3f} G accelerator MACs per inference")
    print(f"  fsim, first run (cold):         {wall:7.3f} s [{cpu:6.3f}]  "
          f"{macs / wall / 1e9:6.2f} GMAC/s")
    best = None
    for _ in range(args.runs):
        _, wall, cpu = _timed(lambda: model.run(x, device=dev))
        best = (wall, cpu) if best is None or wall < best[0] else best
    wall, cpu = best
    print(f"  fsim, steady state (best of {args.runs}): {wall:7.3f} s [{cpu:6.3f}]  "
          f"{macs / wall / 1e9:6.2f} GMAC/s   <- the figure (per CPU second: "
          f"{macs / cpu / 1e9:.2f})")
    layers = _layer_shapes(proto)
    ref_macs = sum(_layer_macs(s) for s in layers)
    for kind in ("int32", "float32"):
        t_ref, c_ref = _numpy_reference(layers, kind, np)
        label = ("numpy int32 im2col matmul (exact)" if kind == "int32"
                 else "numpy float32 BLAS im2col (ceiling)")
        print(f"  {label:<35s} {t_ref:7.3f} s [{c_ref:6.3f}]  "
              f"{ref_macs / t_ref / 1e9:6.2f} GMAC/s ({ref_macs / 1e9:.3f} G MACs); "
              f"fsim / reference speed: {t_ref / wall:5.2f}")
    if not args.no_verify:
        plain = open_device("fsim", model.config, fast=False)
        fast = open_device("fsim", model.config)
        # the fast device first runs another input, so its run of x replays every memo (plans,
        # load descriptors, DMA checks) on new data, as the steady-state runs above do
        other = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        (want, _first, got), wall_p, _ = _timed(lambda: (
            model.run(x, device=plain), model.run(other, device=fast), model.run(x, device=fast)))
        same = all(np.array_equal(a, b) for a, b in zip(got, want))
        same_dram = [b.addr for b in fast.allocator.blocks()] == [
            b.addr for b in plain.allocator.blocks()] and all(
            fast.read(b.addr, b.size) == plain.read(b.addr, b.size)
            for b in fast.allocator.blocks())
        print(f"  verified against the plain loop nests (fast=False, {wall_p:.1f} s; fast device "
              f"warmed on another input first): outputs "
              f"{'identical' if same else 'DIFFER'}, device DRAM "
              f"{'identical' if same_dram else 'DIFFERS'}")
        if not (same and same_dram):
            raise SystemExit("MISMATCH: fast and plain fsim paths differ on ResNet-18")
    model.close()


def _layer_shapes(proto) -> list[tuple]:
    """(N, C, H, W, O, kh, kw, stride_h, stride_w, pads) of every Conv and the FC (as 1x1)."""
    import onnx
    from onnx import helper, shape_inference

    g = shape_inference.infer_shapes(proto).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.input)}
    init = {i.name: list(i.dims) for i in g.initializer}
    out = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            if attrs.get("group", 1) != 1:
                raise SystemExit(f"grouped conv {node.name!r} is not handled by this reference")
            n, c, h, w = dims[node.input[0]]
            o, _, kh, kw = init[node.input[1]]
            sh, sw = attrs.get("strides", [1, 1])
            out.append((n, c, h, w, o, kh, kw, sh, sw, tuple(attrs.get("pads", [0, 0, 0, 0]))))
        elif node.op_type == "Gemm":
            n, c = dims[node.input[0]]
            o = init[node.input[1]][0 if attrs.get("transB", 0) else 1]
            out.append((n, c, 1, 1, o, 1, 1, 1, 1, (0, 0, 0, 0)))
        elif node.op_type in ("MatMul", "ConvTranspose"):
            raise SystemExit(f"{node.op_type} {node.name!r} is not handled by this reference")
    assert onnx is not None
    return out


def _layer_macs(s) -> int:
    n, c, h, w, o, kh, kw, sh, sw, p = s
    ho, wo = (h + p[0] + p[2] - kh) // sh + 1, (w + p[1] + p[3] - kw) // sw + 1
    return n * ho * wo * o * c * kh * kw


def _numpy_reference(layers, kind: str, np) -> tuple[float, float]:
    """Wall and CPU seconds of every layer as im2col + one matrix product in ``kind``."""
    rng = np.random.default_rng(1)
    dt = np.int32 if kind == "int32" else np.float32
    data = [(rng.integers(-128, 128, (s[0], s[1], s[2], s[3]), dtype=np.int8),
             rng.integers(-128, 128, (s[4], s[1] * s[5] * s[6]), dtype=np.int8).astype(dt).T)
            for s in layers]
    t0, c0 = time.perf_counter(), time.process_time()
    for s, (x, wt) in zip(layers, data):
        n, c, h, w, o, kh, kw, sh, sw, p = s
        xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, ::sh, ::sw]  # (N, C, Ho, Wo, kh, kw)
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw).astype(dt)
        cols @ wt
    return time.perf_counter() - t0, time.process_time() - c0


# -- one conv stream ---------------------------------------------------------------------------


def conv_stream(cfg, dev, c_in: int, c_out: int, size: int, rows: int, rng):
    """The instruction stream of one conv layer, row tile by row tile (tokens serialise tiles)."""
    import numpy as np

    from tessera.isa import (
        AluInsn,
        AluOp,
        FinishInsn,
        GemmInsn,
        MemInsn,
        MemType,
        Opcode,
        Uop,
        uops_to_bytes,
    )

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


def reference(x, wt):
    """The conv stream's result in numpy (float64 einsum: exact for these sizes)."""
    import numpy as np

    cb, h, w, blk = x.shape
    ob = wt.shape[0]
    xp = np.zeros((cb, h + 2, w + 2, blk), np.float64)
    xp[:, 1:-1, 1:-1] = x
    acc = np.zeros((ob, h, w, blk), np.float64)
    for kh in range(3):
        for kw in range(3):
            patch = xp[:, kh:kh + h, kw:kw + w]  # (cb, h, w, blk)
            acc += np.einsum("cyxk,ocpk->oyxp", patch, wt[:, :, kh, kw].astype(np.float64),
                             optimize=True)
    a = acc.astype(np.int64)
    a = ((a * 3).astype(np.int32).astype(np.int64) + (1 << 12)) >> 13
    return np.clip(a, -128, 127).astype(np.int8)


def _conv_stream_figure(args, np) -> None:
    from tessera.config import Config
    from tessera.driver import open_device
    from tessera.isa import to_bytes

    cfg = Config.resolve(args.config)
    rng = np.random.default_rng(0)
    dev = open_device("fsim", cfg, blas_threads=int(os.environ["OPENBLAS_NUM_THREADS"]))
    insns, x, wt, out = conv_stream(cfg, dev, args.channels, args.channels, args.size,
                                    args.rows, rng)
    code = to_bytes(insns, cfg)
    prog = dev.alloc(len(code))
    dev.write(prog.addr, code)
    dev.run(prog.addr, len(insns))  # warm-up (page faults, caches)
    stats, t_sim, c_sim = _timed(lambda: dev.run(prog.addr, len(insns)))
    macs = stats.counters["gemm_steps"] * cfg.macs_per_gemm_step
    want, t_ref, c_ref = _timed(lambda: reference(x, wt))
    got = dev.read_array(out.addr, want.shape, np.int8)
    if not np.array_equal(got, want):
        raise SystemExit("MISMATCH: fsim result differs from the numpy reference")
    print(f"conv stream {args.channels}->{args.channels} {args.size}x{args.size} 3x3: "
          f"{len(insns)} instructions, {macs / 1e6:.1f} M MACs (result verified)")
    print(f"  fsim:                           {t_sim:7.3f} s [{c_sim:6.3f}]  "
          f"{macs / t_sim / 1e9:6.2f} GMAC/s")
    print(f"  numpy einsum reference:         {t_ref:7.3f} s [{c_ref:6.3f}]  "
          f"{macs / t_ref / 1e9:6.2f} GMAC/s; fsim / reference speed: {t_ref / t_sim:5.2f}")


if __name__ == "__main__":
    main()
