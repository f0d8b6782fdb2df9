"""The ``board`` device kind: a board SoC behind its host link (SPEC §7 over ``docs/host-link.md``).

:class:`LinkDevice` implements the whole Device protocol with :class:`~tessera.driver.link.HostLink`
requests: memory copies are READ_MEM / WRITE_MEM frames, registers READ_REG / WRITE_REG, a run is
one RUN request and then polls of the status registers until done, error or the cycle limit (on
which the core is reset through the link, so the device stays usable). Before a run the program
is read back and every LOAD/STORE it will dispatch is checked against allocated memory, as the
other kinds do (spec-notes 10): the SoC itself does not guard DMA. On opening it checks the
INFO block: the device must speak this protocol and carry a core built for the same hardware
config. :class:`BoardDevice` opens a real serial port; the ``soc-sim`` kind
(``tessera.driver.soc_sim``) opens a socket to the co-simulated SoC and uses the same class.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.driver.link import BytePort, FaultyPort, HostLink
from tessera.errors import DeviceError, HwError, SimError
from tessera.hostlink import MAX_REG_WORDS, Info, config_hash
from tessera.isa import INSN_BYTES, MemType, Opcode, elem_bytes
from tessera.regs import (
    COUNTER_BASE,
    COUNTERS,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_ERROR,
    ErrorCode,
    Reg,
)
from tessera.sim.decode import decode_program

__all__ = ["LinkDevice", "BoardDevice", "DEFAULT_TIMEOUT_CYCLES"]

DEFAULT_TIMEOUT_CYCLES = 1 << 40
"""Cycle limit of a run when ``timeout_cycles`` is not given (hours on a board)."""

_STATUS_WORDS = (Reg.CYCLES_HI - Reg.CONTROL) // 4 + 1


class LinkDevice(Device):
    """A device whose memory and registers are reached through a host link.

    ``port`` is a pyserial-like byte port; ``link_timeout`` and ``link_retries`` configure the
    link (see :class:`HostLink`); ``faults`` (a dict of :class:`FaultyPort` options) injects
    link faults, for tests.
    """

    kind = "link"

    def __init__(self, config: Config, port: BytePort, *, name: str, link_timeout: float,
                 link_retries: int = 8, faults: dict | None = None,
                 open_timeout: float | None = None):
        if faults is not None:
            port = FaultyPort(port, **faults)
        self.port = port
        self.link = HostLink(port, timeout=link_timeout, retries=link_retries, name=name)
        try:
            self.info = self._hello(open_timeout)
        except BaseException:
            port.close()
            raise
        want = config_hash(config)
        if self.info.config_hash != want:
            port.close()
            raise DeviceError(
                f"{name} carries a core built for another hardware config (hash "
                f"{self.info.config_hash:#010x}, {config.summary()} is {want:#010x}); build and "
                f"load a bitstream for this config (tessera hw bitstream --config ...)")
        super().__init__(config, self.info.dram_bytes)

    def _hello(self, open_timeout: float | None) -> Info:
        """INFO, retried for ``open_timeout`` seconds (the SoC may still be initialising)."""
        if open_timeout is None:
            return self.link.info()
        deadline = time.monotonic() + open_timeout
        saved = self.link.timeout, self.link.retries
        self.link.timeout, self.link.retries = 0.25, 0
        try:
            while True:
                try:
                    return self.link.info()
                except DeviceError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            self.link.timeout, self.link.retries = saved

    # -- memory and registers -----------------------------------------------------------------

    def _mem_write(self, addr: int, data: bytes | np.ndarray) -> None:
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        self.link.write_mem(addr, raw)

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        return self.link.read_mem(addr, nbytes)

    def _write_reg(self, offset: int, value: int) -> None:
        self.link.write_reg(offset, value)

    def _read_reg(self, offset: int) -> int:
        return self.link.read_reg(offset)

    # -- runs ---------------------------------------------------------------------------------

    def _check_dma(self, insn_addr: int, insn_count: int) -> None:
        """DeviceError (code None) naming the first LOAD/STORE that would move data outside
        allocated memory."""
        raw = np.frombuffer(self.link.read_mem(insn_addr, insn_count * INSN_BYTES), np.uint8)
        try:
            prog = decode_program(raw, self.config)
        except SimError as exc:
            # The device reports this decode error itself (code and pc); only the instructions
            # dispatched before it can move data.
            if not exc.pc:
                return
            prog = decode_program(raw[:exc.pc * INSN_BYTES], self.config)
        f = prog.arrays
        op, mt = f["opcode"], f["memory_type"]
        moves = np.flatnonzero(((op == Opcode.LOAD) | (op == Opcode.STORE))
                               & (f["x_size"] > 0) & (f["y_size"] > 0))
        for pc in moves.tolist():
            eb = elem_bytes(self.config, int(mt[pc]))
            starts = (int(f["dram_base"][pc]) + np.arange(int(f["y_size"][pc]), dtype=np.int64)
                      * int(f["x_stride"][pc])) * eb
            what = f"{Opcode(int(op[pc])).name} {MemType(int(mt[pc])).name} at instruction {pc}"
            self.allocator.check_rows(starts, int(f["x_size"][pc]) * eb, what)

    def _run(self, insn_addr: int, insn_count: int, timeout_cycles: int | None) -> RunStats:
        limit = DEFAULT_TIMEOUT_CYCLES if timeout_cycles is None else int(timeout_cycles)
        t0 = time.perf_counter()
        self._check_dma(insn_addr, insn_count)
        self.link.run(insn_addr, insn_count)
        while True:
            st = self.link.read_regs(Reg.CONTROL, _STATUS_WORDS)
            control = st[0]
            cycles = st[Reg.CYCLES_LO // 4] | (st[Reg.CYCLES_HI // 4] << 32)
            if control & (STATUS_DONE | STATUS_ERROR) and not control & STATUS_BUSY:
                break
            if cycles > limit:
                self.link.reset_core()
                raise DeviceError(f"run of {insn_count} instructions at {insn_addr:#x} timed out "
                                  f"after {cycles} cycles (limit {limit}); the core was reset")
        wall = time.perf_counter() - t0
        words = self.link.read_regs(COUNTER_BASE, min(len(COUNTERS), MAX_REG_WORDS))
        counters = {name: words[i] for i, (name, _, _) in enumerate(COUNTERS)}
        if control & STATUS_ERROR:
            code, pc = st[Reg.ERROR_CODE // 4], st[Reg.ERROR_PC // 4]
            text = _error_text(code)
            raise DeviceError(f"device error {code} ({text}) at instruction {pc} (run of "
                              f"{insn_count} instructions at {insn_addr:#x})", code=code, pc=pc)
        return RunStats(cycles=cycles, counters=counters, wall_seconds=wall)

    def close(self) -> None:
        if not self._closed:
            self.port.close()
        super().close()


def _error_text(code: int) -> str:
    from tessera.regs import ERROR_TEXT

    try:
        return ERROR_TEXT.get(ErrorCode(code), "unknown error")
    except ValueError:
        return "unknown error"


class BoardDevice(LinkDevice):
    """A real board on a serial port: ``open_device("board", cfg, board="ulx3s",
    port="/dev/ttyUSB0")``. ``port`` defaults to ``$TESSERA_BOARD_PORT`` (so that
    ``tessera run m.tsr --device board`` finds it), ``baud`` to the board's."""

    kind = "board"

    def __init__(self, config: Config, *, board: str = "ulx3s", port: str | None = None,
                 baud: int | None = None, link_timeout: float = 0.5, link_retries: int = 8,
                 faults: dict | None = None):
        from tessera.hw.boards.board import get_board

        try:
            spec = get_board(board)
        except HwError as exc:
            raise DeviceError(str(exc)) from None
        port = port or os.environ.get("TESSERA_BOARD_PORT")
        if not port:
            raise DeviceError(f"the board device needs port= or $TESSERA_BOARD_PORT (the "
                              f"{spec.name}'s USB-serial device, e.g. '/dev/ttyUSB0')")
        try:
            import serial
        except ImportError:
            raise DeviceError("the board device needs pyserial: pip install 'tessera[fpga]'") \
                from None
        try:
            ser = serial.serial_for_url(port, baudrate=baud or spec.baud, timeout=0.05)
        except (serial.SerialException, ValueError) as exc:
            raise DeviceError(f"cannot open {port!r}: {exc} (is the {spec.name} plugged in, and "
                              f"is the port readable by you?)") from None
        ser.reset_input_buffer()
        if hasattr(ser, "set_low_latency_mode"):  # Linux: the FTDI latency timer to 1 ms
            try:
                ser.set_low_latency_mode(True)
            except (OSError, ValueError) as exc:
                warnings.warn(f"{port}: cannot set low-latency mode ({exc}); every frame may "
                              f"wait up to 16 ms in the USB adapter", stacklevel=2)
        super().__init__(config, ser, name=f"{spec.name} on {port}", link_timeout=link_timeout,
                         link_retries=link_retries, faults=faults)
