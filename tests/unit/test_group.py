"""Sibling convolutions in one accelerator stream (runtime/accel/group.py) and the
``group_siblings`` pass: bit-exact against the integer reference, faster than the layers apart
on the cycle model, and compiled models with grouped steps that save, load and run."""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera.compiler import reference, zoo
from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import ProgramError
from tessera.runtime.accel import ConvGeom, ConvShape, ConvTiles, Epilogue, conv2d_params
from tessera.runtime.accel.conv2d import conv2d_reference
from tessera.runtime.accel.group import (
    Member,
    conv2d_group,
    group_fits,
    measure_group,
    plan_group,
)
from tessera.runtime.accel.layer import LayerAddrs
from tessera.runtime.accel.tiling import measure, plan_conv2d

DEFAULT, TINY = Config.preset("default"), Config.preset("tiny")


def _pair(rng, c, o):
    wa = rng.integers(-128, 128, (o, c, 3, 3), dtype=np.int8)
    wb = rng.integers(-128, 128, (o, c, 1, 1), dtype=np.int8)
    ea = Epilogue(rng.integers(100, 3000, o), 18, pre_shift=5, lo=0)
    eb = Epilogue(rng.integers(100, 3000, o), 16, pre_shift=3)
    return ([dict(w=wa, bias=rng.integers(-1000, 1000, o), stride=2, padding=1, epilogue=ea),
             dict(w=wb, bias=rng.integers(-1000, 1000, o), stride=2, epilogue=eb)])


def test_siblings_in_one_stream_are_bit_exact():
    rng = np.random.default_rng(0)
    dev = open_device("fsim", TINY)
    for c, o, hw in ((8, 12, 13), (16, 8, 10)):
        x = rng.integers(-128, 128, (1, c, hw, hw), dtype=np.int8)
        layers = _pair(rng, c, o)
        ys, stats, _ = conv2d_group(dev, x, layers)
        for y, spec in zip(ys, layers):
            assert np.array_equal(y, conv2d_reference(
                x, spec["w"], spec["bias"], spec["stride"], spec.get("padding", 0),
                spec["epilogue"]))
        assert stats.macs == sum(ConvShape.make(x.shape, s["w"].shape, 2, s.get("padding", 0))
                                 .macs for s in layers)


def test_a_downsample_beside_its_sibling_costs_about_its_gemm_time():
    """ResNet-18's stage-3 pair on `default` (cycle model of the RTL): apart the 1x1 stride-2
    layer waits on its epilogue (below 85% of its bound); together both are above 90%."""
    rng = np.random.default_rng(1)
    layers = _pair(rng, 128, 256)
    shapes = [ConvShape.make((1, 128, 28, 28), s["w"].shape, 2, s.get("padding", 0))
              for s in layers]
    progs = [conv2d_params(DEFAULT, s["w"], s["bias"], s["epilogue"]).program for s in layers]
    apart = [measure(DEFAULT, sh, p, plan_conv2d(DEFAULT, ConvGeom.of(DEFAULT, sh), p))
             for sh, p in zip(shapes, progs)]
    steps = [ConvGeom.of(DEFAULT, sh).gemm_steps() for sh in shapes]
    assert steps[1] / apart[1] < 0.85
    members = [Member(sh, LayerAddrs(0, 0, 0), p, None) for sh, p in zip(shapes, progs)]
    tiles, cycles = plan_group(DEFAULT, members)
    assert cycles == measure_group(DEFAULT, [Member(m.shape, m.addrs, m.prog, t)
                                             for m, t in zip(members, tiles)])
    assert sum(steps) / cycles > 0.90


def test_members_that_cannot_share_a_stream_say_why():
    rng = np.random.default_rng(2)
    layers = _pair(rng, 16, 16)
    shapes = [ConvShape.make((1, 16, 12, 12), s["w"].shape, 2, s.get("padding", 0))
              for s in layers]
    progs = [conv2d_params(TINY, s["w"], s["bias"], s["epilogue"]).program for s in layers]
    addrs = LayerAddrs(0, 0, 0)
    mixed = [Member(shapes[0], addrs, progs[0], ConvTiles(1, 1, 1, regions=4)),
             Member(shapes[1], addrs, progs[1], ConvTiles(1, 1, 1, regions=2))]
    assert "same accumulator regions" in group_fits(TINY, mixed)
    single = [Member(shapes[0], addrs, progs[0], ConvTiles(1, 1, 1, False)),
              Member(shapes[1], addrs, progs[1], ConvTiles(1, 1, 1, False))]
    assert "double buffered" in group_fits(TINY, single)
    with pytest.raises(ProgramError, match="conv2d group of 2 layers does not fit"):
        from tessera.runtime.accel.group import emit_conv2d_group
        from tessera.runtime.builder import CommandBuilder

        emit_conv2d_group(CommandBuilder(TINY), mixed)


def test_a_compiled_model_with_grouped_steps_saves_loads_and_runs(tmp_path):
    proto = zoo.resnet_tiny()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(3)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    model = tessera.compile(proto, config=TINY, calibration=cal)
    grouped = [s for s in model.plan.steps if s.kind == "accel" and "members" in s.info]
    assert grouped and all(len(s.outputs) == 2 for s in grouped)
    where = {name: (op, at) for name, op, at in model.meta["partition"]}
    assert all(where[n] == ("qconv2d", "accelerator") for s in grouped for n in s.info["members"])
    want = reference.run(model.quantized.graph, cal[0])
    want = want[0] if isinstance(want, list) else want[model.output_names[0]]
    got = model.run(cal[0], device="fsim")[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    model.save(tmp_path / "m.tsr")
    again = tessera.load(tmp_path / "m.tsr")
    assert np.array_equal(again.run(cal[0], device="fsim")[0], got)
