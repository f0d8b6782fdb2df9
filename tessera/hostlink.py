"""The host-link wire protocol between a host and a board SoC (``docs/host-link.md``).

One source of truth for the framing, the CRC, the command and status codes and the INFO block:
the board's bridge (``tessera.hw.boards.hostlink``) takes its constants from here, the host side
(``tessera.driver.link``) encodes and decodes frames with the functions below.

A frame is SLIP-delimited (``END`` before and after, ``END``/``ESC`` bytes in the body escaped)
and its body ends with the CRC-32 (IEEE 802.3, the one ``zlib.crc32`` computes) of the bytes
before it, little-endian. A request body is ``cmd, seq, arg0 (u32), arg1 (u32), payload``; a
response body is ``status, seq, payload``. Every multi-byte field is little-endian.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "END", "ESC", "ESC_END", "ESC_ESC", "Cmd", "Status", "STATUS_TEXT", "WRITE_CMDS",
    "REQ_HEADER_BYTES", "RESP_HEADER_BYTES", "CRC_BYTES", "MAX_PAYLOAD", "CRC_RESIDUE",
    "INFO_MAGIC", "PROTOCOL_VERSION", "INFO_WORDS", "MAX_REG_WORDS", "REG_SPACE", "RESET_CYCLES",
    "Info",
    "crc32", "slip_encode", "slip_decode", "request_body", "response_body", "parse_request",
    "parse_response", "FrameError", "config_hash",
]

END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD


class Cmd(IntEnum):
    """Request commands (``arg0``, ``arg1``, payload → response payload)."""

    INFO = 0x00       # -, -, - -> INFO_WORDS little-endian u32 words (see Info)
    READ_MEM = 0x01   # byte address, byte count, - -> the bytes
    WRITE_MEM = 0x02  # byte address, byte count, the bytes -> -
    READ_REG = 0x03   # register offset, word count (1..64), - -> that many u32 values
    WRITE_REG = 0x04  # register offset, value, - -> -
    RUN = 0x05        # instruction address, instruction count, - -> - (writes both, then start)
    RESET = 0x06      # -, -, - -> - (holds the core in reset for RESET_CYCLES; buffers undefined)


WRITE_CMDS = frozenset({Cmd.WRITE_MEM, Cmd.WRITE_REG, Cmd.RUN, Cmd.RESET})
"""Commands with side effects: a repeat of the last ``seq`` is acknowledged, not redone."""


class Status(IntEnum):
    """Response status codes."""

    OK = 0
    BAD_CRC = 1     # the request frame's CRC did not match (its seq byte is not trusted)
    BAD_FRAME = 2   # too short, too long, or a bad escape sequence
    BAD_CMD = 3     # unknown command
    BAD_LEN = 4     # byte count not a positive multiple of 4 up to MAX_PAYLOAD, or payload size
    BAD_ADDR = 5    # address not 4-byte aligned, or the range leaves the DRAM / register space
    BAD_COUNT = 6   # READ_REG word count not in 1..MAX_REG_WORDS


STATUS_TEXT = {
    Status.OK: "ok",
    Status.BAD_CRC: "the device received a frame with a bad CRC",
    Status.BAD_FRAME: "the device received a malformed frame (length or escape sequence)",
    Status.BAD_CMD: "unknown command",
    Status.BAD_LEN: "byte count must be a positive multiple of 4 up to the payload limit",
    Status.BAD_ADDR: "address must be 4-byte aligned and the range inside device memory "
                     "(or the register space)",
    Status.BAD_COUNT: "register word count must be in 1..64",
}

REQ_HEADER_BYTES = 10
RESP_HEADER_BYTES = 2
CRC_BYTES = 4
MAX_PAYLOAD = 4096
"""Largest READ_MEM / WRITE_MEM byte count in one frame (the bridge buffers one write frame)."""

MAX_REG_WORDS = 64
REG_SPACE = 0x100
RESET_CYCLES = 16

CRC_RESIDUE = 0x2144DF1C
"""``crc32(body + crc32(body).to_bytes(4, "little"))`` for any body: the bridge checks it."""

INFO_MAGIC = 0x41525354  # b"TSRA" little-endian
PROTOCOL_VERSION = 1
INFO_WORDS = 8

_REQ = struct.Struct("<BBII")
_RESP = struct.Struct("<BB")
_CRC = struct.Struct("<I")


class FrameError(ValueError):
    """A received frame is malformed or fails its CRC (the host link retries on it)."""


@dataclass(frozen=True)
class Info:
    """The INFO block a device returns: what it is and what it was built for."""

    magic: int
    version: int
    max_payload: int
    dram_bytes: int
    config_hash: int
    sys_clk_hz: int
    core_clk_hz: int
    baud: int

    @classmethod
    def unpack(cls, data: bytes) -> Info:
        if len(data) != 4 * INFO_WORDS:
            raise FrameError(f"INFO payload must be {4 * INFO_WORDS} bytes, not {len(data)}")
        w = struct.unpack(f"<{INFO_WORDS}I", data)
        return cls(magic=w[0], version=w[1] & 0xFF, max_payload=w[2], dram_bytes=w[3],
                   config_hash=w[4], sys_clk_hz=w[5], core_clk_hz=w[6], baud=w[7])

    def words(self) -> tuple[int, ...]:
        return (self.magic, self.version, self.max_payload, self.dram_bytes, self.config_hash,
                self.sys_clk_hz, self.core_clk_hz, self.baud)


def config_hash(config) -> int:
    """A 32-bit hash of the hardware fields of a :class:`~tessera.config.Config`.

    ``clock_mhz`` is left out: it describes the build, not the hardware's behaviour, and the
    device reports its real clocks itself.
    """
    fields = {k: v for k, v in config.to_dict().items() if k != "clock_mhz"}
    blob = json.dumps(fields, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def slip_encode(body: bytes) -> bytes:
    """``END + escaped(body) + END``."""
    esc = body.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + esc + b"\xc0"


def slip_decode(chunk: bytes) -> bytes:
    """Unescape the bytes between two ``END`` s; raise :class:`FrameError` on a bad escape."""
    if chunk.replace(b"\xdb\xdc", b"").replace(b"\xdb\xdd", b"").find(b"\xdb") >= 0:
        raise FrameError("bad SLIP escape sequence")
    return chunk.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


def _with_crc(body: bytes) -> bytes:
    return body + _CRC.pack(crc32(body))


def request_body(cmd: int, seq: int, arg0: int = 0, arg1: int = 0, payload: bytes = b"") -> bytes:
    """The unescaped body of a request, CRC included."""
    return _with_crc(_REQ.pack(cmd, seq & 0xFF, arg0 & 0xFFFFFFFF, arg1 & 0xFFFFFFFF)
                     + bytes(payload))


def response_body(status: int, seq: int, payload: bytes = b"") -> bytes:
    """The unescaped body of a response, CRC included."""
    return _with_crc(_RESP.pack(status, seq & 0xFF) + bytes(payload))


def _check_crc(body: bytes, header: int) -> None:
    if len(body) < header + CRC_BYTES:
        raise FrameError(f"frame of {len(body)} bytes is shorter than its header and CRC "
                         f"({header + CRC_BYTES} bytes)")
    if crc32(body) != CRC_RESIDUE:
        raise FrameError("CRC mismatch")


def parse_request(body: bytes) -> tuple[int, int, int, int, bytes]:
    """``(cmd, seq, arg0, arg1, payload)`` of an unescaped request body (CRC checked)."""
    _check_crc(body, REQ_HEADER_BYTES)
    cmd, seq, a0, a1 = _REQ.unpack_from(body)
    return cmd, seq, a0, a1, body[REQ_HEADER_BYTES:-CRC_BYTES]


def parse_response(body: bytes) -> tuple[int, int, bytes]:
    """``(status, seq, payload)`` of an unescaped response body (CRC checked)."""
    _check_crc(body, RESP_HEADER_BYTES)
    status, seq = _RESP.unpack_from(body)
    return status, seq, body[RESP_HEADER_BYTES:-CRC_BYTES]
