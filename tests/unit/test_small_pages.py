"""runtime.scratch.small_pages: numpy's huge-page advice off inside, restored after."""

import threading

import numpy as np
import pytest

from tessera.runtime import scratch


def _advice() -> bool:
    switch = scratch._hugepage_switch()
    before = switch(True)
    switch(before)
    return bool(before)


@pytest.mark.skipif(scratch._hugepage_switch() is None, reason="numpy has no huge-page switch")
def test_small_pages_nests_and_restores():
    switch = scratch._hugepage_switch()
    for start in (True, False):
        switch(start)
        with scratch.small_pages():
            assert _advice() is False
            with scratch.small_pages():
                assert _advice() is False
            assert _advice() is False  # the outer block is still open
            np.ones(1 << 21, np.float32)  # allocations work as usual
        assert _advice() is start
        with scratch.small_pages(enabled=False):
            assert _advice() is start
    switch(True)


@pytest.mark.skipif(scratch._hugepage_switch() is None, reason="numpy has no huge-page switch")
def test_small_pages_restores_after_an_error_and_across_threads():
    switch = scratch._hugepage_switch()
    switch(True)
    with pytest.raises(RuntimeError):
        with scratch.small_pages():
            raise RuntimeError("boom")
    assert _advice() is True
    inside, release = threading.Event(), threading.Event()

    def worker():
        with scratch.small_pages():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    with scratch.small_pages():
        pass
    assert _advice() is False  # the worker's block is still open
    release.set()
    t.join()
    assert _advice() is True
