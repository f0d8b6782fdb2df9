"""Per-block tests in Amaranth's simulator: token queue, GEMM array, ALU, DMA, AXI master,
register file."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.alu import AluLanes
from tessera.hw.axi import AxiMaster
from tessera.hw.dma import RowLoader, Target
from tessera.hw.gemm import GemmArray
from tessera.hw.queues import TokenQueue
from tessera.hw.regfile import RegFile
from tessera.isa import AluOp
from tessera.regs import STATUS_BUSY, STATUS_DONE, Reg

CFG = Config.preset("tiny")


def _sim(dut, *benches, background=()):
    sim = Simulator(dut)
    sim.add_clock(1e-8, if_exists=True)
    for b in background:
        sim.add_testbench(b, background=True)
    for b in benches:
        sim.add_testbench(b)
    sim.run()


def test_token_queue_capacity_and_simultaneous_push_pop() -> None:
    q = TokenQueue(3)
    trace = []

    async def bench(ctx):
        ctx.set(q.push.valid, 1)
        for _ in range(5):  # only 3 fit
            trace.append(ctx.get(q.push.ready))
            await ctx.tick()
        assert ctx.get(q.count) == 3
        ctx.set(q.pop.ready, 1)  # push and pop together while full: pop only (push not ready)
        await ctx.tick()
        assert ctx.get(q.count) == 2
        await ctx.tick()  # push and pop both accepted: count stays
        assert ctx.get(q.count) == 2
        ctx.set(q.push.valid, 0)
        for _ in range(4):
            await ctx.tick()
        assert ctx.get(q.count) == 0 and not ctx.get(q.pop.valid)

    _sim(q, bench)
    assert trace == [1, 1, 1, 0, 0]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_token_queue_rejects_bad_depth() -> None:
    with pytest.raises(HwError, match="depth must be a positive integer"):
        TokenQueue(0)


def _pack(values, bits: int) -> int:
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (i * bits)
    return word


def _unpack(word: int, n: int, bits: int) -> list[int]:
    out = []
    for i in range(n):
        v = (word >> (i * bits)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


def test_gemm_array_matches_numpy() -> None:
    cfg = CFG
    dut = GemmArray(cfg)
    rng = np.random.default_rng(1)
    bi, bo = cfg.block_in, cfg.block_out

    async def bench(ctx):
        for trial in range(20):
            inp = rng.integers(-128, 128, (cfg.batch, bi))
            wgt = rng.integers(-128, 128, (bo, bi))
            if trial == 0:  # extremes
                inp[:] = -128
                wgt[:] = -128
            ctx.set(dut.inp, _pack(inp.reshape(-1), 8))
            ctx.set(dut.wgt, _pack(wgt.reshape(-1), 8))
            await ctx.delay(1e-9)
            got = _unpack(ctx.get(dut.dot), cfg.batch * bo, 32)
            assert got == (inp @ wgt.T).reshape(-1).tolist()

    _sim(dut, bench)


def _alu_ref(op: AluOp, a: int, b: int) -> int:
    if op == AluOp.MIN:
        r = min(a, b)
    elif op == AluOp.MAX:
        r = max(a, b)
    elif op == AluOp.ADD:
        r = a + b
    elif op == AluOp.SHR:
        n = min(abs(b), 31)
        r = a >> n if b >= 0 else a << n
    else:
        r = a * b
    r &= 0xFFFFFFFF
    return r - (1 << 32) if r >> 31 else r


def test_alu_lanes_all_ops() -> None:
    dut = AluLanes(CFG)
    lanes = CFG.batch * CFG.block_out
    rnd = random.Random(2)
    special = [0, 1, -1, 31, 32, -31, -32, 1000, -1000, 2**31 - 1, -2**31, 0x12345678]

    async def bench(ctx):
        for op in AluOp:
            for trial in range(12):
                if trial < 3:
                    a = [rnd.choice(special) for _ in range(lanes)]
                    b = [rnd.choice(special) for _ in range(lanes)]
                else:
                    a = [rnd.randrange(-2**31, 2**31) for _ in range(lanes)]
                    b = [rnd.randrange(-40, 40) if op == AluOp.SHR and trial % 2 else
                         rnd.randrange(-2**31, 2**31) for _ in range(lanes)]
                ctx.set(dut.op, op)
                ctx.set(dut.a, _pack(a, 32))
                ctx.set(dut.b, _pack(b, 32))
                await ctx.delay(1e-9)
                got = _unpack(ctx.get(dut.out), lanes, 32)
                assert got == [_alu_ref(op, x, y) for x, y in zip(a, b)], (op, a, b)

    _sim(dut, bench)


def test_alu_shr_and_mul_corner_cases() -> None:
    """SHR by a negative amount shifts left; amounts clamp to 31; MUL wraps mod 2**32."""
    assert _alu_ref(AluOp.SHR, -256, 4) == -16
    assert _alu_ref(AluOp.SHR, 3, -2) == 12
    assert _alu_ref(AluOp.SHR, -5, 100) == -1
    assert _alu_ref(AluOp.SHR, 1, -2**31) == -2**31
    assert _alu_ref(AluOp.MUL, 2**31 - 1, 2) == -2
    dut = AluLanes(CFG)
    lanes = CFG.batch * CFG.block_out
    cases = [(AluOp.SHR, -256, 4, -16), (AluOp.SHR, 3, -2, 12), (AluOp.SHR, -5, 100, -1),
             (AluOp.SHR, 1, -2**31, -2**31), (AluOp.MUL, 2**31 - 1, 2, -2),
             (AluOp.MUL, -2**31, -1, -2**31), (AluOp.ADD, 2**31 - 1, 1, -2**31)]

    async def bench(ctx):
        for op, a, b, want in cases:
            ctx.set(dut.op, op)
            ctx.set(dut.a, _pack([a] * lanes, 32))
            ctx.set(dut.b, _pack([b] * lanes, 32))
            await ctx.delay(1e-9)
            assert _unpack(ctx.get(dut.out), lanes, 32) == [want] * lanes, (op, a, b)

    _sim(dut, bench)


def _read_server(rd, mem: bytes, bus_bytes: int, rnd: random.Random, log: list):
    """An async testbench serving a read-client port from ``mem`` with random stalls."""

    async def serve(ctx):
        pending: list[int] = []
        while True:
            ctx.set(rd.req.ready, rnd.random() < 0.7)
            valid = bool(pending) and rnd.random() < 0.8
            if valid:
                a = pending[0]
                ctx.set(rd.data.payload, int.from_bytes(mem[a:a + bus_bytes], "little"))
            ctx.set(rd.data.valid, valid)
            _, _, rv, rr, addr, beats, dr = await ctx.tick().sample(
                rd.req.valid, rd.req.ready, rd.req.payload.addr, rd.req.payload.beats,
                rd.data.ready)
            if rv and rr:
                log.append((addr, beats))
                pending += [addr + i * bus_bytes for i in range(beats)]
            if valid and dr:
                pending.pop(0)

    return serve


@pytest.mark.parametrize("elem_bytes", [4, 16, 32])
def test_row_loader_padding_and_strides(elem_bytes: int) -> None:
    """A padded, strided 2-D load: SRAM image equals the SPEC §4 reference loop."""
    cfg = CFG
    bus = cfg.mem_bus_bits
    bits = elem_bytes * 8
    gran = min(bits, bus)
    dut = RowLoader(cfg, [Target(32, 32, 32), Target(bits, bits, gran)])
    rnd = random.Random(elem_bytes)
    mem = bytes(rnd.randrange(256) for _ in range(8192))
    base, stride, xs, ys, yp0, yp1, xp0, xp1, sram = 3, 5, 3, 4, 1, 2, 2, 1, 7
    width = xp0 + xs + xp1
    sram_img: dict[int, bytearray] = {}
    log: list = []

    async def bench(ctx):
        p = dut.cmd.payload
        for name, v in dict(target=1, sram_base=sram, addr=base * elem_bytes,
                            stride=stride * elem_bytes, x_size=xs, y_size=ys, y_pad_0=yp0,
                            y_pad_1=yp1, x_pad_0=xp0, x_pad_1=xp1).items():
            ctx.set(getattr(p, name), v)
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        for _ in range(400):
            _, _, addr, en, data = await ctx.tick().sample(dut.wr_addr, dut.wr1_en, dut.wr1_data)
            lanes = bits // gran
            for ln in range(lanes):
                if en >> ln & 1:
                    row = sram_img.setdefault(addr, bytearray(b"\xee" * elem_bytes))
                    chunk = (data >> (ln * gran)) & ((1 << gran) - 1)
                    row[ln * gran // 8:(ln + 1) * gran // 8] = chunk.to_bytes(gran // 8, "little")
            if not ctx.get(dut.busy):
                break

    _sim(dut, bench, background=[_read_server(dut.rd, mem, bus // 8, rnd, log)])
    want = {}
    for r in range(yp0 + ys + yp1):
        for c in range(width):
            idx = sram + r * width + c
            y, x = r - yp0, c - xp0
            if 0 <= y < ys and 0 <= x < xs:
                a = (base + y * stride + x) * elem_bytes
                want[idx] = mem[a:a + elem_bytes]
            else:
                want[idx] = bytes(elem_bytes)
    assert {k: bytes(v) for k, v in sram_img.items()} == want
    assert len(log) == ys


def test_axi_master_splits_at_4k_and_256_beats() -> None:
    cfg = CFG
    dut = AxiMaster(cfg, n_readers=2)
    bb = cfg.mem_bus_bytes
    rnd = random.Random(7)
    bursts: list[tuple[int, int]] = []
    got: list[int] = []
    start, beats = 4096 - 3 * bb, 700

    async def slave(ctx):
        queue = []
        cur = None
        while True:
            rvalid = cur is not None
            if rvalid:
                ctx.set(dut.m_axi_rdata, cur[0] // bb)
                ctx.set(dut.m_axi_rlast, cur[1] == 1)
            ctx.set(dut.m_axi_rvalid, rvalid)
            ctx.set(dut.m_axi_arready, rnd.random() < 0.6)
            _, _, av, ar, aa, al, rr = await ctx.tick().sample(
                dut.m_axi_arvalid, dut.m_axi_arready, dut.m_axi_araddr, dut.m_axi_arlen,
                dut.m_axi_rready)
            if av and ar:
                bursts.append((aa, al + 1))
                queue.append([aa, al + 1])
            if rvalid and rr:
                cur[0] += bb
                cur[1] -= 1
                if cur[1] == 0:
                    cur = None
            if cur is None and queue:
                cur = queue.pop(0)

    async def bench(ctx):
        ctx.set(dut.rd1.req.payload.addr, start)
        ctx.set(dut.rd1.req.payload.beats, beats)
        ctx.set(dut.rd1.req.valid, 1)
        await ctx.tick().until(dut.rd1.req.ready)
        ctx.set(dut.rd1.req.valid, 0)
        ctx.set(dut.rd1.data.ready, 1)
        while len(got) < beats:
            _, _, v, d = await ctx.tick().sample(dut.rd1.data.valid, dut.rd1.data.payload)
            if v:
                got.append(d)
        for _ in range(5):
            await ctx.tick()
        assert ctx.get(dut.idle)

    _sim(dut, bench, background=[slave])
    assert got == [start // bb + i for i in range(beats)]
    assert sum(n for _, n in bursts) == beats
    for a, n in bursts:
        assert 1 <= n <= 256
        assert a // 4096 == (a + n * bb - 1) // 4096
    assert bursts[0] == (start, 3)


def test_regfile_axil_registers_and_start() -> None:
    dut = RegFile(CFG)

    async def write(ctx, addr, value, strb=0xF):
        ctx.set(dut.s_axil_awaddr, addr)
        ctx.set(dut.s_axil_wdata, value)
        ctx.set(dut.s_axil_wstrb, strb)
        ctx.set(dut.s_axil_awvalid, 1)
        ctx.set(dut.s_axil_wvalid, 1)
        ctx.set(dut.s_axil_bready, 1)
        await ctx.tick().until(dut.s_axil_awready)
        ctx.set(dut.s_axil_awvalid, 0)
        ctx.set(dut.s_axil_wvalid, 0)
        await ctx.tick().until(dut.s_axil_bvalid)

    async def read(ctx, addr):
        ctx.set(dut.s_axil_araddr, addr)
        ctx.set(dut.s_axil_arvalid, 1)
        ctx.set(dut.s_axil_rready, 1)
        await ctx.tick().until(dut.s_axil_arready)
        ctx.set(dut.s_axil_arvalid, 0)
        *_, v = await ctx.tick().sample(dut.s_axil_rdata).until(dut.s_axil_rvalid)
        return v

    async def bench(ctx):
        await write(ctx, Reg.INSN_ADDR, 0x11223344)
        await write(ctx, Reg.INSN_ADDR, 0xAABBCCDD, strb=0b0101)
        assert await read(ctx, Reg.INSN_ADDR) == 0x11BB33DD
        await write(ctx, Reg.INSN_COUNT, 7)
        assert await read(ctx, Reg.CONTROL) == 0
        ctx.set(dut.ev_gemm_steps, 3)
        await write(ctx, Reg.CONTROL, 1)
        assert await read(ctx, Reg.CONTROL) == STATUS_BUSY
        assert ctx.get(dut.insn_count) == 7 and ctx.get(dut.insn_addr) == 0x11BB33DD
        ctx.set(dut.finished, 1)
        await ctx.tick()
        ctx.set(dut.finished, 0)
        ctx.set(dut.ev_gemm_steps, 0)
        assert await read(ctx, Reg.CONTROL) == STATUS_DONE
        assert ctx.get(dut.irq)
        cycles = await read(ctx, Reg.CYCLES_LO)
        steps = await read(ctx, 0x20)
        assert cycles > 0 and steps == 3 * cycles
        assert await read(ctx, Reg.ERROR_CODE) == 0

    _sim(dut, bench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_blocks_reject_bad_config() -> None:
    for cls in (GemmArray, AluLanes, RegFile):
        with pytest.raises(HwError, match="cfg must be a Config"):
            cls("tiny")
    with pytest.raises(HwError, match="n_readers must be a positive integer"):
        AxiMaster(CFG, 0)

