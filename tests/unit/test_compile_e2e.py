"""End to end on the functional simulator: ONNX -> compile -> run, bit-exact with the
quantiser's integer reference; artifacts; the command line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tessera.cli import main
from tessera.compiler import reference, zoo
from tessera.compiler.api import compile as tcompile
from tessera.errors import ArtifactError, InputError
from tessera.runtime.model import load


def _io(proto, n_cal=4, seed=0):
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n_cal)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    return cal, x


def _ref(model, x):
    out = reference.run(model.quantized.graph, x)
    return out if isinstance(out, list) else [out[n] for n in model.output_names]


@pytest.mark.parametrize("name, config", [
    ("resnet_tiny", "tiny"), ("resnet_tiny", "default"), ("mobilenet_tiny", "default"),
    ("small_cnn", "tiny"), ("small_cnn", "default"), ("mlp", "tiny"),
])
def test_compiled_model_equals_integer_reference(name, config):
    """Integer outputs bit-exact; float outputs within float32 rounding of the reference."""
    proto = getattr(zoo, name)()
    cal, x = _io(proto)
    model = tcompile(proto, config=config, calibration=cal)
    got = model.run(x, device="fsim")
    want = _ref(model, x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        if np.issubdtype(a.dtype, np.integer):
            assert np.array_equal(a, b)
        else:  # float tails (dequantize, softmax) run as LLVM kernels: within float rounding
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    accel = [s for s in model.plan.steps if s.kind == "accel"]
    assert accel, "some layers must run on the accelerator"
    model.close()


def test_single_buffered_lowering_gives_the_same_result():
    proto = zoo.resnet_tiny()
    cal, x = _io(proto)
    a = tcompile(proto, config="tiny", calibration=cal)
    b = tcompile(proto, config="tiny", calibration=cal, double_buffer=False)
    assert all(s.info["double_buffer"] is False for s in b.plan.steps if s.kind == "accel")
    for u, v in zip(a.run(x), b.run(x)):
        assert np.array_equal(u, v)


def test_profile_reports_every_step(tmp_path):
    proto = zoo.small_cnn()
    cal, x = _io(proto)
    model = tcompile(proto, config="default", calibration=cal)
    outs, prof = model.run(x, device="fsim", profile=True)
    assert [p.name for p in prof.layers] == [s.name for s in model.plan.steps]
    acc = [p for p in prof.layers if p.kind == "accel"]
    # fsim's cycles come from the cycle model (tests/rtl/test_timing_model.py checks them)
    assert all(p.cycles > p.counters["gemm_steps"] > 0 for p in acc)
    assert "accelerator share of MACs" in prof.table()


def test_save_load_round_trip_and_bad_files(tmp_path):
    proto = zoo.mlp()
    cal, x = _io(proto)
    model = tcompile(proto, config="tiny", calibration=cal)
    path = tmp_path / "m.tsr"
    model.save(path)
    back = load(path)
    for a, b in zip(model.run(x), back.run(x)):
        assert np.array_equal(a, b)
    raw = path.read_bytes()
    (tmp_path / "cut.tsr").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load(tmp_path / "cut.tsr")
    (tmp_path / "junk.tsr").write_bytes(b"\x89PNG" + raw[4:])
    with pytest.raises(ArtifactError, match="not a Tessera compiled model"):
        load(tmp_path / "junk.tsr")


def test_bad_feeds_are_rejected():
    proto = zoo.mlp()
    cal, x = _io(proto)
    model = tcompile(proto, config="tiny", calibration=cal)
    name = model.input_names[0]
    with pytest.raises(InputError, match="missing"):
        model.run({})
    with pytest.raises(InputError, match="must have shape"):
        model.run({name: np.zeros((3, 3), np.float32)})
    bad = dict(x)
    bad[name] = bad[name].copy()
    bad[name].flat[0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        model.run(bad)
    for dtype in (np.float64, np.int8):  # no silent cast
        with pytest.raises(InputError, match=f"must be float32, not {np.dtype(dtype).name}"):
            model.run({name: x[name].astype(dtype)})


def test_cli_compile_run_profile(tmp_path, capsys):
    proto = zoo.small_cnn()
    cal, x = _io(proto)
    onnx.save(proto, tmp_path / "m.onnx")
    name = proto.graph.input[0].name
    np.savez(tmp_path / "cal.npz", **{name: np.stack([c[name] for c in cal])})
    np.save(tmp_path / "x.npy", x[name])
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.tsr"),
                 "--config", "tiny", "--calibration", str(tmp_path / "cal.npz"),
                 "--dump-ir", "partition", "--dump-ir", "plan_memory"]) == 0
    dumped = capsys.readouterr().out
    assert "# IR after partition" in dumped and "target=accel" in dumped
    assert "# IR after plan_memory" in dumped and "# arena:" in dumped
    assert main(["run", str(tmp_path / "m.tsr"), "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npz")]) == 0
    out = capsys.readouterr().out
    assert "output" in out and "fsim" in out
    y = np.load(tmp_path / "y.npz")
    model = load(tmp_path / "m.tsr")
    assert np.array_equal(y[model.output_names[0]], model.run(x)[0])
    assert main(["profile", str(tmp_path / "m.tsr"), "--input", str(tmp_path / "x.npy")]) == 0
    assert "accelerator share of MACs" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "m.tsr"), "--input", str(tmp_path / "nope.npy")]) == 2


@pytest.mark.parametrize("seed", [7, 8])
def test_compiled_accuracy_no_worse_than_onnxruntime_static_int8(seed):
    """Held-out-style CNN (conv/BN/depthwise/residual/concat/avgpool/MLP/softmax, odd channels,
    strides): the compiled model's error on fsim, relative to the input-dependent part of the
    float output, is within 1.0x of onnxruntime's static int8 quantiser's."""
    from test_quant import _seeded_cnn, compiled_errors

    err_ours, err_theirs, model = compiled_errors(_seeded_cnn(seed), 16, 24)
    assert err_ours <= 1.0 * err_theirs
    assert any(s.kind == "accel" for s in model.plan.steps)


def test_narrow_first_layer_is_folded_and_stays_exact():
    """A 3-channel 3x3 stem runs as a 1x1 conv over 27 folded channels (fewer GEMM steps)."""
    proto = zoo.resnet_tiny()
    cal, x = _io(proto)
    model = tcompile(proto, config="default", calibration=cal)
    assert any(s.name.endswith(":fold") for s in model.plan.steps)
    stem = next(s for s in model.plan.steps if s.kind == "accel")
    assert stem.info["gemm_steps"] == 32 * 32 * 2  # 2 channel blocks, 1 tap per output pixel
    got = model.run(x)[0]
    np.testing.assert_allclose(got, _ref(model, x)[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["light_shufflenet.onnx", "light_squeezenet.onnx"])
def test_onnx_wheel_light_models_compile_and_run(name):
    """Compile coverage on architectures shipped with the onnx wheel (the larger ones are
    exercised the same way by hand; see the issue notes)."""
    path = next(p for p in zoo.light_models() if p.name == name)
    model = tcompile(str(path), config="default")
    assert model.meta["calibration"].startswith("random")
    specs = model.input_specs
    rng = np.random.default_rng(0)
    outs = model.run({k: rng.standard_normal(s).astype(np.float32)
                      for k, (s, _) in specs.items()})
    assert all(np.isfinite(o).all() for o in outs)
    assert any(s.kind == "accel" for s in model.plan.steps)
