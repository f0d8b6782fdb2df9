"""Limiting the BLAS thread pool while the functional simulator executes (threadpoolctl)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["blas_limit"]

_controller = None


@contextlib.contextmanager
def blas_limit(threads: int | None) -> Iterator[None]:
    """Run the body with at most ``threads`` BLAS threads (None: leave the pool alone)."""
    global _controller
    if threads is None:
        yield
        return
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # a dependency of tessera; results are the same, only slower
            warnings.warn("threadpoolctl (a dependency of tessera) is not installed: fsim "
                          "cannot limit BLAS threads and may run several times slower on a "
                          "busy machine; pip install threadpoolctl", RuntimeWarning,
                          stacklevel=3)
            _controller = False
        else:
            _controller = ThreadpoolController()
    if _controller is False:
        yield
        return
    with _controller.limit(limits=threads, user_api="blas"):
        yield
