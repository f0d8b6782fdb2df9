"""``tessera explore``: the design space, the results table, resuming, the plot and the CLI."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

import tessera
from tessera.cli import main
from tessera.compiler.explore import (
    ResultsDB,
    explore,
    grid_points,
    pareto_front,
    pareto_plot,
    parse_grid,
    random_configs,
)
from tessera.compiler.explore.evaluate import Task, run_task
from tessera.compiler.explore.hwcost import HwCost
from tessera.config import Config
from tessera.errors import CompileError, ConfigError, ExploreError, InputError
from tessera.sim.timing import DramTiming

# two configs x two DRAM latencies of the smallest zoo model (local processes against Dask:
# test_explore_dask.py)
GRID = ["mem_bus_bits=64,128", "read_latency=8,64"]


def test_grid_specs_are_parsed_and_checked():
    assert parse_grid(["log_block=4,5", "read_latency=16, 64", "beats_per_cycle=0.5"]) == {
        "log_block": [4, 5], "read_latency": [16, 64], "beats_per_cycle": [0.5]}
    for bad, msg in [(["nope=1"], "Config field .* or a DRAM knob"),
                     (["log_block"], "FIELD=V1,V2"), (["log_block="], "at least one value"),
                     (["log_block=4,x"], "must be an integer, not 'x'"),
                     (["log_block=4", "log_block=5"], "given twice"),
                     (["log_block=4,4"], "repeats")]:
        with pytest.raises(ConfigError, match=msg):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="read_latency must be an integer in"):
        grid_points(parse_grid(["read_latency=0"]))


def test_grid_points_keep_invalid_combinations_with_their_error():
    pts = grid_points(parse_grid(["log_block=3,4", "read_latency=16,64"]))
    assert len(pts) == 4
    bad = [p for p in pts if p.config is None]
    assert len(bad) == 2 and all("GEMM second word" in p.error for p in bad)
    good = [p for p in pts if p.config is not None]
    assert {p.dram for p in good} == {DramTiming(16), DramTiming(64)}
    assert all(p.config == Config.preset("default") for p in good)
    assert json.loads(bad[0].config_json)["log_block"] == 3


def test_random_configs_are_valid_distinct_seeded_and_cover_the_range():
    a = random_configs(40, seed=3)
    assert a == random_configs(40, seed=3) and a != random_configs(40, seed=4)
    assert len(set(a)) == 40
    assert {c.mem_bus_bits for c in a} == {32, 64, 128, 256, 512}
    assert {c.block_in for c in a} >= {2, 4, 8, 16, 32, 64}
    assert min(c.batch for c in a) == 1 and max(c.batch for c in a) >= 8
    assert min(c.dep_queue_depth for c in a) == 1
    for c in a:
        assert Config.from_json(c.to_json()) == c
        assert 32 <= min(c.inp_depth, c.wgt_depth, c.acc_depth) and c.uop_depth >= 128


def test_pareto_front_keeps_only_undominated_points():
    rows = [{"lut": 10, "cycles": 100}, {"lut": 20, "cycles": 50}, {"lut": 20, "cycles": 60},
            {"lut": 30, "cycles": 70}, {"lut": 40, "cycles": 10}, {"lut": None, "cycles": 1}]
    assert [(r["lut"], r["cycles"]) for r in pareto_front(rows)] == [(10, 100), (20, 50),
                                                                    (40, 10)]


def test_pareto_plot_writes_a_png(tmp_path):
    rows = [{"model": m, "label": f"cfg{k}", "read_latency": 16, "beats_per_cycle": 1.0,
             "lut": 1000 * (k + 1), "cycles": 10_000 // (k + 1) + 7 * k} for m in ("a", "b")
            for k in range(5)]
    out = pareto_plot(rows, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ExploreError, match="nothing to plot"):
        pareto_plot([{"model": "a", "lut": None, "cycles": 5}], tmp_path / "q.png")


def test_pareto_plot_labels_every_point(tmp_path, monkeypatch):
    import matplotlib.axes

    texts = []
    annotate = matplotlib.axes.Axes.annotate

    def spy(self, text, *args, **kwargs):
        texts.append(text)
        return annotate(self, text, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", spy)
    rows = [{"model": "a", "label": f"cfg{k}", "read_latency": lat, "beats_per_cycle": 1.0,
             "lut": 1000 * (k + 1), "cycles": 10_000 // (k + 1) + 3000 * (k % 2) + lat}
            for k in range(4) for lat in (16, 64)]
    pareto_plot(rows, tmp_path / "p.png")
    # the DRAM timing varies, so it is part of every label; dominated points are labelled too
    assert sorted(texts) == sorted(f"cfg{k} L{lat}" for k in range(4) for lat in (16, 64))


def test_results_db_rejects_foreign_files(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="cannot be used"):
        ResultsDB(junk)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE results (model TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="without the column"):
        ResultsDB(other)


def test_sweep_fills_the_table_and_resumes(tmp_path, monkeypatch):
    db = tmp_path / "r.sqlite"
    rows = explore(["mlp"], GRID + ["log_block=3,4"], db=db)
    assert len(rows) == 8
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 4 and all(r["cycles"] > 0 and 0 < r["utilisation"] < 1 for r in good)
    # latency costs cycles, a wider bus saves them
    by = {(json.loads(r["config_json"])["mem_bus_bits"], r["read_latency"]): r["cycles"]
          for r in good}
    assert by[(64, 64)] > by[(64, 8)] and by[(128, 8)] < by[(64, 8)]
    bad = [r for r in rows if r["error"] is not None]
    assert all(r["error"].startswith("config: ") and r["cycles"] is None for r in bad)
    conn = sqlite3.connect(db)
    cols = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(results)")}
    assert {"model": "TEXT", "config_json": "TEXT", "cycles": "INTEGER", "utilisation": "REAL",
            "lut": "INTEGER", "ff": "INTEGER", "bram": "INTEGER", "dsp": "INTEGER",
            "fmax_mhz": "REAL"}.items() <= cols.items()
    (n,) = conn.execute("SELECT COUNT(*) FROM results").fetchone()
    assert n == 8
    stored = conn.execute("SELECT config_json FROM results WHERE error IS NULL").fetchone()[0]
    assert Config.from_json(stored) in (Config.preset("default"),
                                        Config(**{**Config.preset("default").to_dict(),
                                                  "mem_bus_bits": 128}))
    conn.close()

    def boom(task):  # a resumed sweep must not evaluate anything already in the table
        raise AssertionError(f"re-ran {task}")

    monkeypatch.setattr("tessera.compiler.explore.sweep.run_task", boom)
    again = explore(["mlp"], GRID + ["log_block=3,4"], db=db)
    assert sorted(again, key=str) == sorted(rows, key=str)


def test_resume_runs_only_missing_points(tmp_path, monkeypatch):
    db = tmp_path / "r.sqlite"
    explore(["mlp"], ["read_latency=8"], db=db)
    seen = []
    real = run_task

    def spy(task):
        seen.extend(p.dram.read_latency for p in task.points)
        return real(task)

    monkeypatch.setattr("tessera.compiler.explore.sweep.run_task", spy)
    rows = explore(["mlp"], ["read_latency=8,32"], db=db)
    assert seen == [32] and len(rows) == 2


def test_failures_are_rows_not_crashes(tmp_path):
    onnx_bad = tmp_path / "bad.onnx"
    onnx_bad.write_bytes(b"\x08\x07garbage")
    rows = explore(["mlp", str(onnx_bad)], ["read_latency=16"])
    by = {r["model"]: r for r in rows}
    assert by["mlp"]["error"] is None
    assert by[str(onnx_bad)]["error"].startswith("compile: ") and by[str(onnx_bad)]["cycles"] \
        is None
    with pytest.raises(CompileError, match="zoo name"):
        explore(["no_such_model"])
    with pytest.raises(ExploreError, match="needs LUT counts"):
        explore(["mlp"], plot=tmp_path / "x.png")
    with pytest.raises(ExploreError, match="jobs"):
        explore(["mlp"], jobs=0)
    with pytest.raises(ExploreError, match="scheduler must be an address"):
        explore(["mlp"], scheduler="localhost:1")


def test_run_task_measures_cycles_the_device_reports():
    cfg = Config.preset("tiny")
    (p,) = grid_points(parse_grid(["read_latency=40"]), cfg)
    (row,) = run_task(Task("mlp", (p,)))
    from tessera.compiler.explore.evaluate import feeds_for, load_model

    proto = load_model("mlp")
    model = tessera.compile(proto, config=cfg, calibration=feeds_for(proto, 0, 2))
    (x,) = feeds_for(proto, 1, 1)
    _, prof = model.run(x, device="fsim", profile=True, read_latency=40)
    assert row["cycles"] == prof.totals()["cycles"]
    assert np.isclose(row["utilisation"], prof.totals()["utilisation"])


def test_cli_explore_prints_the_table_and_writes_the_db(tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    assert main(["explore", "-q", "--models", "mlp", "--grid", "read_latency=16,32",
                 "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "2 point(s), 0 with errors" in out
    assert main(["explore", "-q", "--models", "mlp", "--grid", "bogus=1"]) == 2
    assert "grid field must be a Config field" in capsys.readouterr().err


def test_a_sweep_asking_for_more_figures_re_runs_points_without_them(tmp_path, monkeypatch):
    db = tmp_path / "r.sqlite"
    explore(["mlp"], ["read_latency=8"], config="tiny", db=db)
    with ResultsDB(db) as store:
        assert len(store.done()) == 1 and store.done(need=("lut",)) == set()
        store.add([{**store.rows()[0], "read_latency": 9, "error": "run: boom"}])
        assert len(store.done(need=("lut",))) == 1  # the failed one
        assert store.done(retry_failed=True) == {k for k in store.done() if k[2] == 8}
    monkeypatch.setattr("tessera.compiler.explore.hwcost.area",
                        lambda cfg, timeout=None: HwCost(10, 20, 3, 4))
    (row,) = explore(["mlp"], ["read_latency=8"], config="tiny", db=db, area=True)
    assert (row["lut"], row["dsp"]) == (10, 4) and row["cycles"] > 0
