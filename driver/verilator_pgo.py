"""The training workload of a profile-guided Verilator build (``BuildOptions(pgo=True)``).

gcc's profile feedback makes the Verilated model faster on the paths the training run takes,
so the workload is shaped like a compiled network's instruction stream: long GEMM streams (on
ResNet-18 the GEMM is busy on ~95% of the cycles) while the load module streams input and
weight rows and the store module writes output rows, then ALU passes over the accumulators.
Every program is race-free (the concurrent loads and stores touch rows the GEMMs do not) and is
checked against the ISA's limits when it is encoded.

:func:`training` returns the :class:`~tessera.sim.verilator_build.PgoTraining` that
:class:`~tessera.driver.verilator.VerilatorDevice` passes to the build; its ``run`` starts
``python -m tessera.driver.verilator_pgo LIBRARY CONFIG_JSON`` (gcc writes the profile when that
process exits).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from tessera.config import Config
from tessera.errors import HwError
from tessera.isa import (
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
from tessera.proc import ToolFailed, run_logged
from tessera.sim.verilator_build import PgoTraining

__all__ = ["training", "train", "WORKLOAD_VERSION"]

WORKLOAD_VERSION = 1
"""Bump when the workload changes shape without this file's text changing."""

MEM_BYTES = 1 << 24


def training(config: Config) -> PgoTraining:
    """The training run for ``config``'s harness library (keyed by this file and the config)."""
    src = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    text = config.to_json()

    def run(library: Path, log: Path) -> None:
        try:
            run_logged([sys.executable, "-m", "tessera.driver.verilator_pgo", str(library), text],
                       cwd=library.parent, env=None, log=log, what="the PGO training run",
                       timeout=1800)
        except ToolFailed as exc:
            raise HwError(str(exc)) from None

    return PgoTraining(key=f"verilator_pgo v{WORKLOAD_VERSION} {src}", run=run)


def _program(dev, insns) -> tuple[int, int]:
    code = to_bytes(list(insns) + [FinishInsn()], dev.config)
    buf = dev.alloc(len(code))
    dev.write(buf.addr, code)
    return buf.addr, len(insns) + 1


