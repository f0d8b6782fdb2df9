"""cocotb test of the load path (LoadModule + RowLoader + AxiMaster) against cocotbext-axi's
AxiRam: random 2-D strided, zero-padded LOADs of INP and WGT, every buffer element checked
against a model of SPEC §4 after every LOAD (launched by test_cocotb_load_dma.py)."""

from __future__ import annotations

import itertools
import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiRam
from load_dma_wrapper import initial_word

from tessera.config import Config
from tessera.isa import MemInsn, MemType, depth, elem_bytes, encode
from tessera.sim.cocotb_axi import BurstMonitor

RAM_BYTES = 1 << 16
PAGE = 4096


def _cfg() -> Config:
    return Config.from_dict(json.loads(os.environ["TESSERA_CONFIG"]))


def model_load(buf: list[int], dram: bytes, insn: MemInsn, eb: int) -> None:
    """SPEC §4 LOAD into ``buf`` (a list of element integers, little-endian bytes)."""
    if insn.x_size == 0:
        return
    cols = insn.x_pad_0 + insn.x_size + insn.x_pad_1
    rows = insn.y_pad_0 + insn.y_size + insn.y_pad_1
    a = insn.sram_base
    for r in range(rows):
        for c in range(cols):
            y, x = r - insn.y_pad_0, c - insn.x_pad_0
            if 0 <= y < insn.y_size and 0 <= x < insn.x_size:
                off = (insn.dram_base + y * insn.x_stride + x) * eb
                buf[a] = int.from_bytes(dram[off:off + eb], "little")
            else:
                buf[a] = 0
            a += 1


def _random_load(rnd: random.Random, cfg: Config, force: dict | None = None) -> MemInsn:
    f = dict(force or {})
    mt = f.pop("memory_type", rnd.choice([MemType.INP, MemType.WGT]))
    eb, dep = elem_bytes(cfg, mt), depth(cfg, mt)
    while True:
        p = {k: rnd.randint(0, 3) for k in ("y_pad_0", "y_pad_1", "x_pad_0", "x_pad_1")}
        p["x_size"] = rnd.randint(1, 12)
        p["y_size"] = rnd.randint(1, 6)
        p.update({k: v for k, v in f.items() if k in p})
        xs, ys = p["x_size"], p["y_size"]
        total = (p["y_pad_0"] + ys + p["y_pad_1"]) * (p["x_pad_0"] + xs + p["x_pad_1"])
        if total <= dep:
            break
    kind = f.get("stride_kind", rnd.choice(["lt", "eq", "gt", "gt", "zero"]))
    stride = {"lt": rnd.randint(1, max(1, xs - 1)) if xs > 1 else 0, "eq": xs,
              "gt": xs + rnd.randint(1, 40), "zero": 0}[kind]
    span = ((ys - 1) * stride + xs) * eb  # bytes touched in DRAM
    if f.get("straddle", rnd.random() < 0.4) and xs > 1:
        # some row y straddles a 4 KiB page boundary
        y = rnd.randrange(ys)
        page = rnd.randint(1, RAM_BYTES // PAGE - 2) * PAGE
        row_start = page - rnd.randint(1, xs - 1) * eb
        base = row_start - y * stride * eb
        if base < 0 or base + span > RAM_BYTES:
            base = page - eb  # row 0 straddles
    else:
        base = rnd.randrange(0, RAM_BYTES - span + 1, eb)
    return MemInsn(memory_type=mt, sram_base=rnd.randint(0, dep - total),
                   dram_base=base // eb, x_stride=stride, **p)


@cocotb.test()
async def load_dma_matches_spec(dut):
    cfg = _cfg()
    seed = int(os.environ.get("TESSERA_SEED", "0"))
    rnd = random.Random(seed)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=RAM_BYTES)
    dram = bytes(rnd.getrandbits(8) for _ in range(RAM_BYTES))
    ram.write(0, dram)
    monitor = BurstMonitor(dut, dut.clk, cfg.mem_bus_bytes)
    dut.insn_valid.value = 0
    dut.insn.value = 0
    dut.inp_raddr.value = 0
    dut.wgt_raddr.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    bufs = {}
    for mt, sig in ((MemType.INP, "inp"), (MemType.WGT, "wgt")):
        bits = elem_bytes(cfg, mt) * 8
        bufs[mt] = (sig, [initial_word(i, bits) for i in range(depth(cfg, mt))])

    # Directed cases first: every padding value in every position, each stride kind,
    # page-straddling rows, a sync-only LOAD (x_size 0) and a padding-only one (y_size 0).
    cases = []
    for mt in (MemType.INP, MemType.WGT):
        for v in range(4):
            cases.append(_random_load(rnd, cfg, dict(memory_type=mt, y_pad_0=v, y_pad_1=3 - v,
                                                     x_pad_0=v, x_pad_1=(v + 1) % 4)))
        for kind in ("lt", "eq", "gt", "zero"):
            cases.append(_random_load(rnd, cfg, dict(memory_type=mt, stride_kind=kind,
                                                     straddle=kind != "zero")))
    cases.append(MemInsn(memory_type=MemType.INP, sram_base=5, dram_base=3, x_size=0,
                         y_size=4, x_stride=1, y_pad_0=2, x_pad_1=1))
    cases.append(MemInsn(memory_type=MemType.WGT, sram_base=7, dram_base=3, x_size=2,
                         y_size=0, x_stride=2, y_pad_0=1, y_pad_1=2, x_pad_0=1))
    cases += [_random_load(rnd, cfg) for _ in range(60)]

    for n, insn in enumerate(cases):
        # back-pressure on the read data channel for every other LOAD
        # (clearing the generator leaves `pause` at its last value, so reset it too)
        r_ch = ram.read_if.r_channel
        r_ch.set_pause_generator(
            itertools.cycle([rnd.random() < 0.3 for _ in range(17)]) if n % 2 else None)
        if not n % 2:
            r_ch.pause = False
        eb = elem_bytes(cfg, insn.memory_type)
        model_load(bufs[insn.memory_type][1], dram, insn, eb)
        dut.insn.value = encode(insn, cfg)
        dut.insn_valid.value = 1
        while True:
            await ReadOnly()
            ready = int(dut.insn_ready.value)
            await RisingEdge(dut.clk)
            if ready:
                break
        dut.insn_valid.value = 0
        for _cycle in range(20000):
            await ReadOnly()
            if int(dut.retire.value):
                break
            await RisingEdge(dut.clk)
        else:
            raise AssertionError(f"LOAD {n} never retired: {insn}")
        await RisingEdge(dut.clk)
        await RisingEdge(dut.clk)
        for sig, want in bufs.values():
            for i, w in enumerate(want):
                getattr(dut, f"{sig}_raddr").value = i
                await Timer(1, unit="ns")
                got = int(getattr(dut, f"{sig}_rdata").value)
                assert got == w, (f"LOAD {n} {insn}: {sig}[{i}] = {got:#x}, want {w:#x} "
                                  f"(region starts at {insn.sram_base})")
        dut._log.info("LOAD %d ok: %s", n, insn)
    monitor.check()
    monitor.stop()
    straddles = sum(
        1 for insn in cases for y in range(insn.y_size) if insn.x_size
        for eb in [elem_bytes(cfg, insn.memory_type)]
        for a in [(insn.dram_base + y * insn.x_stride) * eb]
        if a // PAGE != (a + insn.x_size * eb - 1) // PAGE)
    assert straddles, "no LOAD row straddled a 4 KiB page"
    dut._log.info("%d LOADs, %d rows straddling a page, %d read bursts", len(cases),
                  straddles, len(monitor.bursts))
