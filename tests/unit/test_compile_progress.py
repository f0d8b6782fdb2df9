"""The compile's progress bar (stderr, on request or on a terminal) and its phase times."""

from __future__ import annotations

import numpy as np

import tessera
from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile


def _cal():
    rng = np.random.default_rng(72)
    return [{"input": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(2)]


def test_progress_bar_and_phases(tmp_path, capsys):
    model = tcompile(zoo.mlp(), config="tiny", calibration=_cal(), progress=True)
    err = capsys.readouterr().err
    assert "compile: import" in err  # tqdm redraws at most every 0.1 s: later phases may not show
    phases = model.meta["compile_phases"]
    assert list(phases)[0] == "import" and list(phases)[-1] == "build_plan"
    assert "quantize" in phases and "plan_memory" in phases
    # the quantisation pass's parts are phases of their own, just before the rest of it
    names = list(phases)
    assert names.index("calibration") + 1 == names.index("bias_correction") \
        == names.index("quantize") - 1
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= model.meta["compile_seconds"]
    model.save(tmp_path / "m.tsr")  # the phases are valid file metadata
    assert tessera.load(tmp_path / "m.tsr").meta["compile_phases"] == phases
    tcompile(zoo.mlp(), config="tiny", calibration=_cal(), progress=False)
    assert capsys.readouterr().err == ""
    tcompile(zoo.mlp(), config="tiny", calibration=_cal())  # captured stderr is no terminal
    assert capsys.readouterr().err == ""
