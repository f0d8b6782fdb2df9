"""What a board SoC needs to know about a board: one :class:`Board` record per board.

A second board is one more record: its LiteX platform, oscillator, FPGA part for nextpnr, SDRAM
module and PHY rate, serial pins and speed, and the clocks the SoC runs at. The SoC
(``tessera.hw.boards.soc``) and the bitstream flow (``tessera.hw.boards.bitstream``) read
nothing board-specific from anywhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from tessera.errors import HwError

__all__ = ["Board", "BOARDS", "get_board"]


@dataclass(frozen=True)
class Board:
    """One FPGA board.

    ``platform`` builds the LiteX platform (called with no arguments); ``clk_pin`` and
    ``clk_hz`` name its oscillator pad and frequency; ``rst_pin`` a reset button pad (active
    high) or None. ``sdram_module`` is a ``litedram.modules`` class name, ``sdram_pins`` and
    ``sdram_clock_pin`` its pads; ``serial_pins`` the USB-serial pads (``tx``/``rx``) and
    ``baud`` their speed. ``sys_clk_hz`` clocks the DRAM controller, the serial PHY and the
    host-link bridge; ``core_clk_hz`` the Tessera core (a separate domain, crossed with CDC
    FIFOs). ``nextpnr_args`` select the part for nextpnr-ecp5; ``extra_outputs`` are
    ``(pad, value)`` pairs driven constantly (e.g. keeping a companion chip from resetting the
    FPGA). ``programmer_args`` are openFPGALoader's board arguments.
    """

    name: str
    platform: Callable[[], object]
    clk_pin: str
    clk_hz: float
    rst_pin: str | None
    sdram_module: str
    sdram_pins: str
    sdram_clock_pin: str
    serial_pins: str
    baud: int
    sys_clk_hz: float
    core_clk_hz: float
    nextpnr_args: tuple[str, ...]
    programmer_args: tuple[str, ...]
    extra_outputs: tuple[tuple[str, int], ...] = ()
    description: str = ""


BOARDS: dict[str, str] = {
    "ulx3s": "tessera.hw.boards.ulx3s:ULX3S",
}


def get_board(name: str | Board) -> Board:
    """The :class:`Board` called ``name`` (or ``name`` itself if it is one)."""
    if isinstance(name, Board):
        return name
    if name not in BOARDS:
        raise HwError(f"unknown board {name!r}; known boards: {', '.join(sorted(BOARDS))}")
    module, attr = BOARDS[name].split(":")
    return getattr(importlib.import_module(module), attr)
