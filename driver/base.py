"""The Device protocol (SPEC §7): an allocator plus a program runner, for every device kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from tessera.config import Config
from tessera.driver.alloc import Allocator, Buffer
from tessera.errors import DeviceError
from tessera.isa import INSN_BYTES

__all__ = ["Device", "RunStats", "Buffer"]

DEFAULT_MEM_BYTES = 1 << 30


@dataclass
class RunStats:
    """What one run reports: ``cycles`` (None on kinds without timing) and event counters."""

    cycles: int | None
    counters: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> bytes | np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise DeviceError(f"data must be bytes or a numpy array, not {type(data).__name__}")


class Device(ABC):
    """One accelerator instance with its own device memory and registers.

    Subclasses store memory and run programs; this class owns allocation and checks every host
    access against it, so that reading or writing outside allocated memory raises
    :class:`DeviceError` on every kind alike.
    """

    kind: str = "?"

    def __init__(self, config: Config, mem_bytes: int = DEFAULT_MEM_BYTES):
        if not isinstance(config, Config):
            raise DeviceError(f"config must be a tessera.Config, not {config!r}")
        if mem_bytes > 1 << 32:
            raise DeviceError(f"mem_bytes must be at most 4 GiB (32-bit addresses), not "
                              f"{mem_bytes}")
        self.config = config
        self.mem_bytes = int(mem_bytes)
        self.allocator = Allocator(self.mem_bytes)
        self._closed = False

    # -- memory -----------------------------------------------------------------------------

    def alloc(self, nbytes: int, align: int = 4096) -> Buffer:
        self._check_open()
        return self.allocator.alloc(nbytes, align)

    def free(self, buf: Buffer) -> None:
        self._check_open()
        self.allocator.free(buf)

    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        self._check_open()
        raw = _as_bytes(data)
        self.allocator.check(int(addr), len(raw), "write")
        if len(raw):
            self._mem_write(int(addr), raw)

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check_open()
        self.allocator.check(int(addr), int(nbytes), "read")
        return self._mem_read(int(addr), int(nbytes)) if nbytes > 0 else b""

    def read_array(self, addr: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """Read ``prod(shape)`` elements of ``dtype`` at ``addr`` as a new array."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        return np.frombuffer(self.read(addr, n), dtype=dt).reshape(shape).copy()

    # -- registers and runs -----------------------------------------------------------------

    @abstractmethod
    def write_reg(self, offset: int, value: int) -> None: ...

    @abstractmethod
    def read_reg(self, offset: int) -> int: ...

    def run(self, insn_addr: int, insn_count: int,
            timeout_cycles: int | None = None) -> RunStats:
        """Run ``insn_count`` instructions at ``insn_addr``; raise DeviceError on any error."""
        self._check_open()
        if insn_addr % INSN_BYTES:
            raise DeviceError(f"insn_addr must be 16-byte aligned, not {insn_addr:#x}")
        if not 0 <= insn_count < 1 << 32:
            raise DeviceError(f"insn_count must be in [0, 2**32), not {insn_count}")
        self.allocator.check(insn_addr, insn_count * INSN_BYTES, "instruction fetch")
        if timeout_cycles is not None and timeout_cycles <= 0:
            raise DeviceError(f"timeout_cycles must be positive, not {timeout_cycles}")
        return self._run(int(insn_addr), int(insn_count), timeout_cycles)

    @abstractmethod
    def _run(self, insn_addr: int, insn_count: int, timeout_cycles: int | None) -> RunStats: ...

    @abstractmethod
    def _mem_write(self, addr: int, data: bytes | np.ndarray) -> None: ...

    @abstractmethod
    def _mem_read(self, addr: int, nbytes: int) -> bytes: ...

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"this {self.kind} device is closed")

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.summary()}>"
