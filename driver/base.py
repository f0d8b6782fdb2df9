"""The Device protocol (SPEC §7): an allocator plus a program runner, for every device kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from tessera.config import Config
from tessera.driver.alloc import Allocator, Buffer
from tessera.errors import DeviceError
from tessera.isa import INSN_BYTES

__all__ = ["Device", "RunStats", "Buffer", "REG_SPACE"]

DEFAULT_MEM_BYTES = 1 << 30


@dataclass
class RunStats:
    """What one run reports: ``cycles`` (None on kinds without timing) and event counters."""

    cycles: int | None
    counters: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> bytes | np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise DeviceError(f"data must be a numeric numpy array, not one of dtype {data.dtype}")
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise DeviceError(f"data must be bytes or a numpy array, not {type(data).__name__}")


def _int(value: object, what: str, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi)``; anything else (bool, float, str...) is an error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DeviceError(f"{what} must be an integer, not {value!r}")
    v = int(value)
    if not lo <= v < hi:
        f = hex if ("addr" in what or "offset" in what) else str
        raise DeviceError(f"{what} must be in [{f(lo)}, {f(hi)}), not {f(v)}")
    return v


REG_SPACE = 0x100
"""Size of the register file (SPEC §6); offsets are multiples of 4 below it."""


class Device(ABC):
    """One accelerator instance with its own device memory and registers.

    Subclasses store memory, registers and run programs (``_mem_*``, ``_*_reg``, ``_run``);
    this class owns allocation and checks every host argument first (integers of the right
    range, never a silently converted float or truncated value) and every access against the
    allocation, so that bad calls raise :class:`DeviceError` on every kind alike.
    """

    kind: str = "?"

    def __init__(self, config: Config, mem_bytes: int = DEFAULT_MEM_BYTES):
        if not isinstance(config, Config):
            raise DeviceError(f"config must be a tessera.Config, not {config!r}")
        self.config = config
        # at most 4 GiB: addresses are 32 bits
        self.mem_bytes = _int(mem_bytes, "mem_bytes", 1, (1 << 32) + 1)
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
        addr = _int(addr, "write address", 0, 1 << 32)
        raw = _as_bytes(data)
        self.allocator.check(addr, len(raw), "write")
        if len(raw):
            self._mem_write(addr, raw)

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check_open()
        addr = _int(addr, "read address", 0, 1 << 32)
        nbytes = _int(nbytes, "read length", 0, self.mem_bytes + 1)
        self.allocator.check(addr, nbytes, "read")
        return self._mem_read(addr, nbytes) if nbytes > 0 else b""

    def read_array(self, addr: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """Read ``prod(shape)`` elements of ``dtype`` at ``addr`` as a new array."""
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise DeviceError(f"dtype must be a numpy dtype, not {dtype!r} ({exc})") from None
        if dt.hasobject or dt.itemsize == 0:
            raise DeviceError(f"dtype must be a fixed-size numeric dtype, not {dt}")
        if not isinstance(shape, tuple):
            raise DeviceError(f"shape must be a tuple of integers, not {shape!r}")
        dims = [_int(d, f"shape[{i}]", 0, self.mem_bytes + 1) for i, d in enumerate(shape)]
        n = int(np.prod(dims, dtype=object)) * dt.itemsize
        return np.frombuffer(self.read(addr, n), dtype=dt).reshape(dims).copy()

    def host_view(self, buf: Buffer) -> np.ndarray | None:
        """A writeable ``uint8`` numpy view of allocation ``buf`` in this process's memory, or
        None when the device memory is not host-addressable (a board behind a link).

        The runtime binds CPU kernels to such views once and then reads and writes device
        memory in place. A view is valid only while the device is open (:attr:`closed`).
        """
        self._check_open()
        if not isinstance(buf, Buffer):
            raise DeviceError(f"buf must be a Buffer from alloc(), not {buf!r}")
        self.allocator.check(buf.addr, buf.size, "host view")
        mem = self._host_memory()
        return None if mem is None else mem[buf.addr:buf.end]

    def _host_memory(self) -> np.ndarray | None:
        """The whole device memory as a host ``uint8`` array, if it is one (subclasses)."""
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- registers and runs -----------------------------------------------------------------

    def write_reg(self, offset: int, value: int) -> None:
        """Write register ``offset`` (SPEC §6) with a 32-bit ``value``."""
        self._check_open()
        self._write_reg(self._check_offset(offset), _int(value, "register value", 0, 1 << 32))

    def read_reg(self, offset: int) -> int:
        """Read register ``offset`` (SPEC §6)."""
        self._check_open()
        return self._read_reg(self._check_offset(offset))

    @staticmethod
    def _check_offset(offset: object) -> int:
        off = _int(offset, "register offset", -(1 << 64), 1 << 64)
        if not 0 <= off < REG_SPACE or off % 4:
            raise DeviceError(f"no register at offset {off:#x}: register offsets are multiples "
                              f"of 4 in [0, {REG_SPACE:#x})")
        return off

    @abstractmethod
    def _write_reg(self, offset: int, value: int) -> None: ...

    @abstractmethod
    def _read_reg(self, offset: int) -> int: ...

    def run(self, insn_addr: int, insn_count: int,
            timeout_cycles: int | None = None) -> RunStats:
        """Run ``insn_count`` instructions at ``insn_addr``; raise DeviceError on any error."""
        self._check_open()
        insn_addr = _int(insn_addr, "insn_addr", 0, 1 << 32)
        if insn_addr % INSN_BYTES:
            raise DeviceError(f"insn_addr must be 16-byte aligned, not {insn_addr:#x}")
        insn_count = _int(insn_count, "insn_count", 0, 1 << 32)
        self.allocator.check(insn_addr, insn_count * INSN_BYTES, "instruction fetch")
        if timeout_cycles is not None:
            timeout_cycles = _int(timeout_cycles, "timeout_cycles", 1, 1 << 63)
        return self._run(insn_addr, insn_count, timeout_cycles)

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
