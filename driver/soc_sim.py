"""The ``soc-sim`` device kind: the board SoC's own Verilog in Verilator, behind the same host
link and host-driver code as a real board.

``open_device("soc-sim", cfg, board="ulx3s")`` builds (once, cached by content) the co-simulation
of the SoC (``tessera.sim.soc``: the SDRAM controller with LiteDRAM's SDRAM model behind it, the
serial port as a byte stream served on a TCP socket), starts it as a child process and talks to
it with ``serial.serial_for_url("socket://127.0.0.1:PORT")`` through
:class:`~tessera.driver.board.LinkDevice` — the class a board uses. The simulated serial port
moves a byte per SoC clock, not at a UART's bit rate.
"""

from __future__ import annotations

import subprocess

from tessera.config import Config
from tessera.driver.board import LinkDevice
from tessera.errors import DeviceError, HwError

__all__ = ["SocSimDevice"]


class SocSimDevice(LinkDevice):
    """The co-simulated board SoC. ``link_timeout`` is per attempt, in wall seconds."""

    kind = "soc-sim"

    def __init__(self, config: Config, *, board: str = "ulx3s", link_timeout: float = 60.0,
                 link_retries: int = 8, faults: dict | None = None):
        try:
            import serial
        except ImportError:
            raise DeviceError("the soc-sim device needs pyserial: pip install 'tessera[fpga]'") \
                from None
        from tessera.hw.boards.board import get_board
        from tessera.sim.soc.build import soc_sim_executable

        try:
            spec = get_board(board)
            exe = soc_sim_executable(config, spec)
        except HwError as exc:
            raise DeviceError(f"cannot build the co-simulated {board} SoC: {exc}") from exc
        self._proc = subprocess.Popen([str(exe), repr(spec.sys_clk_hz), repr(spec.core_clk_hz)],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True)
        try:
            line = self._proc.stdout.readline()
            if not line.startswith("PORT "):
                raise DeviceError(f"the SoC simulator {exe} did not start (said {line!r}, exit "
                                  f"{self._proc.poll()})")
            port = serial.serial_for_url(f"socket://127.0.0.1:{int(line.split()[1])}",
                                         timeout=0.05)
            super().__init__(config, port, name=f"soc-sim ({spec.name})",
                             link_timeout=link_timeout, link_retries=link_retries,
                             faults=faults, open_timeout=60.0)
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(timeout=5)  # it exits when the socket closes
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        if not self._closed:
            super().close()
            self._stop()
            if self._proc.stdout:
                self._proc.stdout.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
