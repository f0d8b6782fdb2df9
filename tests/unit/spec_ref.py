"""An independent, deliberately plain interpreter of SPEC.md §3–4, for differential tests.

It executes a well-synchronised program in program order (which SPEC §5 says gives the defined
result), one micro-op step at a time with Python integers, decoding every field with its own
bit arithmetic from the SPEC tables rather than through ``tessera.isa``.
"""

from __future__ import annotations

import numpy as np


def _bits(word: int, lo: int, width: int) -> int:
    return (word >> lo) & ((1 << width) - 1)


def _wrap32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def _s8(v: int) -> int:
    v &= 0xFF
    return v - 256 if v >> 7 else v


class SpecRef:
    def __init__(self, cfg):
        self.b, self.blk = 1 << cfg.log_batch, 1 << cfg.log_block
        b, n = self.b, self.blk
        self.eb = {0: 4, 1: n * n, 2: b * n, 3: 4 * b * n, 4: b * n, 5: b * n}
        self.depth = {
            "uop": (1 << cfg.log_uop_buff_size) // 4,
            "inp": (1 << cfg.log_inp_buff_size) // (b * n),
            "wgt": (1 << cfg.log_wgt_buff_size) // (n * n),
            "acc": (1 << cfg.log_acc_buff_size) // (4 * b * n),
        }
        lg = {k: v.bit_length() - 1 for k, v in self.depth.items()}
        self.lg = lg
        self.uop = [0] * self.depth["uop"]
        self.inp = [[0] * (b * n) for _ in range(self.depth["inp"])]
        self.wgt = [[0] * (n * n) for _ in range(self.depth["wgt"])]
        self.acc = [[0] * (b * n) for _ in range(self.depth["acc"])]
        self.out = [[0] * (b * n) for _ in range(self.depth["acc"])]

    def run(self, mem: bytearray, insn_addr: int, count: int) -> None:
        for pc in range(count):
            raw = mem[insn_addr + 16 * pc: insn_addr + 16 * pc + 16]
            word = int.from_bytes(raw, "little")
            op = word & 7
            if op == 3:
                return
            if op in (0, 1):
                self._mem(mem, word, op)
            else:
                self._compute(word, op)

    def _mem(self, mem: bytearray, w: int, op: int) -> None:
        mt, sram, dram = _bits(w, 7, 3), _bits(w, 10, 16), _bits(w, 26, 32)
        ys, xs, stride = _bits(w, 64, 16), _bits(w, 80, 16), _bits(w, 96, 16)
        yp0, yp1, xp0, xp1 = (_bits(w, 112 + 4 * i, 4) for i in range(4))
        if xs == 0:
            return
        eb = self.eb[mt]
        if op == 1:  # STORE from OUT
            for y in range(ys):
                for x in range(xs):
                    elem = self.out[sram + y * xs + x]
                    addr = (dram + y * stride + x) * eb
                    mem[addr:addr + eb] = bytes(v & 0xFF for v in elem)
            return
        width = xp0 + xs + xp1
        rows = yp0 + ys + yp1
        for r in range(rows):
            for c in range(width):
                idx = sram + r * width + c
                y, x = r - yp0, c - xp0
                inside = 0 <= y < ys and 0 <= x < xs
                addr = (dram + y * stride + x) * eb
                data = bytes(mem[addr:addr + eb]) if inside else bytes(eb)
                if mt == 0:
                    self.uop[idx] = int.from_bytes(data, "little")
                elif mt == 1:
                    self.wgt[idx] = [_s8(v) for v in data]
                elif mt == 2:
                    self.inp[idx] = [_s8(v) for v in data]
                elif mt == 3:
                    self.acc[idx] = [int.from_bytes(data[4 * i:4 * i + 4], "little", signed=True)
                                     for i in range(eb // 4)]
                elif mt == 5:
                    self.acc[idx] = [_s8(v) for v in data]

    def _compute(self, w: int, op: int) -> None:
        lg = self.lg
        du, da, di, dw = lg["uop"], lg["acc"], lg["inp"], lg["wgt"]
        reset = _bits(w, 7, 1)
        bgn = _bits(w, 8, du)
        end = _bits(w, 8 + du, du + 1)
        it_out = _bits(w, 9 + 2 * du, 14)
        it_in = _bits(w, 23 + 2 * du, 14)
        pos = 64
        dfo = _bits(w, pos, da)
        dfi = _bits(w, pos + da, da)
        if op == 2:
            sfo, sfi = _bits(w, pos + 2 * da, di), _bits(w, pos + 2 * da + di, di)
            wfo = _bits(w, pos + 2 * da + 2 * di, dw)
            wfi = _bits(w, pos + 2 * da + 2 * di + dw, dw)
        else:
            sfo, sfi = _bits(w, pos + 2 * da, da), _bits(w, pos + 3 * da, da)
            p = pos + 4 * da
            alu_op, use_imm, imm = _bits(w, p, 3), _bits(w, p + 3, 1), _bits(w, p + 4, 16)
            imm = imm - (1 << 16) if imm >> 15 else imm
        ds = max(di, da)
        for i in range(it_out):
            for j in range(it_in):
                for u in range(bgn, end):
                    uw = self.uop[u]
                    a = _bits(uw, 0, da) + i * dfo + j * dfi
                    s = _bits(uw, da, ds) + i * sfo + j * sfi
                    if op == 2:
                        g = _bits(uw, da + ds, dw) + i * wfo + j * wfi
                        if reset:
                            self.acc[a] = [0] * len(self.acc[a])
                        else:
                            n = self.blk
                            res = list(self.acc[a])
                            for bb in range(self.b):
                                for o in range(n):
                                    tot = sum(self.inp[s][bb * n + k] * self.wgt[g][o * n + k]
                                              for k in range(n))
                                    res[bb * n + o] = _wrap32(res[bb * n + o] + tot)
                            self.acc[a] = res
                    else:
                        src = [imm] * len(self.acc[a]) if use_imm else list(self.acc[s])
                        self.acc[a] = [self._alu(alu_op, x, y) for x, y in zip(self.acc[a], src)]
                    self.out[a] = [_s8(v) for v in self.acc[a]]

    @staticmethod
    def _alu(op: int, x: int, y: int) -> int:
        if op == 0:
            return min(x, y)
        if op == 1:
            return max(x, y)
        if op == 2:
            return _wrap32(x + y)
        if op == 3:
            sh = min(abs(y), 31)
            return x >> sh if y >= 0 else _wrap32(x << sh)
        return _wrap32(x * y)


def run_reference(prog) -> list[bytes]:
    """Outputs of a ``tessera.sim.progen.Program`` under the reference interpreter."""
    image = prog.memory_image()
    top = max(a + len(d) for a, d in image.items())
    mem = bytearray(top + 4096)
    for a, d in image.items():
        mem[a:a + len(d)] = d
    ref = SpecRef(prog.cfg)
    ref.run(mem, prog.insn_addr, prog.insn_count)
    return [bytes(mem[s.addr:s.addr + s.size]) for s in prog.segments if s.output]


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)
