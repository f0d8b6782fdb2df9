"""Per-thread reusable buffers for large temporaries (conv patches, padded inputs, packed
operands): fresh memory is expensive to fault in (the patches of one VGG-19 layer are ~115 MB,
about 0.1 s of page faults on this kind of machine, every call)."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["scratch", "release_scratch"]

_LOCAL = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` in this thread's reusable buffer ``slot``: valid
    until the next request for the same slot (the buffer only grows)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, 64), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Free this thread's buffers, every slot."""
    _LOCAL.bufs = {}
