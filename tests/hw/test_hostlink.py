"""The host-link bridge in Amaranth's simulator: frames from tessera.hostlink against a Python
native-port memory and an AXI4-Lite register model, including corrupt, truncated, duplicated
and malformed frames."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from tessera import hostlink as hl
from tessera.hw.boards.hostlink import HostLinkBridge, crc32_byte_matrix
from tessera.regs import CONTROL_START, Reg

DRAM = 1 << 16
INFO = (hl.INFO_MAGIC, hl.PROTOCOL_VERSION, hl.MAX_PAYLOAD, DRAM, 0x12345678, 50_000_000,
        100_000_000, 0)


def test_crc_matrix_matches_zlib():
    rng = random.Random(1)
    for _ in range(50):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        reg = 0xFFFFFFFF
        for b in data:
            bits = reg | (b << 32)
            reg = sum(((bin(mask & bits).count("1") & 1) << j)
                      for j, mask in enumerate(crc32_byte_matrix()))
        assert reg ^ 0xFFFFFFFF == hl.crc32(data)


class Harness:
    """Drives the bridge: sends raw bytes, collects response frames, models memory and regs."""

    def __init__(self, seed: int = 0):
        self.dut = HostLinkBridge(DRAM, INFO, mem_addr_bits=14)
        self.rng = random.Random(seed)
        self.mem = bytearray(self.rng.randbytes(DRAM))
        self.regs: dict[int, int] = {}
        self.reg_writes: list[tuple[int, int]] = []
        self.tx: bytearray = bytearray()

    async def memory(self, ctx):
        d = self.dut
        pending: list[int] = []
        while True:
            ready = self.rng.random() < 0.7
            ctx.set(d.mem_cmd_ready, ready)
            ctx.set(d.mem_wdata_ready, self.rng.random() < 0.7)
            ctx.set(d.mem_rdata_valid, bool(pending))
            if pending:
                a = pending[0]
                ctx.set(d.mem_rdata_data, int.from_bytes(self.mem[4 * a:4 * a + 4], "little"))
            _, _, cv, cwe, ca, wv, wr, wd, wwe, rr = await ctx.tick().sample(
                d.mem_cmd_valid, d.mem_cmd_we, d.mem_cmd_addr, d.mem_wdata_valid,
                d.mem_wdata_ready, d.mem_wdata_data, d.mem_wdata_we, d.mem_rdata_ready)
            if pending and rr:
                pending.pop(0)
            if cv and ready:
                if cwe:
                    self.wq = ca
                else:
                    pending.append(ca)
            if wv and wr:
                assert wwe == 0xF
                self.mem[4 * self.wq:4 * self.wq + 4] = wd.to_bytes(4, "little")

    async def registers(self, ctx):
        d = self.dut
        aw = w = None
        rq = None
        bpend = False
        while True:
            ctx.set(d.m_axil_awready, aw is None)
            ctx.set(d.m_axil_wready, w is None)
            ctx.set(d.m_axil_arready, rq is None)
            ctx.set(d.m_axil_bvalid, bpend)
            ctx.set(d.m_axil_rvalid, rq is not None)
            ctx.set(d.m_axil_rdata, self.regs.get(rq, 0xDEAD0000 | (rq or 0)) if rq is not None
                    else 0)
            (_, _, awv, awa, wv, wdat, arv, ara, bready, rready) = await ctx.tick().sample(
                d.m_axil_awvalid, d.m_axil_awaddr, d.m_axil_wvalid, d.m_axil_wdata,
                d.m_axil_arvalid, d.m_axil_araddr, d.m_axil_bready, d.m_axil_rready)
            if bpend and bready:
                bpend = False
            if rq is not None and rready:
                rq = None
            elif arv and rq is None:
                rq = ara
            if awv and aw is None:
                aw = awa
            if wv and w is None:
                w = wdat
            if aw is not None and w is not None and not bpend:
                self.regs[aw] = w
                self.reg_writes.append((aw, w))
                aw = w = None
                bpend = True

    async def serial(self, ctx, stream: bytes):
        d = self.dut
        for b in stream:
            ctx.set(d.rx.valid, 1)
            ctx.set(d.rx.payload, b)
            await ctx.tick()
            ctx.set(d.rx.valid, 0)
            for _ in range(self.rng.randrange(0, 3)):
                await ctx.tick()

    async def sink(self, ctx):
        d = self.dut
        while True:
            ready = self.rng.random() < 0.8
            ctx.set(d.tx.ready, ready)
            _, _, v, p = await ctx.tick().sample(d.tx.valid, d.tx.payload)
            if v and ready:
                self.tx.append(p)

    def run(self, requests: list[bytes], cycles: int = 200, wait: bool = True,
            ) -> list[tuple[int, int, bytes]]:
        """Send each request; with ``wait``, only after the previous one was answered (the
        bridge is stop-and-wait), else back to back."""
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        sim.add_process(self.memory)
        sim.add_process(self.registers)
        sim.add_process(self.sink)

        async def main(ctx):
            for i, frame in enumerate(requests):
                await self.serial(ctx, frame)
                for _ in range(20_000 if wait else 0):
                    if self.tx.count(0xC0) >= 2 * (i + 1):
                        break
                    await ctx.tick()
            await ctx.tick().repeat(cycles)

        sim.add_testbench(main)
        sim.run()
        frames = []
        for chunk in bytes(self.tx).split(b"\xc0"):
            if chunk:
                frames.append(hl.parse_response(hl.slip_decode(chunk)))
        return frames


def req(cmd, seq, a0=0, a1=0, payload=b""):
    return hl.slip_encode(hl.request_body(cmd, seq, a0, a1, payload))


def test_bridge_commands():
    h = Harness(seed=3)
    data = bytes([0xC0, 0xDB, 0x01, 0xDC, 0xDD, 0xC0, 0xC0, 0xDB]) + h.rng.randbytes(56)
    stream = [req(hl.Cmd.INFO, 1), req(hl.Cmd.WRITE_MEM, 2, 0x100, len(data), data),
              req(hl.Cmd.READ_MEM, 3, 0xFC, 72), req(hl.Cmd.WRITE_REG, 4, 0x04, 0xC0DB0001),
              req(hl.Cmd.READ_REG, 5, 0x04, 1), req(hl.Cmd.RUN, 6, 0x2000, 17),
              req(hl.Cmd.READ_REG, 7, 0x00, 3)]
    before = bytes(h.mem)
    frames = h.run(stream)
    assert [(s, q) for s, q, _ in frames] == [(0, i) for i in range(1, 8)]
    assert frames[0][2] == b"".join(w.to_bytes(4, "little") for w in INFO)
    assert bytes(h.mem[0x100:0x140]) == data
    assert bytes(h.mem[:0x100]) == before[:0x100] and bytes(h.mem[0x140:]) == before[0x140:]
    assert frames[2][2] == bytes(h.mem[0xFC:0xFC + 72])
    assert frames[4][2] == (0xC0DB0001).to_bytes(4, "little")
    assert frames[6][2] == b"".join(h.regs.get(a, 0xDEAD0000 | a).to_bytes(4, "little")
                                    for a in (0, 4, 8))
    assert h.reg_writes == [(0x04, 0xC0DB0001), (Reg.INSN_ADDR, 0x2000), (Reg.INSN_COUNT, 17),
                            (Reg.CONTROL, CONTROL_START)]


def test_bridge_rejects_bad_frames_and_dedups_retries():
    h = Harness(seed=4)
    good = hl.request_body(hl.Cmd.WRITE_MEM, 7, 0x40, 8, b"ABCDEFGH")
    corrupt = bytearray(good)
    corrupt[12] ^= 0x10
    stream = [hl.slip_encode(bytes(corrupt)),                   # BAD_CRC, memory untouched
              hl.slip_encode(good[:6]),                          # too short: BAD_FRAME
              b"\xc0\xdb\x41\xc0",                               # bad escape: BAD_FRAME
              req(hl.Cmd.RUN, 8, 0x1000, 2),                     # runs once
              req(hl.Cmd.RUN, 8, 0x1000, 2),                     # a retry: acknowledged only
              req(hl.Cmd.READ_MEM, 9, 0x42, 4),                  # unaligned: BAD_ADDR
              req(hl.Cmd.READ_MEM, 10, DRAM - 4, 8),             # beyond DRAM: BAD_ADDR
              req(hl.Cmd.READ_MEM, 11, 0, 6),                    # length: BAD_LEN
              req(hl.Cmd.READ_MEM, 12, 0, hl.MAX_PAYLOAD + 4),   # too long: BAD_LEN
              req(hl.Cmd.WRITE_MEM, 13, 0x40, 8, b"ABCD"),       # payload short: BAD_LEN
              req(0x77, 14),                                     # BAD_CMD
              req(hl.Cmd.READ_REG, 15, 0x100, 1),                # not a core register
              req(hl.Cmd.INFO, 16, 0, 0, b"xxxx"),               # payload on INFO: BAD_LEN
              req(hl.Cmd.READ_REG, 17, 0xF8, 3),                 # leaves the registers
              req(hl.Cmd.READ_REG, 18, 0, 0),                    # BAD_COUNT
              req(hl.Cmd.READ_REG, 19, 0, 65)]                   # BAD_COUNT
    before = bytes(h.mem)
    frames = h.run(stream)
    S = hl.Status
    assert [s for s, _, _ in frames] == [S.BAD_CRC, S.BAD_FRAME, S.BAD_FRAME, S.OK, S.OK,
                                         S.BAD_ADDR, S.BAD_ADDR, S.BAD_LEN, S.BAD_LEN,
                                         S.BAD_LEN, S.BAD_CMD, S.BAD_ADDR, S.BAD_LEN,
                                         S.BAD_ADDR, S.BAD_COUNT, S.BAD_COUNT]
    assert [q for _, q, _ in frames][3:] == [8, 8] + list(range(9, 20))
    assert bytes(h.mem) == before
    assert h.reg_writes == [(Reg.INSN_ADDR, 0x1000), (Reg.INSN_COUNT, 2),
                            (Reg.CONTROL, CONTROL_START)]


@pytest.mark.parametrize("seed", [5])
def test_bridge_skips_frame_sent_while_busy(seed):
    h = Harness(seed=seed)
    # The second request arrives while the first (a long read) is still answering: it is
    # dropped without an answer, and the next frame is served normally.
    frames = h.run([req(hl.Cmd.READ_MEM, 1, 0, 256) + req(hl.Cmd.READ_REG, 2, 0, 1),
                    req(hl.Cmd.READ_REG, 3, 0x08, 1)])
    assert [(s, q) for s, q, _ in frames] == [(0, 1), (0, 3)]
