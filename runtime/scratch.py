"""Fresh memory is expensive to fault in: per-thread reusable buffers for large temporaries
(conv patches, padded inputs, packed operands; the patches of one VGG-19 layer are ~115 MB,
about 0.1 s of page faults on this kind of machine, every call), and :func:`small_pages`.

:func:`small_pages` turns numpy's transparent-huge-page advice (``madvise(MADV_HUGEPAGE)`` on
every array of 4 MB and more; numpy's ``NUMPY_MADVISE_HUGEPAGE``, here switched at run time)
off inside a block. On a VM whose balloon reports free memory to the host (virtio free page
reporting: this 2-core machine), memory the guest has not touched for a few seconds is the
host's again, and faulting a 2 MB huge page back in costs ~10x per byte what 4 KB pages do.
Measured (``np.ones`` of 1 GB, fresh process, after 12 s idle / right after another process
freed its memory): huge pages 2.94 s / 0.28 s, 4 KB pages 0.54-0.63 s / 0.54 s; streaming
over the array afterwards 0.12 s either way. A cold-cache light VGG-19 compile (1.4 GB peak)
spends ~27% of its CPU time zeroing fresh huge pages (``perf``: ``clear_page_erms``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["scratch", "release_scratch", "small_pages"]

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


def _hugepage_switch():
    """numpy's run-time switch of its huge-page advice (returns the previous setting), or None
    if this numpy has none."""
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    return getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)


_PAGES_LOCK = threading.Lock()
_PAGES_STATE = {"depth": 0, "before": True}


@contextmanager
def small_pages(enabled: bool = True) -> Iterator[None]:
    """numpy arrays allocated inside the block get no huge-page advice (module docstring);
    the previous setting is back when the last of nested or concurrent blocks ends. No effect
    with ``enabled=False`` or on a numpy without the switch (results are the same either
    way: only page-fault costs differ)."""
    switch = _hugepage_switch() if enabled else None
    if switch is None:
        yield
        return
    with _PAGES_LOCK:
        if _PAGES_STATE["depth"] == 0:
            _PAGES_STATE["before"] = bool(switch(False))
        _PAGES_STATE["depth"] += 1
    try:
        yield
    finally:
        with _PAGES_LOCK:
            _PAGES_STATE["depth"] -= 1
            if _PAGES_STATE["depth"] == 0:
                switch(_PAGES_STATE["before"])
