"""Passes: each on a tiny hand-built graph, reference execution compared before/after (the
lowering passes too: partition, layout assignment and memory planning keep the reference's
results)."""

import io

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.compiler.ir import GraphBuilder
from tessera.compiler.lower import (
    assign_layouts,
    fold_narrow_input,
    lowering_passes,
    partition,
    plan_memory,
)
from tessera.compiler.passes import GRAPH_PASSES, PASSES, run_pipeline
from tessera.compiler.quant import Quantize, quantize
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
    g = run_pipeline(_resblock(), GRAPH_PASSES, dump_after="fold_batchnorm", out=buf)
    assert "# IR after fold_batchnorm" in buf.getvalue()
    assert "= batchnorm(" not in buf.getvalue()
    assert g.ops() == ["conv2d", "conv2d"]
    with pytest.raises(CompileError, match="not in the pipeline"):
        run_pipeline(_resblock(), ["dce"], dump_after="fuse_residual")
    with pytest.raises(CompileError, match="unknown pass"):
        run_pipeline(_resblock(), ["nope"])


def _quantised(g, cal):
    return quantize(run_pipeline(g, GRAPH_PASSES), cal).graph


def _assert_same(g1, g2, feeds):
    before, after = reference.run(g1, feeds), reference.run(g2, feeds)
    for o in g1.outputs:
        np.testing.assert_array_equal(after[o], before[o])


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
    g2, changed = plan_memory(g)
    plan = g2.memory
    assert changed and plan.overlaps() == []
    assert set(plan.offsets) == set(outs) | {"x", y}
    total = sum(plan.sizes.values())
    assert plan.arena_size < total  # space was reused
    assert plan.arena_size >= 3 * g.tensors[outs[0]].nbytes  # outs[1] lives long
    assert plan.live["x"] == (-1, len(g.nodes)) and plan.live[y][1] == len(g.nodes)
    assert "# arena:" in g2.dump()
    assert g2.replace(nodes=g2.nodes).memory is None  # any rewrite drops the placement


def test_lowering_passes_keep_quantised_results():
    b = GraphBuilder()
    x = b.input("x", (1, 5, 6, 6))
    c1 = b.node("conv2d", [x, b.const("w1", _w(6, 5, 3, 3)), b.const("b1", _w(6))],
                pads=(1, 1, 1, 1), act="relu")
    c2 = b.node("conv2d", [c1, b.const("w2", _w(7, 6, 1, 1))], act="relu")
    p = b.node("global_avgpool", [c2])
    f = b.node("flatten", [p])
    d = b.node("dense", [f, b.const("w3", _w(3, 7))])
    g = b.build([d, c2])
    cal = [{"x": RNG.standard_normal((1, 5, 6, 6)).astype(np.float32)} for _ in range(4)]
    cfg = Config.preset("tiny")
    qg = _quantised(g, cal)
    feeds = cal[0]
    parted, changed = partition(qg, cfg)
    assert changed
    targets = {n.op: n.attrs["target"] for n in parted.nodes}
    assert targets["qconv2d"] == "accel" and targets["qdense"] == "accel"
    assert targets["quantize"] == "cpu"
    laid, changed = assign_layouts(parted, cfg)
    laid.verify()
    assert changed
    _assert_same(qg, laid, feeds)
    packs = [n for n in laid.nodes if n.op == "pack"]
    unpacks = [n for n in laid.nodes if n.op == "unpack"]
    assert packs and all(n.attrs["block"] == 4 for n in packs)
    shapes = {laid.tensors[n.outputs[0]].shape for n in packs}
    assert (1, 2, 6, 6, 1, 4) in shapes  # 5 channels padded to 8 = 2 blocks of 4
    # the two convs stay blocked between them: one pack in, unpacks only where the CPU reads
    convs = [n for n in laid.nodes if n.op == "qconv2d"]
    assert all(n.attrs["layout"] == "blocked" for n in convs)
    assert convs[1].inputs[0] == convs[0].outputs[0] and convs[0].outputs[0].endswith("@blocked")
    assert {n.outputs[0] for n in unpacks} >= {f"{c2}:q"}
    v = reference.run(laid, feeds, all_tensors=True)
    src, dst = v[packs[0].inputs[0]], v[packs[0].outputs[0]]
    np.testing.assert_array_equal(dst[0, 1, :, :, 0, 0], src[0, 4])
    assert not dst[0, 1, :, :, 0, 1:].any()
    assert assign_layouts(laid, cfg) == (laid, False)
    placed, _ = plan_memory(laid, cfg)
    assert placed.memory.overlaps() == []
    with pytest.raises(CompileError, match="partition"):
        assign_layouts(qg, cfg)


def test_fold_narrow_input_keeps_results_and_shrinks_the_gemm():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 12, 12))
    c = b.node("conv2d", [x, b.const("w", _w(8, 3, 5, 5))], pads=(2, 2, 2, 2),
               strides=(2, 2), act="relu")
    g = b.build([c])
    cal = [{"x": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(3)]
    cfg = Config.preset("default")
    qg = _quantised(g, cal)
    folded, changed = fold_narrow_input(qg, cfg)
    assert changed
    conv = next(n for n in folded.nodes if n.op == "qconv2d")
    assert folded.tensors[conv.inputs[1]].shape == (8, 15, 5, 1)
    assert [n.op for n in folded.nodes].count("slice") == 5
    _assert_same(qg, folded, cal[0])
    assert fold_narrow_input(folded, cfg)[1] is False


def test_fold_narrow_input_im2cols_a_7x7_stem():
    """3 channels x 7x7 taps: 147 folded channels (10 blocks) beat 7 rows of 21 (14 steps)."""
    b = GraphBuilder()
    x = b.input("x", (1, 3, 20, 18))
    c = b.node("conv2d", [x, b.const("w", _w(8, 3, 7, 7))], pads=(3, 2, 3, 1),
               strides=(2, 2), act="relu")
    g = b.build([c])
    cal = [{"x": RNG.standard_normal((1, 3, 20, 18)).astype(np.float32)} for _ in range(3)]
    cfg = Config.preset("default")
    qg = _quantised(g, cal)
    folded, changed = fold_narrow_input(qg, cfg)
    assert changed
    conv = next(n for n in folded.nodes if n.op == "qconv2d")
    assert folded.tensors[conv.inputs[1]].shape == (8, 147, 1, 1)
    assert conv.attrs["strides"] == (1, 1) and conv.attrs["pads"] == (0, 0, 0, 0)
    assert [n.op for n in folded.nodes].count("slice") == 49
    _assert_same(qg, folded, cal[0])


def test_one_pipeline_dumps_any_pass(capsys):
    g = _resblock()
    cal = [{"x": RNG.standard_normal((2, 5, 7, 7)).astype(np.float32)} for _ in range(2)]
    quant = Quantize(cal)
    passes = [*GRAPH_PASSES, quant, *lowering_passes(Config.preset("tiny"))]
    buf = io.StringIO()
    out = run_pipeline(g, passes, dump_after=["quantize", "assign_layouts", "plan_memory"],
                       out=buf)
    text = buf.getvalue()
    for name in ("quantize", "assign_layouts", "plan_memory"):
        assert f"# IR after {name}" in text
    assert "pack(" in text and "layout=blocked" in text and "# arena:" in text
    assert out.memory is not None and quant.result is not None
    with pytest.raises(CompileError, match="not in the pipeline"):
        run_pipeline(g, passes, dump_after="layout_pack")
