"""Compiled models on the RTL: outputs equal the functional simulator's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile

pytestmark = pytest.mark.rtl


def run_both(proto, config: str, n_cal: int):
    """Compile ``proto`` on seeded N(0,1) calibration batches, run one seeded input on fsim and
    on the RTL, assert their outputs are equal; returns (model, fsim profile, RTL profile)."""
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(5)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n_cal)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tcompile(proto, config=config, calibration=cal)
    want, prof_f = model.run(x, device="fsim", profile=True)
    got, prof_r = model.run(x, device="verilator", profile=True)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    return model, prof_f, prof_r


@pytest.mark.parametrize("name, config", [("resnet_tiny", "default"),
                                          ("mobilenet_tiny", "tiny"), ("small_cnn", "default")])
def test_rtl_equals_fsim_on_compiled_models(name, config):
    model, prof_f, prof_r = run_both(getattr(zoo, name)(), config, 4)
    for pf, pr in zip(prof_f.layers, prof_r.layers):
        if pf.kind == "accel":
            assert pr.cycles and pr.cycles > 0
            for key in ("gemm_steps", "alu_steps", "dram_read_bytes", "dram_write_bytes",
                        "insns_retired"):
                assert pf.counters[key] == pr.counters[key], (pf.name, key)
    model.close()
