"""The host side of the host link (``docs/host-link.md``): requests with retries over a byte port.

:class:`HostLink` speaks :mod:`tessera.hostlink` over any pyserial-like object (``write``,
``read``, ``in_waiting``, ``timeout``, ``reset_input_buffer``): a real serial port
(``serial.Serial``) for a board, or ``serial.serial_for_url("socket://…")`` for the SoC in
co-simulation. It is stop-and-wait: one request in flight, answered or timed out, then retried
with the same ``seq`` (the device acknowledges a repeated write without redoing it), up to
``retries`` times. :class:`FaultyPort` wraps a port and drops or corrupts bytes in either
direction, for the fault-injection tests.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from tessera.errors import DeviceError
from tessera.hostlink import (
    INFO_MAGIC,
    INFO_WORDS,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    STATUS_TEXT,
    Cmd,
    FrameError,
    Info,
    Status,
    parse_response,
    request_body,
    slip_decode,
    slip_encode,
)

__all__ = ["HostLink", "LinkStats", "FaultyPort", "BytePort"]


class BytePort(Protocol):
    timeout: float | None

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...

    @property
    def in_waiting(self) -> int: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class LinkStats:
    """What the link has done: requests, resends and why, bytes each way."""

    requests: int = 0
    resends: int = 0
    timeouts: int = 0
    bad_frames: int = 0      # responses that failed their CRC or framing
    naks: int = 0            # BAD_CRC / BAD_FRAME answers from the device
    stale: int = 0           # well-formed responses to an earlier request, discarded
    bytes_out: int = 0
    bytes_in: int = 0
    by_cmd: dict[str, int] = field(default_factory=dict)


class HostLink:
    """Requests to a device's host-link bridge.

    ``timeout`` is the time one attempt waits for its response (seconds; a co-simulated SoC
    needs far more than a board); ``retries`` how many times a request is resent after a
    timeout, a corrupt response or a NAK before :class:`DeviceError` is raised. ``name`` is
    used in messages (e.g. the port).
    """

    def __init__(self, port: BytePort, *, timeout: float = 0.5, retries: int = 8,
                 name: str = "device"):
        if not timeout > 0:
            raise DeviceError(f"link timeout must be positive, not {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise DeviceError(f"link retries must be a non-negative integer, not {retries!r}")
        self.port, self.timeout, self.retries, self.name = port, float(timeout), retries, name
        self.stats = LinkStats()
        self._seq = 0
        self._rx = bytearray()

    # -- one request --------------------------------------------------------------------------

    def request(self, cmd: Cmd, arg0: int = 0, arg1: int = 0, payload: bytes = b"",
                reply_bytes: int = 0) -> bytes:
        """Send one request, return the response payload (of ``reply_bytes`` bytes)."""
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        frame = slip_encode(request_body(cmd, seq, arg0, arg1, payload))
        self.stats.requests += 1
        self.stats.by_cmd[cmd.name] = self.stats.by_cmd.get(cmd.name, 0) + 1
        why = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.resends += 1
            self.port.write(frame)
            self.stats.bytes_out += len(frame)
            deadline = time.monotonic() + self.timeout
            while True:
                body = self._next_frame(deadline)
                if body is None:
                    self.stats.timeouts += 1
                    why = f"no response within {self.timeout} s"
                    break
                try:
                    status, rseq, data = parse_response(body)
                except FrameError as exc:
                    self.stats.bad_frames += 1
                    why = f"corrupt response ({exc})"
                    break
                if status in (Status.BAD_CRC, Status.BAD_FRAME):
                    self.stats.naks += 1
                    why = f"the device reported: {STATUS_TEXT[Status(status)]}"
                    break
                if rseq != seq:
                    self.stats.stale += 1
                    continue  # the answer to an earlier attempt of an earlier request
                if status != Status.OK:
                    text = STATUS_TEXT.get(status, f"status {status}")
                    raise DeviceError(f"{self.name}: {cmd.name}(arg0={arg0:#x}, arg1={arg1:#x}) "
                                      f"was refused: {text}")
                if len(data) != reply_bytes:
                    raise DeviceError(f"{self.name}: {cmd.name} answered {len(data)} bytes, "
                                      f"expected {reply_bytes}")
                return data
        raise DeviceError(f"{self.name}: {cmd.name}(arg0={arg0:#x}, arg1={arg1:#x}) failed after "
                          f"{self.retries + 1} attempts; last: {why}")

    def _next_frame(self, deadline: float) -> bytes | None:
        """The next non-empty END-delimited body (unescaped; FrameError bodies are returned as
        raw bytes that will fail the CRC), or None at the deadline."""
        while True:
            end = self._rx.find(b"\xc0")
            while end == 0:  # leading delimiters
                del self._rx[0]
                end = self._rx.find(b"\xc0")
            if end > 0:
                chunk = bytes(self._rx[:end])
                del self._rx[:end]
                try:
                    return slip_decode(chunk)
                except FrameError:
                    return b"\xdb"  # fails parse_response as a corrupt frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.port.timeout = min(left, 0.05)
            data = self.port.read(max(1, self.port.in_waiting))
            if data:
                self.stats.bytes_in += len(data)
                self._rx += data

    # -- commands -----------------------------------------------------------------------------

    def info(self) -> Info:
        info = Info.unpack(self.request(Cmd.INFO, reply_bytes=4 * INFO_WORDS))
        if info.magic != INFO_MAGIC:
            raise DeviceError(f"{self.name}: not a Tessera host link (magic {info.magic:#x})")
        if info.version != PROTOCOL_VERSION:
            raise DeviceError(f"{self.name}: host-link protocol version {info.version}, this "
                              f"host speaks {PROTOCOL_VERSION}")
        return info

    def read_mem(self, addr: int, nbytes: int) -> bytes:
        """Read any byte range (split into aligned, payload-sized requests)."""
        lo, hi = addr & ~3, (addr + nbytes + 3) & ~3
        out = bytearray()
        for a in range(lo, hi, MAX_PAYLOAD):
            n = min(MAX_PAYLOAD, hi - a)
            out += self.request(Cmd.READ_MEM, a, n, reply_bytes=n)
        return bytes(out[addr - lo:addr - lo + nbytes])

    def write_mem(self, addr: int, data: bytes) -> None:
        """Write any byte range; unaligned edges are read, merged and written back."""
        lo, hi = addr & ~3, (addr + len(data) + 3) & ~3
        if lo != addr or hi != addr + len(data):
            buf = bytearray(hi - lo)
            buf[:4] = self.read_mem(lo, 4)
            buf[-4:] = self.read_mem(hi - 4, 4)
            buf[addr - lo:addr - lo + len(data)] = data
            data = bytes(buf)
        view = memoryview(data)
        for off in range(0, hi - lo, MAX_PAYLOAD):
            chunk = view[off:off + MAX_PAYLOAD]
            self.request(Cmd.WRITE_MEM, lo + off, len(chunk), bytes(chunk))

    def read_reg(self, offset: int) -> int:
        return self.read_regs(offset, 1)[0]

    def read_regs(self, offset: int, count: int) -> list[int]:
        """``count`` consecutive registers from ``offset`` in one request."""
        data = self.request(Cmd.READ_REG, offset, count, reply_bytes=4 * count)
        return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]

    def write_reg(self, offset: int, value: int) -> None:
        self.request(Cmd.WRITE_REG, offset, value)

    def run(self, insn_addr: int, insn_count: int) -> None:
        self.request(Cmd.RUN, insn_addr, insn_count)

    def reset_core(self) -> None:
        """Hold the core in reset briefly (it stops whatever it was doing)."""
        self.request(Cmd.RESET)

    def close(self) -> None:
        self.port.close()


class FaultyPort:
    """A byte port that drops or corrupts bytes: ``drop`` and ``corrupt`` are per-byte
    probabilities, ``directions`` a subset of ``{"out", "in"}`` (host→device, device→host)."""

    def __init__(self, port: BytePort, *, drop: float = 0.0, corrupt: float = 0.0,
                 directions: frozenset[str] | set[str] = frozenset({"out", "in"}),
                 seed: int = 0):
        if not (0 <= drop < 1 and 0 <= corrupt < 1):
            raise DeviceError(f"fault rates must be in [0, 1), not drop={drop!r}, "
                              f"corrupt={corrupt!r}")
        if not set(directions) <= {"out", "in"}:
            raise DeviceError(f"fault directions must be a subset of {{'out', 'in'}}, not "
                              f"{directions!r}")
        self.port, self.drop, self.corrupt = port, drop, corrupt
        self.directions = frozenset(directions)
        self.rng = random.Random(seed)
        self.dropped = {"out": 0, "in": 0}
        self.corrupted = {"out": 0, "in": 0}

    def _mangle(self, data: bytes, direction: str) -> bytes:
        if direction not in self.directions or not data:
            return data
        out = bytearray()
        for b in data:
            r = self.rng.random()
            if r < self.drop:
                self.dropped[direction] += 1
                continue
            if r < self.drop + self.corrupt:
                self.corrupted[direction] += 1
                b ^= 1 << self.rng.randrange(8)
            out.append(b)
        return bytes(out)

    @property
    def timeout(self) -> float | None:
        return self.port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.port.timeout = value

    @property
    def in_waiting(self) -> int:
        return self.port.in_waiting

    def write(self, data: bytes) -> int:
        self.port.write(self._mangle(bytes(data), "out"))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        return self._mangle(self.port.read(size), "in")

    def reset_input_buffer(self) -> None:
        self.port.reset_input_buffer()

    def close(self) -> None:
        self.port.close()
