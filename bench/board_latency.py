"""End-to-end latency of a network on a board, from measured RTL cycles and counted link bytes.

    python bench/board_latency.py [--model resnet18] [--config ulx3s] [--board ulx3s]

Compiles the model for the config, runs one input on the ``verilator`` device restricted to the
board's DRAM size, and counts what the runtime moves between host and device (memory bytes
each way, register accesses, runs). It prints, side by side: the accelerator's cycles and their
time at the board's core clock (the config's ``clock_mhz``, the Fmax the bitstream closes at),
the host CPU's wall time for the CPU-side operators, and the host-link time those bytes take on
the wire at the board's baud rate (SLIP/CRC framing of 4 KiB frames included; the USB round trip
per frame is shown separately, with the FT231X latency timer at 1 ms). It also checks the
outputs equal fsim's bit for bit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.config import Config
from tessera.driver.verilator import VerilatorDevice
from tessera.hostlink import CRC_BYTES, MAX_PAYLOAD, REQ_HEADER_BYTES, RESP_HEADER_BYTES
from tessera.hw.boards.board import get_board

FRAME = REQ_HEADER_BYTES + RESP_HEADER_BYTES + 2 * CRC_BYTES + 4  # headers, CRCs, 4 ENDs
ESCAPE = 1 + 2 / 256  # SLIP escapes on random data


class CountingDevice(VerilatorDevice):
    """The RTL, counting the host's traffic as the host link would carry it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_out = self.bytes_in = self.frames = self.runs = self.reg_ops = 0

    def _mem_write(self, addr, data):
        n = len(data) if isinstance(data, bytes) else data.size
        self.bytes_out += n
        self.frames += -(-n // MAX_PAYLOAD)
        super()._mem_write(addr, data)

    def _mem_read(self, addr, nbytes):
        self.bytes_in += nbytes
        self.frames += -(-nbytes // MAX_PAYLOAD)
        return super()._mem_read(addr, nbytes)

    def _run(self, insn_addr, insn_count, timeout_cycles):
        self.runs += 1
        n = insn_count * 16  # the board driver reads the program back to check its DMA
        self.bytes_in += n
        self.frames += -(-n // MAX_PAYLOAD)
        return super()._run(insn_addr, insn_count, timeout_cycles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--config", default="ulx3s")
    ap.add_argument("--board", default="ulx3s")
    args = ap.parse_args()
    cfg = Config.resolve(args.config)
    board = get_board(args.board)
    proto = getattr(zoo, args.model)()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    t0 = time.perf_counter()
    model = tcompile(proto, config=cfg, calibration=cal)
    print(f"{args.model} compiled for {cfg.summary()} in {time.perf_counter() - t0:.1f} s")
    want = model.run(x, device="fsim")
    dram = 32 << 20 if board.name == "ulx3s" else 1 << 30
    dev = CountingDevice(cfg, mem_bytes=dram)
    hz = cfg.clock_mhz * 1e6
    rate = board.baud / 10
    for label in ("first input (weights and code uploaded)", "second input (weights resident)"):
        dev.bytes_out = dev.bytes_in = dev.frames = dev.runs = 0
        t0 = time.perf_counter()
        got, prof = model.run(x, device=dev, profile=True)
        wall = time.perf_counter() - t0
        same = all(np.array_equal(a, b) for a, b in zip(got, want))
        tot = prof.totals()
        cycles = tot["cycles"]
        wire = (dev.bytes_out + dev.bytes_in) * ESCAPE + dev.frames * FRAME
        # each run: one RUN request, at least one status poll and one counter read
        wire += dev.runs * 3 * (FRAME + 128)
        rtt = (dev.frames + 3 * dev.runs) * 1e-3
        print(f"-- {label}: RTL (verilator) wall {wall:.1f} s, outputs equal fsim: {same}")
        print(f"   accelerator: {cycles:,} cycles = {cycles / hz * 1e3:.1f} ms at "
              f"{cfg.clock_mhz:g} MHz ({tot['accel_layers']} layers, GEMM utilisation "
              f"{tot['utilisation']:.2f})")
        print(f"   host CPU operators: {tot['cpu_wall_ms']:.1f} ms ({tot['cpu_ops']} ops, this "
              f"machine)")
        print(f"   host link: {dev.bytes_out:,} B to the board, {dev.bytes_in:,} B back, "
              f"{dev.runs} runs -> {wire:,.0f} B on the wire = {wire / rate:.2f} s at "
              f"{board.baud:,} baud (+ {rtt:.2f} s of USB round trips at 1 ms per frame)")
    model.close()


if __name__ == "__main__":
    main()
