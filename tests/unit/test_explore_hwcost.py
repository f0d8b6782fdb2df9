"""Area and Fmax figures of a sweep: cached by the core's Verilog, one tool run per design.

The tools are replaced by counting stand-ins here; the real Yosys/nextpnr runs are the slow
tests of tests/hw/test_fmax.py.
"""

from __future__ import annotations

import pytest

from tessera.compiler.explore import explore, hwcost
from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.fmax import FmaxReport, parse_nextpnr_log

CELLS = {"LUT4": 1234, "TRELLIS_FF": 567, "DP16KD": 8, "MULT18X18D": 9, "CCU2C": 1}


@pytest.fixture
def tools(monkeypatch, tmp_path):
    def cache_dir(name):  # this test's own area/Fmax cache (the kernel caches stay warm)
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        return path

    monkeypatch.setattr(hwcost, "cache_dir", cache_dir)
    calls = {"synth": 0, "pnr": 0}

    def verilog(cfg):
        return f"module tessera_core(); // {cfg.log_block} {cfg.mem_bus_bits}\nendmodule\n"

    def synth(text, top, timeout=None):
        calls["synth"] += 1
        return dict(CELLS, LUT4=CELLS["LUT4"] + len(text))

    def pnr(cfg, workdir, target_mhz=100.0, timeout=None, verilog=None):
        assert verilog == hwcost._verilog(cfg)  # the cached Verilog, not a regenerated one
        calls["pnr"] += 1
        return FmaxReport(cfg, 87.5, "", True, 3.0, dict(CELLS))

    monkeypatch.setattr(hwcost, "_verilog", verilog)
    monkeypatch.setattr("tessera.hw.synth.synth_ecp5", synth)
    monkeypatch.setattr("tessera.hw.fmax.core_fmax", pnr)
    return calls


def test_area_is_cached_by_the_verilog(tools):
    a = Config.preset("tiny")
    b = Config(**{**a.to_dict(), "mem_bus_bits": 128})
    first = hwcost.area(a)
    assert first == hwcost.area(a) and tools["synth"] == 1
    assert (first.ff, first.bram, first.dsp) == (567, 8, 9) and first.fmax_mhz is None
    assert hwcost.area(b).lut != first.lut and tools["synth"] == 2
    # the same Verilog under another clock (not a hardware parameter) is not synthesised again
    hwcost.area(Config(**{**a.to_dict(), "clock_mhz": 50.0}))
    assert tools["synth"] == 2


def test_fmax_is_cached_and_gives_the_area_too(tools):
    cfg = Config.preset("tiny")
    got = hwcost.fmax(cfg)
    assert got.fmax_mhz == 87.5 and got.lut == 1234 and tools["pnr"] == 1
    assert hwcost.fmax(cfg) == got and tools["pnr"] == 1
    assert hwcost.area(cfg).lut == 1234 and tools["synth"] == 0


def test_a_damaged_cache_entry_is_measured_again(tools, tmp_path):
    cfg = Config.preset("tiny")
    hwcost.area(cfg)
    for entry in (tmp_path / hwcost.CACHE_NAME).glob("area-*.json"):
        entry.write_text("{not json")
    hwcost.area(cfg)
    assert tools["synth"] == 2


def test_sweep_rows_carry_area_and_fmax(tools):
    rows = explore(["mlp"], ["read_latency=16"], config="tiny", fmax=True)
    (row,) = rows
    assert (row["lut"], row["ff"], row["bram"], row["dsp"], row["fmax_mhz"]) == \
        (1234, 567, 8, 9, 87.5)
    assert row["error"] is None and row["cycles"] > 0


def test_a_failed_synthesis_keeps_the_cycles(tools, monkeypatch):
    def broken(text, top, timeout=None):
        raise HwError("synth_ecp5 of tessera_core failed (exit 1)")

    monkeypatch.setattr("tessera.hw.synth.synth_ecp5", broken)
    (row,) = explore(["mlp"], ["read_latency=16"], config="tiny", area=True)
    assert row["error"].startswith("area: synth_ecp5") and row["lut"] is None
    assert row["cycles"] > 0


def test_fmax_is_read_from_the_last_report_of_the_log():
    log = ("Info: Max frequency for clock '$glbnet$clk': 41.20 MHz (FAIL at 100.00 MHz)\n"
           "Info: Routing...\n"
           "Info: Max frequency for clock '$glbnet$clk': 38.91 MHz (FAIL at 100.00 MHz)\n")
    assert parse_nextpnr_log(log)[0] == 38.91
    with pytest.raises(HwError, match="no 'Max frequency"):
        parse_nextpnr_log("Info: nothing here\n")
