"""Seeded random well-synchronised programs, for differential testing (fsim vs RTL vs references).

A program is a number of *rounds*, each a VTA-style load → compute → store pipeline step on one
half of every shared SRAM (two virtual threads), so consecutive rounds overlap when the modules
run concurrently. Tokens make it well synchronised by construction:

- load of round r pops C2L (r >= 2: compute of round r-2 is done with that half) and pushes L2C;
- compute of round r pops L2C, and S2C when r >= 2 (the store of round r-2 has read the out
  half), and pushes C2L and C2S;
- store of round r pops C2S and pushes S2C.

Within that frame everything is random: load shapes, strides and padding, micro-op kernels with
repeated destinations (back-to-back hazards), GEMM with and without reset, every ALU opcode with
immediates and accumulator sources (negative and large shifts, wrapping products), deferred ALU
instructions (spec-notes 16; every GEMM's micro-op LOAD drains them, so they never race), ACC and
ACC_8BIT loads (some reading what a store two rounds earlier wrote, ordered by the S2C token),
and sync-only instructions.

Usage::

    prog = random_program(cfg, np.random.default_rng(seed), rounds=6)
    prog.place(dev)                 # allocate on a fresh device and write inputs + program
    stats = dev.run(prog.insn_addr, prog.insn_count)
    outputs = prog.read_outputs(dev)  # list of bytes, one per output region
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from tessera.config import Config
from tessera.isa import (
    AluInsn,
    AluOp,
    FinishInsn,
    GemmInsn,
    Insn,
    MemInsn,
    MemType,
    Opcode,
    Uop,
    elem_bytes,
    encode_uop,
    to_bytes,
    uops_to_bytes,
)

__all__ = ["Segment", "Program", "random_program", "build_program", "overlap_program"]


@dataclass
class Segment:
    """A block of device memory the program uses: initial bytes and whether it is an output."""

    name: str
    size: int
    data: bytes = b""
    output: bool = False
    addr: int = -1


@dataclass
class Program:
    """Segments plus a program built against their addresses."""

    cfg: Config
    segments: list[Segment]
    insns: list[Insn] = field(default_factory=list)
    insn_addr: int = -1

    @property
    def insn_count(self) -> int:
        return len(self.insns)

    def code(self) -> bytes:
        return to_bytes(self.insns, self.cfg)

    def place(self, dev) -> None:
        """Allocate every segment on ``dev`` at the addresses the program was built for."""
        for seg in self.segments:
            buf = dev.alloc(seg.size)
            if seg.addr >= 0 and buf.addr != seg.addr:
                raise RuntimeError(f"segment {seg.name} landed at {buf.addr:#x}, not "
                                   f"{seg.addr:#x}: place() needs a fresh device")
            seg.addr = buf.addr
            dev.write(buf.addr, seg.data.ljust(seg.size, b"\0"))
        code = self.code()
        buf = dev.alloc(len(code))
        if self.insn_addr >= 0 and buf.addr != self.insn_addr:
            raise RuntimeError("program landed at a different address; use a fresh device")
        self.insn_addr = buf.addr
        dev.write(buf.addr, code)

    def read_outputs(self, dev) -> list[bytes]:
        return [dev.read(s.addr, s.size) for s in self.segments if s.output]

    def memory_image(self) -> dict[int, bytes]:
        """Initial contents by address (segments and program), for reference interpreters."""
        image = {s.addr: s.data.ljust(s.size, b"\0") for s in self.segments}
        image[self.insn_addr] = self.code()
        return image


def _layout_segments(segments: list[Segment], base: int = 4096) -> None:
    """Predict the addresses a fresh device's first-fit page allocator hands out."""
    addr = base
    for seg in segments:
        seg.addr = addr
        addr += -(-seg.size // 4096) * 4096


class _Gen:
    def __init__(self, cfg: Config, rng: np.random.Generator, rounds: int):
        self.cfg, self.rng, self.rounds = cfg, rng, rounds
        c = cfg
        self.half = {MemType.INP: c.inp_depth // 2, MemType.WGT: c.wgt_depth // 2,
                     MemType.ACC: c.acc_depth // 2}
        self.uop_half = c.uop_depth // 2
        self.src_elems = {MemType.INP: 96, MemType.WGT: 48, MemType.ACC: 32,
                          MemType.ACC_8BIT: 32}
        self.out_elems = 64  # per round
        segs = [self._rand_segment("inp", MemType.INP), self._rand_segment("wgt", MemType.WGT),
                self._rand_segment("acc", MemType.ACC), self._rand_segment("acc8",
                                                                            MemType.ACC_8BIT),
                Segment("uop", 4 * 2048)]
        out_bytes = self.out_elems * c.out_elem_bytes
        segs += [Segment(f"out{r}", out_bytes, output=True) for r in range(rounds)]
        self.segments = segs
        self.seg = {s.name: s for s in segs}
        self.uop_words: list[int] = []

    def _rand_segment(self, name: str, mt: MemType) -> Segment:
        n = self.src_elems[mt] * elem_bytes(self.cfg, mt)
        if mt == MemType.ACC:  # keep some values small so SHR/MUL/ADD stay interesting
            vals = self.rng.integers(-(1 << 20), 1 << 20, n // 4, dtype=np.int64)
            big = self.rng.random(n // 4) < 0.2
            vals[big] = self.rng.integers(-(1 << 31), 1 << 31, int(big.sum()))
            return Segment(name, n, vals.astype("<i4").tobytes())
        return Segment(name, n, self.rng.integers(0, 256, n, dtype=np.uint8).tobytes())

    def ebase(self, name: str, mt: MemType) -> int:
        eb = elem_bytes(self.cfg, mt)
        assert self.seg[name].addr % eb == 0
        return self.seg[name].addr // eb

    # -- instruction pieces ---------------------------------------------------------------------

    def set_windows(self, half: int) -> None:
        """Per round, the small SRAM windows (inside the round's half) that it works on, so
        that loads, micro-ops and stores keep hitting the same elements."""
        self.win = {}
        for mt, size in ((MemType.INP, 16), (MemType.WGT, 8), (MemType.ACC, 10)):
            h = self.half[mt]
            width = min(h, size)
            self.win[mt] = (half * h + int(self.rng.integers(0, h - width + 1)), width)

    def window_load(self, mt: MemType) -> MemInsn:
        lo, width = self.win[mt]
        name = "inp" if mt == MemType.INP else "wgt"
        off = int(self.rng.integers(0, self.src_elems[mt] - width + 1))
        return MemInsn(opcode=Opcode.LOAD, memory_type=mt, sram_base=lo,
                       dram_base=self.ebase(name, mt) + off, y_size=1, x_size=width,
                       x_stride=width)

    def rand_load(self, mt: MemType, half: int) -> MemInsn:
        r = self.rng
        lo, depth = self.win[MemType.ACC if mt == MemType.ACC_8BIT else mt]
        src_name = {MemType.INP: "inp", MemType.WGT: "wgt", MemType.ACC: "acc",
                    MemType.ACC_8BIT: "acc8"}[mt]
        nsrc = self.src_elems[mt]
        for _ in range(100):
            ys, xs = int(r.integers(1, 5)), int(r.integers(1, 9))
            pads = [int(r.integers(0, 3)) if r.random() < 0.4 else 0 for _ in range(4)]
            stride = xs + int(r.integers(0, 4))
            span = (pads[0] + ys + pads[1]) * (pads[2] + xs + pads[3])
            if span <= depth and (ys - 1) * stride + xs <= nsrc:
                break
        else:
            ys, xs, pads, stride, span = 1, 1, [0, 0, 0, 0], 1, 1
        sram = lo + int(r.integers(0, depth - span + 1))
        dram_off = int(r.integers(0, nsrc - ((ys - 1) * stride + xs) + 1))
        return MemInsn(opcode=Opcode.LOAD, memory_type=mt, sram_base=sram,
                       dram_base=self.ebase(src_name, mt) + dram_off, y_size=ys, x_size=xs,
                       x_stride=stride, y_pad_0=pads[0], y_pad_1=pads[1], x_pad_0=pads[2],
                       x_pad_1=pads[3])

    def rand_uops(self, n: int, ranges: tuple[tuple[int, int], ...]) -> list[Uop]:
        """``n`` micro-ops with dst/src/wgt drawn from ``ranges``; some repeat the last dst."""
        r = self.rng
        out: list[Uop] = []
        for _ in range(n):
            vals = [int(r.integers(lo, hi)) for lo, hi in ranges]
            if out and r.random() < 0.3:
                vals[0] = out[-1].dst_idx  # back-to-back same accumulator row
            out.append(Uop(*vals))
        return out

    def load_uops(self, uops: list[Uop], half: int, insns: list[Insn]) -> int:
        """Append uops to the DRAM uop segment and a LOAD UOP; return the uop SRAM base."""
        cfg = self.cfg
        sram = half * self.uop_half + int(self.rng.integers(0, self.uop_half - len(uops) + 1))
        first = len(self.uop_words)
        self.uop_words += [encode_uop(u, cfg) for u in uops]
        insns.append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, sram_base=sram,
                             dram_base=self.seg["uop"].addr // 4 + first, y_size=1,
                             x_size=len(uops), x_stride=len(uops)))
        return sram

    def loop(self, span_by_range: list[int]) -> tuple[int, int, list[tuple[int, int]]]:
        """Random iter_out, iter_in and (factor_out, factor_in) per index kind within spans."""
        r = self.rng
        it_out, it_in = int(r.integers(1, 4)), int(r.integers(1, 4))
        facs = []
        for span in span_by_range:
            fo = int(r.integers(0, max(1, span // (2 * it_out)) + 1)) if r.random() < 0.7 else 0
            fi = int(r.integers(0, max(1, span // (2 * it_in)) + 1)) if r.random() < 0.7 else 0
            facs.append((fo, fi))
        return it_out, it_in, facs

    def gemm(self, half: int, insns: list[Insn], reset: bool) -> None:
        r = self.rng
        (ba, ha), (bi, hi_), (bw, hw) = (self.win[m] for m in (MemType.ACC, MemType.INP,
                                                                MemType.WGT))
        it_out, it_in, facs = self.loop([ha, hi_, hw])
        ext = [(it_out - 1) * fo + (it_in - 1) * fi for fo, fi in facs]
        bases = [ba, bi, bw]
        spans = [ha, hi_, hw]
        ranges = []
        for base, span, e in zip(bases, spans, ext):
            if e >= span:
                return self.gemm(half, insns, reset)  # resample the loop
            ranges.append((base, base + span - e))
        uops = self.rand_uops(int(r.integers(1, 7)), tuple(ranges))
        ub = self.load_uops(uops, half, insns)
        insns.append(GemmInsn(reset=int(reset), uop_bgn=ub, uop_end=ub + len(uops),
                              iter_out=it_out, iter_in=it_in,
                              dst_factor_out=facs[0][0], dst_factor_in=facs[0][1],
                              src_factor_out=facs[1][0], src_factor_in=facs[1][1],
                              wgt_factor_out=facs[2][0], wgt_factor_in=facs[2][1]))

    def alu(self, half: int, insns: list[Insn]) -> None:
        r = self.rng
        ba, ha = self.win[MemType.ACC]
        full = self.cfg.acc_depth
        it_out, it_in, facs = self.loop([ha, ha])
        ext_d = (it_out - 1) * facs[0][0] + (it_in - 1) * facs[0][1]
        ext_s = (it_out - 1) * facs[1][0] + (it_in - 1) * facs[1][1]
        if ext_d >= ha or ext_s >= ha:
            return self.alu(half, insns)
        op = AluOp(int(r.integers(0, 5)))
        use_imm = int(r.random() < 0.5)
        if op == AluOp.SHR:
            imm = int(r.choice([0, 1, 3, 7, 15, 31, 40, -1, -3, -31, -40]))
        elif op == AluOp.MUL:
            imm = int(r.integers(-(1 << 15), 1 << 15))
        else:
            imm = int(r.integers(-(1 << 15), 1 << 15))
        # sources may be anywhere in the accumulator (compute-only state), including the
        # destination rows themselves for read-after-write chains
        src_lo, src_hi = ba, ba + ha - ext_s
        uops = self.rand_uops(int(r.integers(1, 7)), ((ba, ba + ha - ext_d), (src_lo, src_hi),
                                                      (0, 1)))
        if self.rng.random() < 0.3 and len(uops) > 1 and uops[0].dst_idx + ext_s < full:
            uops[1] = Uop(uops[1].dst_idx, uops[0].dst_idx, 0)  # step 1 reads step 0's result
        ub = self.load_uops(uops, half, insns)
        insns.append(AluInsn(uop_bgn=ub, uop_end=ub + len(uops), iter_out=it_out, iter_in=it_in,
                             dst_factor_out=facs[0][0], dst_factor_in=facs[0][1],
                             src_factor_out=facs[1][0], src_factor_in=facs[1][1],
                             alu_opcode=op, use_imm=use_imm, imm=imm if use_imm else 0,
                             deferred=int(r.random() < 0.3)))

    def store(self, rnd: int, half: int) -> MemInsn:
        r = self.rng
        ba, ha = self.win[MemType.ACC]
        ys, xs = int(r.integers(1, 4)), int(r.integers(1, 9))
        stride = xs + int(r.integers(0, 3))
        while (ys - 1) * stride + xs > self.out_elems:
            ys -= 1
        while ys * xs > ha:
            xs -= 1
        sram = ba + int(r.integers(0, ha - ys * xs + 1))
        off = int(r.integers(0, self.out_elems - ((ys - 1) * stride + xs) + 1))
        return MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, sram_base=sram,
                       dram_base=self.ebase(f"out{rnd}", MemType.OUT) + off, y_size=ys,
                       x_size=xs, x_stride=stride)

    # -- rounds -----------------------------------------------------------------------------------

    def build(self) -> list[Insn]:
        r = self.rng
        insns: list[Insn] = []
        for rnd in range(self.rounds):
            h = rnd % 2
            self.set_windows(h)
            # load module
            # whole-window loads first, so every SRAM element the round reads is written in
            # this run (results never depend on what earlier runs left behind)
            loads = [self.window_load(MemType.INP), self.window_load(MemType.WGT)]
            loads += [self.rand_load(MemType.INP, h) for _ in range(int(r.integers(1, 3)))]
            loads += [self.rand_load(MemType.WGT, h) for _ in range(int(r.integers(0, 2)))]
            if r.random() < 0.15:
                loads.append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0,
                                     y_size=0))  # sync-only
            loads = _flag(loads, 0, pop_next=int(rnd >= 2))
            insns += _flag(loads, -1, push_next=1)
            # compute module
            comp: list[Insn] = []
            # every out row the round's stores may read is written in this run
            ba, wa = self.win[MemType.ACC]
            ub = self.load_uops([Uop(ba, 0, 0)], h, comp)
            comp.append(GemmInsn(reset=1, uop_bgn=ub, uop_end=ub + 1, iter_out=wa,
                                 dst_factor_out=1))
            if rnd >= 2 and r.random() < 0.4:
                # reload what the store of round rnd-2 wrote (ordered by the S2C pop)
                eb = elem_bytes(self.cfg, MemType.ACC_8BIT)
                assert eb == self.cfg.out_elem_bytes
                xs = int(r.integers(1, 9))
                comp.append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC_8BIT,
                                    sram_base=self.win[MemType.ACC][0],
                                    dram_base=self.ebase(f"out{rnd - 2}", MemType.ACC_8BIT),
                                    y_size=1, x_size=xs, x_stride=xs))
            if r.random() < 0.4:
                mt = MemType.ACC if r.random() < 0.5 else MemType.ACC_8BIT
                comp.append(self.rand_load(mt, h))
            self.gemm(h, comp, reset=r.random() < 0.5)
            for _ in range(int(r.integers(2, 6))):
                kind = r.random()
                if kind < 0.5:
                    self.gemm(h, comp, reset=r.random() < 0.1)
                elif kind < 0.95:
                    self.alu(h, comp)
                else:
                    comp.append(GemmInsn(uop_bgn=0, uop_end=0))  # empty loop: sync only
            comp = _flag(comp, 0, pop_prev=1, pop_next=int(rnd >= 2))
            insns += _flag(comp, -1, push_prev=1, push_next=1)
            # store module
            stores = [self.store(rnd, h) for _ in range(int(r.integers(1, 3)))]
            stores = _flag(stores, 0, pop_prev=1)
            insns += _flag(stores, -1, push_prev=1)
        insns.append(FinishInsn())
        return insns


def _flag(insns: list[Insn], index: int, **flags: int) -> list[Insn]:
    out = list(insns)
    merged = {k: max(v, getattr(out[index], k)) for k, v in flags.items()}
    out[index] = replace(out[index], **merged)
    return out


def random_program(cfg: Config, rng: np.random.Generator, rounds: int = 6) -> Program:
    """A random well-synchronised program of ``rounds`` double-buffered pipeline steps."""
    gen = _Gen(cfg, rng, rounds)
    _layout_segments(gen.segments)
    insns = gen.build()
    gen.seg["uop"].data = uops_to_bytes([], cfg) + b"".join(
        w.to_bytes(4, "little") for w in gen.uop_words)
    if len(gen.seg["uop"].data) > gen.seg["uop"].size:
        raise ValueError(f"rounds={rounds} needs more micro-ops than the uop segment holds")
    prog = Program(cfg, gen.segments, insns)
    end = gen.segments[-1].addr + -(-gen.segments[-1].size // 4096) * 4096
    prog.insn_addr = end
    return prog


def build_program(cfg: Config, segments: list[Segment], insns_of) -> Program:
    """A hand-written program: ``insns_of(seg_by_name)`` returns instructions for the layout."""
    _layout_segments(segments)
    insns = insns_of({s.name: s for s in segments})
    prog = Program(cfg, segments, insns)
    last = segments[-1] if segments else None
    prog.insn_addr = (last.addr + -(-last.size // 4096) * 4096) if last else 4096
    return prog


def overlap_program(cfg: Config, gemm_rows: int, deferred: bool = True, fence: bool = False,
                    steps: int = 50) -> Program:
    """A deferred ALU instruction followed by a GEMM (spec-notes 16), for the ALU engine's tests.

    The ALU adds 5 ``steps`` times to accumulator rows 0..7 (half 0); the GEMM accumulates
    ``steps`` products into rows ``gemm_rows .. gemm_rows+7`` (rows in half 1 overlap legally;
    rows 0..7 or others in half 0 race). ``fence`` puts an empty non-deferred ALU between them.
    Both row ranges are stored to the ``out`` segment.
    """
    n = 8
    half = cfg.acc_depth // 2
    if cfg.acc_depth < 16 or not 0 <= gemm_rows <= cfg.acc_depth - n or half < n:
        raise ValueError(f"overlap_program needs 8 rows in each accumulator half of "
                         f"{cfg.summary()} and gemm_rows in range, not {gemm_rows}")
    rng = np.random.default_rng(3)
    acc0 = rng.integers(-1000, 1000, (2 * n, cfg.batch * cfg.block_out)).astype("<i4")
    segs = [Segment("acc", 2 * n * cfg.acc_elem_bytes, acc0.tobytes()),
            Segment("inp", n * cfg.inp_elem_bytes,
                    rng.integers(0, 256, n * cfg.inp_elem_bytes, dtype=np.uint8).tobytes()),
            Segment("wgt", cfg.wgt_elem_bytes,
                    rng.integers(0, 256, cfg.wgt_elem_bytes, dtype=np.uint8).tobytes()),
            Segment("uop", 4 * 4, (encode_uop(Uop(0, 0, 0), cfg).to_bytes(4, "little")
                                   + encode_uop(Uop(gemm_rows, 0, 0), cfg).to_bytes(4, "little")
                                   + b"\0" * 8)),
            Segment("out", 2 * n * cfg.out_elem_bytes, output=True)]

    def insns(seg):
        def eb(name, mt):
            return seg[name].addr // elem_bytes(cfg, mt)
        acc = eb("acc", MemType.ACC)
        load = Opcode.LOAD
        out = [MemInsn(opcode=load, memory_type=MemType.INP, dram_base=eb("inp", MemType.INP),
                       y_size=1, x_size=n, x_stride=n),
               MemInsn(opcode=load, memory_type=MemType.WGT, dram_base=eb("wgt", MemType.WGT),
                       y_size=1, x_size=1, x_stride=1, push_next=1),
               MemInsn(opcode=load, memory_type=MemType.UOP, dram_base=eb("uop", MemType.UOP),
                       y_size=1, x_size=2, x_stride=2, pop_prev=1),
               MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC, dram_base=acc,
                       y_size=1, x_size=n, x_stride=n),
               MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC, sram_base=gemm_rows,
                       dram_base=acc + n, y_size=1, x_size=n, x_stride=n),
               AluInsn(uop_bgn=0, uop_end=1, iter_out=steps, iter_in=n, dst_factor_in=1,
                       alu_opcode=AluOp.ADD, use_imm=1, imm=5, deferred=int(deferred))]
        if fence:
            out.append(AluInsn(uop_bgn=0, uop_end=0))
        out += [GemmInsn(uop_bgn=1, uop_end=2, iter_out=steps, iter_in=n, dst_factor_in=1,
                         src_factor_in=1),
                AluInsn(uop_bgn=0, uop_end=0, push_next=1),  # a fence carrying the C2S push
                MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, sram_base=0,
                        dram_base=eb("out", MemType.OUT), y_size=1, x_size=n, x_stride=n,
                        pop_prev=1),
                MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, sram_base=gemm_rows,
                        dram_base=eb("out", MemType.OUT) + n, y_size=1, x_size=n,
                        x_stride=n),
                FinishInsn()]
        return out

    return build_program(cfg, segs, insns)
