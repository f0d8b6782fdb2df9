"""cocotb testbench: the board SoC with its real UART PHY, driven bit by bit at the board's baud
rate (cocotbext-uart), host-link frames from tessera.hostlink, LiteDRAM with its SDRAM model
behind the controller, and a stand-in core whose AXI4 copy engine exercises the core's DRAM path
(AXI4 bursts -> LiteDRAMAXI2Native -> crossbar -> controller)."""

from __future__ import annotations

import logging
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, with_timeout
from cocotbext.uart import UartSink, UartSource

from tessera import hostlink as hl
from tessera.regs import STATUS_DONE, Reg

BAUD = int(os.environ["TESSERA_BAUD"])
SYS_NS = float(os.environ["TESSERA_SYS_NS"])
DST = 0x1C  # the stand-in's copy destination register


class Host:
    """Sends requests over the UART and parses the responses (the wire protocol, by hand)."""

    def __init__(self, dut):
        self.tx = UartSource(dut.serial_rx, baud=BAUD, bits=8)
        self.rx = UartSink(dut.serial_tx, baud=BAUD, bits=8)
        for end in (self.tx, self.rx):
            end.log.setLevel(logging.WARNING)  # not a line per byte
        self.buf = bytearray()
        self.seq = 0

    async def frame(self) -> tuple[int, int, bytes]:
        while True:
            while self.buf.count(hl.END) < 2 or self.buf.rstrip(b"\xc0").find(b"\xc0") < 0:
                self.buf += await self.rx.read()
            chunk, _, rest = bytes(self.buf).lstrip(b"\xc0").partition(b"\xc0")
            self.buf = bytearray(rest)
            if chunk:
                return hl.parse_response(hl.slip_decode(chunk))

    async def send_raw(self, frame: bytes) -> tuple[int, int, bytes]:
        await self.tx.write(frame)
        return await with_timeout(self.frame(), 20, "ms")

    async def req(self, cmd, a0=0, a1=0, payload=b"", seq=None):
        if seq is None:
            self.seq = (self.seq + 1) & 0xFF
            seq = self.seq
        status, rseq, data = await self.send_raw(
            hl.slip_encode(hl.request_body(cmd, seq, a0, a1, payload)))
        assert rseq == seq and status == hl.Status.OK, (cmd, status, rseq, seq)
        return data


@cocotb.test()
async def link_and_dram_path(dut):
    rng = random.Random(int(os.environ.get("TESSERA_SEED", "1")))
    cocotb.start_soon(Clock(dut.sys_clk, SYS_NS, unit="ns").start())
    cocotb.start_soon(Clock(dut.core_clk, SYS_NS, unit="ns").start())
    dut.sim_trace.value = 0
    dut.sys_rst.value = 1
    await ClockCycles(dut.sys_clk, 8)
    dut.sys_rst.value = 0
    host = Host(dut)

    info = hl.Info.unpack(await host.req(hl.Cmd.INFO))  # waits out the SDRAM init
    assert info.magic == hl.INFO_MAGIC and info.baud == BAUD
    # Host -> DRAM -> host, through the bridge's native port.
    src, dst, n = 0x2000, 0x9000, 512
    data = rng.randbytes(n)
    await host.req(hl.Cmd.WRITE_MEM, src, n, data)
    assert await host.req(hl.Cmd.READ_MEM, src, n) == data
    # The core's DRAM path: the stand-in copies n bytes src -> dst with AXI4 bursts.
    await host.req(hl.Cmd.WRITE_REG, DST, dst)
    await host.req(hl.Cmd.RUN, src, n // 16)
    for _ in range(50):
        (control,) = [int.from_bytes(await host.req(hl.Cmd.READ_REG, Reg.CONTROL, 1),
                                     "little")]
        if control & STATUS_DONE:
            break
    else:
        raise AssertionError("the stand-in's copy did not finish")
    assert await host.req(hl.Cmd.READ_MEM, dst, n) == data
    # A corrupted frame is refused and changes nothing; a repeated write is not redone.
    body = bytearray(hl.request_body(hl.Cmd.WRITE_MEM, 99, src, 4, b"XXXX"))
    body[11] ^= 0x40
    status, _, _ = await host.send_raw(hl.slip_encode(bytes(body)))
    assert status == hl.Status.BAD_CRC
    await host.req(hl.Cmd.WRITE_REG, Reg.INSN_COUNT, 5, seq=200)
    await host.req(hl.Cmd.WRITE_REG, Reg.INSN_COUNT, 6, seq=200)  # a "retry"
    assert int.from_bytes(await host.req(hl.Cmd.READ_REG, Reg.INSN_COUNT, 1), "little") == 5
    assert await host.req(hl.Cmd.READ_MEM, src, n) == data
