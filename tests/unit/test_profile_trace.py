"""The profile's model, estimate and roofline columns, the Chrome trace and the roofline plot
(``tessera.runtime.profile``, ``tessera.runtime.trace``) on the fsim device."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tessera
from tessera.cli import main
from tessera.compiler import zoo
from tessera.errors import InputError


@pytest.fixture(scope="module")
def compiled():
    proto = zoo.resnet_tiny()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(3)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config="default", calibration=cal)
    _, prof = model.run(x, device="fsim", profile=True, read_latency=30, beats_per_cycle=0.5)
    yield model, x, prof
    model.close()


def test_profile_columns(compiled):
    _, _, prof = compiled
    acc = [p for p in prof.layers if p.kind == "accel"]
    assert len(acc) > 5
    for p in acc:
        assert p.predicted == p.cycles > 0  # fsim's cycles are the model's
        assert p.estimate is not None and p.estimate > 0  # the tiler's cost model
        roof = p.roofline(prof.config, prof.period)
        # the roofline bound is a true lower bound of the layer's cycles
        assert 0 < roof.bound <= p.cycles
        assert roof.bound >= p.macs / prof.config.macs_per_gemm_step
        assert roof.macs_per_cycle == pytest.approx(p.macs / p.cycles)
    t = prof.totals()
    assert t["predicted_cycles"] == t["cycles"]
    assert 0 < t["attainment"] <= 1
    table = prof.table()
    header = table.splitlines()[0]
    for col in ("cycles", "model", "tiler est", "bound", "attain", "util"):
        assert col in header
    assert prof.period == 2  # beats_per_cycle=0.5


def test_trace_is_the_model_timeline_and_agrees_with_the_counters(compiled, tmp_path):
    _, _, prof = compiled
    path = tmp_path / "run.json"
    prof.write_trace(path)
    data = json.loads(path.read_text())
    events = [e for e in data["traceEvents"] if e["ph"] == "X"]
    names = {e["args"]["name"]: e["tid"] for e in data["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"layers", "load", "compute", "store", "host"} <= set(names)
    us = 1 / prof.config.clock_mhz
    layer_slices = {e["name"]: e for e in events if e["tid"] == names["layers"]}
    for p in prof.layers:
        if p.kind != "accel":
            continue
        outer = layer_slices[p.name]
        assert outer["dur"] == pytest.approx(p.cycles * us)
        mine = [e for e in events if e["tid"] != names["layers"]
                and e["name"].startswith(p.name + ": ")]
        for e in mine:  # every interval lies inside its layer
            assert outer["ts"] - 1e-6 <= e["ts"] <= e["ts"] + e["dur"] <= \
                outer["ts"] + outer["dur"] + 1e-6
        for tid in (names["load"], names["compute"], names["store"]):
            spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in mine if e["tid"] == tid)
            assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:]))  # no overlap

        def cycles(tid, cats, mine=mine):
            return sum(e["args"]["cycles"] for e in mine if e["tid"] == tid
                       and e["cat"] in cats)

        c = p.counters  # the busy and waiting intervals add up to the timing counters
        assert cycles(names["compute"], ("pop",)) == c["compute_wait_cycles"]
        assert cycles(names["load"], ("dram", "exec")) == c["load_busy_cycles"]
        assert cycles(names["store"], ("exec",)) == c["store_busy_cycles"]
        assert any(e["name"] == f"{p.name}: GEMM" for e in mine)
    assert data["otherData"]["source"] == "cycle model"


def test_roofline_plot_is_written(compiled, tmp_path):
    _, _, prof = compiled
    path = tmp_path / "roof.png"
    prof.plot_roofline(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="cannot write the roofline plot"):
        prof.plot_roofline(tmp_path / "missing" / "roof.png")
    with pytest.raises(InputError, match="cannot write the trace"):
        prof.write_trace(tmp_path / "missing" / "run.json")


def test_profile_command_writes_trace_and_plot(compiled, tmp_path, capsys):
    model, x, _ = compiled
    path = tmp_path / "m.tsr"
    model.save(path)
    (name, value), = x.items()
    np.save(tmp_path / "x.npy", value)
    trace, plot = tmp_path / "t.json", tmp_path / "r.png"
    rc = main(["profile", str(path), "--input", str(tmp_path / "x.npy"), "--read-latency", "20",
               "--trace", str(trace), "--plot", str(plot)])
    out = capsys.readouterr().out
    assert rc == 0 and "tiler est" in out and f"wrote {trace}" in out
    assert json.loads(trace.read_text())["traceEvents"]
    assert plot.stat().st_size > 1000


def test_devices_are_cached_per_kind_and_options(compiled):
    """Each (kind, options) gets its own device: a later run with other DRAM timing must not
    reuse the first run's device (its cycles would be the first timing's)."""
    model, x, prof = compiled
    _, slow = model.run(x, device="fsim", profile=True, read_latency=60)
    _, fast = model.run(x, device="fsim", profile=True)
    _, again = model.run(x, device="fsim", profile=True, read_latency=30, beats_per_cycle=0.5)
    cycles = [p.totals()["cycles"] for p in (prof, slow, fast, again)]
    assert cycles[1] > cycles[2]  # 60-cycle reads are slower than the default 16
    assert cycles[0] == cycles[3]  # the same options give the same device back
    assert cycles[1] != cycles[0] != cycles[2]
    assert [p.dram.read_latency for p in (slow, fast)] == [60, 16]
