"""Bad user inputs get one clear project error, raised before work is wasted: calibration
batches, feeds, the command line (one-line messages, documented exit codes, no tracebacks)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tessera.cli import EXIT_CODES, EXIT_INPUT, EXIT_OK, EXIT_USAGE, main
from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.errors import CompileError, InputError


def _cal(shape, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("value, match", [
    (np.inf, r"calibration batch 1, input 'input' contains NaN or infinity"),
    (1e38, r"calibration batch 1, input 'input' has a value of magnitude 1e\+38"),
    ("all-nan", r"calibration batch 1, input 'input' contains all NaN"),
])
def test_calibration_batches_are_checked(value, match):
    proto = zoo.mlp()
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    cal = _cal(shape)
    if value == "all-nan":
        cal[1]["input"][:] = np.nan
    else:
        cal[1]["input"].flat[3] = value
    with pytest.raises(InputError, match=match):
        tcompile(proto, config="tiny", calibration=cal)


def test_calibration_structure_is_checked():
    proto = zoo.mlp()
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    with pytest.raises(InputError, match="at least one batch"):
        tcompile(proto, config="tiny", calibration=[])
    with pytest.raises(InputError, match="not a single dict"):
        tcompile(proto, config="tiny", calibration=_cal(shape)[0])
    with pytest.raises(InputError, match=r"batch 0 must name exactly the inputs.*unknown \['x'\]"):
        tcompile(proto, config="tiny", calibration=[{**_cal(shape)[0], "x": 1}])
    with pytest.raises(InputError, match=r"batch 0, input 'input' must have shape"):
        tcompile(proto, config="tiny", calibration=[{"input": np.zeros(3, np.float32)}])
    with pytest.raises(CompileError, match="calibration_method must be one of"):
        tcompile(proto, config="tiny", calibration=_cal(shape), calibration_method="magic")


def _cli_model(tmp_path):
    proto = zoo.mlp()
    onnx.save(proto, tmp_path / "m.onnx")
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    np.savez(tmp_path / "cal.npz", input=np.stack([c["input"] for c in _cal(shape)]))
    np.save(tmp_path / "x.npy", _cal(shape, 1, seed=3)[0]["input"])
    return shape


def _one_line_error(capsys, match):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("tessera: error:") and match in err, err


def test_cli_errors_are_one_line_with_documented_codes(tmp_path, capsys):
    shape = _cli_model(tmp_path)
    assert main(["disasm", str(tmp_path / "missing.bin")]) == EXIT_INPUT
    _one_line_error(capsys, "cannot read instruction stream")
    assert main(["disasm", "/dev/zero"]) == EXIT_INPUT
    _one_line_error(capsys, "is not a regular file")
    # the output directory is checked before the (missing) model is even opened
    assert main(["compile", str(tmp_path / "nope.onnx"), "-o",
                 str(tmp_path / "missing" / "x.tsr")]) == EXIT_INPUT
    _one_line_error(capsys, "directory")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.tsr"),
                 "--config", "tiny", "--calibration", str(tmp_path / "x.npy")]) == EXIT_INPUT
    _one_line_error(capsys, "not an .npz archive")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.tsr"),
                 "--config", "tiny", "--calibration", str(tmp_path / "cal.npz")]) == EXIT_OK
    capsys.readouterr()
    np.save(tmp_path / "x64.npy", np.zeros(shape, np.float64))
    assert main(["run", str(tmp_path / "m.tsr"), "--input", str(tmp_path / "x64.npy")]) == \
        EXIT_INPUT
    _one_line_error(capsys, "must be float32, not float64")
    assert main(["run", str(tmp_path / "m.tsr"), "--input", str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "no" / "y.npz")]) == EXIT_INPUT
    _one_line_error(capsys, "cannot write output file")
    assert main(["run", str(tmp_path / "cal.npz"), "--input", str(tmp_path / "x.npy")]) == \
        EXIT_INPUT
    _one_line_error(capsys, "not a Tessera compiled model")
    assert main(["config", "no-such-preset"]) == EXIT_INPUT
    _one_line_error(capsys, "no-such-preset")


def test_cli_usage_errors_and_help(capsys):
    assert main(["no-such-command"]) == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err
    assert main(["run"]) == EXIT_USAGE
    assert "required" in capsys.readouterr().err
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit codes:" in out and EXIT_CODES.splitlines()[2].strip() in out


def test_feeds_are_checked_not_cast():
    model = tcompile(zoo.mlp(), config="tiny", calibration=None)
    (name,) = model.input_names
    shape = model.input_specs[name][0]
    with pytest.raises(InputError, match="must be a dict"):
        model.run([np.zeros(shape, np.float32)])
    with pytest.raises(InputError, match="must be float32, not int8"):
        model.run({name: np.zeros(shape, np.int8)})
    with pytest.raises(InputError, match="device must be a kind name or a Device"):
        model.run({name: np.zeros(shape, np.float32)}, device=3)
