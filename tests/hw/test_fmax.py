"""Real Yosys and nextpnr-ecp5 runs of the core (slow: minutes each on 2 cores)."""

from __future__ import annotations

import pytest

from tessera.compiler.explore import hwcost
from tessera.config import Config
from tessera.hw.synth import ECP5_85F

pytestmark = pytest.mark.slow


def test_tiny_core_synthesises_places_and_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path))
    cfg = Config.preset("tiny")
    got = hwcost.fmax(cfg)
    assert 0 < got.lut <= ECP5_85F["LUT4"] and got.ff > 0 and got.dsp > 0 and got.bram > 0
    assert 5.0 < got.fmax_mhz < 500.0
    assert hwcost.area(cfg) == hwcost.HwCost(got.lut, got.ff, got.bram, got.dsp)
