"""The ULX3S bitstream from the PyPI tools, timing PASS at the preset's clock (slow: about 15
minutes on 2 cores). Run it with ``python3 -m pytest -m slow tests/rtl/test_soc_bitstream.py``."""

from __future__ import annotations

import json

import pytest

from tessera.cli import main

pytestmark = pytest.mark.slow


def test_ulx3s_bitstream_builds_and_meets_timing(tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["hw", "bitstream", "--board", "ulx3s", "--config", "ulx3s", "-o",
                 str(out)]) == 0
    bit = out / "tessera_ulx3s.bit"
    assert bit.is_file() and bit.stat().st_size > 100_000
    report = json.loads((out / "report.json").read_text())
    assert report["clocks"] and all(c["pass"] for c in report["clocks"].values())
    assert report["utilisation"]["MULT18X18D"][0] > 0
    assert "PASS" in (out / "report.txt").read_text()
    assert "wrote" in capsys.readouterr().out
