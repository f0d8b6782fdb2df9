"""Shared set-up of the Verilator tier: every test here needs Verilator and fails (never skips)
when it is missing."""

from __future__ import annotations

import os

import pytest

from tessera.errors import HwError


def pytest_collection_modifyitems(config, items) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.rtl)


@pytest.fixture(autouse=True, scope="session")
def _verilator_present() -> None:
    from tessera.sim.verilator_build import verilator_version
    from tessera.tools import verilator_root

    try:
        verilator_root()
        verilator_version()
    except HwError as exc:
        pytest.fail(f"tests/rtl needs Verilator: {exc}", pytrace=False)