def train(dev, rounds: int = 24) -> int:
    """Run the workload on ``dev`` (any device); returns the cycles simulated.

    Each round is one program: GEMMs with ALU passes between them on the compute module, a
    GEMM reset, a padded 2-D input load and a weight load on the load module (into the rows
    the GEMMs do not read) and a store of rows nothing else writes, all running at once, like
    a network layer's tile (on ResNet-18 the GEMM is busy ~95% of the cycles, the loader ~half).
    """
    cfg, rng = dev.config, np.random.default_rng(0)
    n_uop = max(1, min(64, cfg.uop_depth // 2, cfg.acc_depth // 10))
    half = cfg.acc_depth // 2  # the accumulators are two banks: use both
    n_inp, n_wgt = min(cfg.inp_depth, 256), min(cfg.wgt_depth, 256)
    h_inp, h_wgt = n_inp // 2, n_wgt // 2  # the GEMMs read the lower halves
    n_acc = 5 * n_uop  # rows [0, 4 n_uop) of each bank are computed; the store reads the rest
    # ResNet-18's GEMMs: one micro-op, an outer loop over kernel taps (same accumulators,
    # next weight row) around a long inner loop over positions (next accumulator and input
    # row, same weight row)
    it_out, it_in = 5, min(112, (h_inp - 1) // 5, 4 * n_uop - 1)
    if it_in < 1 or h_wgt <= it_out or n_acc > half:
        raise HwError(f"the PGO training workload needs inp depth >= 12, wgt depth >= 12 and "
                      f"acc_depth >= 10, not {cfg.summary()}")
    elem = {MemType.INP: cfg.inp_elem_bytes, MemType.WGT: cfg.wgt_elem_bytes,
            MemType.ACC: cfg.acc_elem_bytes, MemType.OUT: cfg.out_elem_bytes,
            MemType.ACC_8BIT: cfg.acc8_elem_bytes}
    rows = {MemType.INP: n_inp, MemType.WGT: n_wgt, MemType.ACC: n_acc, MemType.OUT: n_acc,
            MemType.ACC_8BIT: n_acc}
    bufs = {t: dev.alloc(rows[t] * elem[t]) for t in rows}
    for t in (MemType.INP, MemType.WGT, MemType.ACC, MemType.ACC_8BIT):
        dev.write(bufs[t].addr, rng.integers(0, 256, bufs[t].size, dtype=np.uint8))
    gemm_uops = [Uop(dst_idx=(7 * k) % (4 * n_uop - it_in) + half * (k % 2), src_idx=0,
                     wgt_idx=(3 * k) % (h_wgt - it_out)) for k in range(n_uop)]
    alu_uops = [Uop(dst_idx=k, src_idx=half + k) for k in range(n_uop)]
    ubuf = dev.alloc(4 * 2 * n_uop)
    dev.write(ubuf.addr, uops_to_bytes(gemm_uops + alu_uops, cfg))

    def mem(op: int, t: int, sram: int, n: int, **kw) -> MemInsn:
        return MemInsn(opcode=op, memory_type=t, sram_base=sram,
                       dram_base=bufs[t].addr // elem[t], **{"y_size": 1, "x_size": n,
                                                              "x_stride": n, **kw})

    setup = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP, dram_base=ubuf.addr // 4,
                     y_size=1, x_size=2 * n_uop, x_stride=2 * n_uop),
             mem(Opcode.LOAD, MemType.INP, 0, n_inp), mem(Opcode.LOAD, MemType.WGT, 0, n_wgt),
             mem(Opcode.LOAD, MemType.ACC, 0, n_acc)]
    gemms = [GemmInsn(uop_bgn=k, uop_end=k + 1, iter_out=it_out, iter_in=it_in,
                      dst_factor_in=1, src_factor_out=it_in, src_factor_in=1, wgt_factor_out=1)
             for k in range(min(4, n_uop))]
    gemm = gemms[0]
    # ResNet-18's mix: shifts, adds, multiplies by an immediate and a register, clamps
    alus = [AluInsn(uop_bgn=n_uop, uop_end=2 * n_uop, iter_out=2, iter_in=2,
                    dst_factor_out=n_uop, src_factor_out=n_uop, alu_opcode=op, use_imm=imm,
                    imm=val)
            for op, imm, val in ((AluOp.SHR, 1, 2), (AluOp.ADD, 0, 0), (AluOp.MUL, 1, 3),
                                 (AluOp.MUL, 0, 0), (AluOp.MIN, 1, 127), (AluOp.MAX, 1, -128))]
    setup.append(GemmInsn(reset=1, uop_bgn=0, uop_end=n_uop, iter_out=1, iter_in=it_in,
                          dst_factor_in=1))
    # Two tiles chained by dependency tokens (load -> compute -> store, and back), as a
    # compiled layer is; then a tile whose loads and store run beside its GEMMs untokened.
    tile = []
    for t in range(2):
        tile += [replace(mem(Opcode.LOAD, MemType.INP, 0, h_inp), pop_next=int(t > 0)),
                 replace(mem(Opcode.LOAD, MemType.WGT, 0, h_wgt), push_next=1),
                 replace(gemm, pop_prev=1, pop_next=int(t > 0)), alus[0], gemm,
                 replace(alus[1], push_prev=int(t == 0), push_next=1),
                 replace(mem(Opcode.STORE, MemType.OUT, 0, n_uop), pop_prev=1, push_prev=1)]
    tile.append(replace(gemm, pop_next=1))
    for alu in alus:
        tile += [*gemms, alu]
    # 2-D input load with padding: (y + 2) x (x + 2) rows inside the upper half
    x = max(1, min(8, (n_inp - h_inp) // 4 - 2))
    y = max(1, min(4, (n_inp - h_inp) // (x + 2) - 2))
    tile += [mem(Opcode.LOAD, MemType.INP, h_inp, x, y_size=y, x_stride=2 * x, y_pad_0=1,
                 y_pad_1=1, x_pad_0=1, x_pad_1=1),
             mem(Opcode.LOAD, MemType.WGT, h_wgt, (n_wgt - h_wgt) // 2, y_size=2,
                 x_stride=n_wgt // 2),
             mem(Opcode.LOAD, MemType.ACC_8BIT, 4 * n_uop, n_uop // 2, y_size=2,
                 x_stride=n_uop),
             mem(Opcode.STORE, MemType.OUT, 4 * n_uop, max(1, n_uop // 2), y_size=2,
                 x_stride=n_uop)]
    cycles = dev.run(*_program(dev, setup)).cycles
    addr, n = _program(dev, tile)
    for _ in range(rounds):
        cycles += dev.run(addr, n).cycles
    return cycles


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m tessera.driver.verilator_pgo LIBRARY CONFIG_JSON")
    from tessera.driver.verilator import VerilatorDevice

    cfg = Config.from_json(argv[1])
    with VerilatorDevice(cfg, MEM_BYTES, library=Path(argv[0])) as dev:
        cycles = train(dev)
    print(f"PGO training: {cycles} cycles on {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
