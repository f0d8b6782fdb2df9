"""Reading user files safely and checking output paths before work starts.

A file named on the command line or passed to ``load`` is untrusted: only regular files are
read (a FIFO, a device such as ``/dev/zero`` or a directory is refused without blocking), at
most ``max_bytes`` of them, and every failure is the caller's project error type with a one-line
message naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tessera.errors import TesseraError

__all__ = ["open_regular", "read_regular", "check_writable", "MAX_INPUT_BYTES"]

MAX_INPUT_BYTES = 1 << 32


def open_regular(path: str | Path, what: str, error: type[TesseraError],
                 max_bytes: int = MAX_INPUT_BYTES) -> tuple[int, int]:
    """``(fd, size)`` of the regular file ``path``, opened for reading (close ``fd`` after)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {str(path)!r} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{what} {str(path)!r} has {st.st_size} bytes, more than {max_bytes}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_regular(path: str | Path, what: str, error: type[TesseraError],
                 max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular`)."""
    fd, size = open_regular(path, what, error, max_bytes)
    try:
        chunks, got = [], 0
        while got < size:
            chunk = os.pread(fd, size - got, got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def check_writable(path: str | Path, what: str, error: type[TesseraError]) -> None:
    """Raise ``error`` unless a file can be created at ``path`` (its directory exists and is
    writable, and ``path`` is not a directory)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise error(f"cannot write {what} {str(path)!r}: it is a directory")
    if not parent.is_dir():
        raise error(f"cannot write {what} {str(path)!r}: directory {str(parent)!r} does not "
                    f"exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"cannot write {what} {str(path)!r}: directory {str(parent)!r} is not "
                    f"writable")
