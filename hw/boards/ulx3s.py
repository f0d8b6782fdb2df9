"""Radiona ULX3S: Lattice ECP5-85F (CABGA381, speed 6), 25 MHz oscillator, 32 MB SDR SDRAM
(MT48LC16M16-class, 16 bit), FT231X USB-serial."""

from __future__ import annotations

from tessera.hw.boards.board import Board

__all__ = ["ULX3S"]


def _platform():
    from litex_boards.platforms import radiona_ulx3s

    return radiona_ulx3s.Platform(device="LFE5U-85F", revision="2.0", toolchain="trellis")


ULX3S = Board(
    name="ulx3s",
    platform=_platform,
    clk_pin="clk25", clk_hz=25e6, rst_pin=None,
    sdram_module="MT48LC16M16", sdram_pins="sdram", sdram_clock_pin="sdram_clock",
    serial_pins="serial", baud=3_000_000,
    # The core closes timing at ~30 MHz on this part (its decode path); the whole SoC shares
    # one clock so that no clock-domain crossing sits on the DRAM path.
    sys_clk_hz=25e6,
    core_clk_hz=25e6,
    nextpnr_args=("--85k", "--package", "CABGA381", "--speed", "6"),
    programmer_args=("--board", "ulx3s"),
    # GPIO0 of the on-board ESP32 resets the FPGA when low.
    extra_outputs=(("wifi_gpio0", 1),),
    description="Radiona ULX3S (ECP5-85F, 32 MB SDRAM, FT231X USB-serial)",
)
