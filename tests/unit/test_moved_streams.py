"""build_plan emits a layer that repeats an earlier one (same shape, tiles and epilogue
structure) by moving the earlier stream: the moved stream must be byte for byte what emission
at the new tensor addresses with the new immediates gives."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.compiler.lower.build import _moved, _structure
from tessera.config import Config
from tessera.isa import AluOp, layout
from tessera.runtime.accel import ConvGeom, ConvShape, LayerAddrs, emit_conv2d, plan_conv2d
from tessera.runtime.accel.group import Measured, Member, emit_conv2d_group, moved_group, plan_group
from tessera.runtime.accel.requant import DeviceEpilogue, DevStep
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.plan import AccelStep

_IMM_OPS = (AluOp.ADD, AluOp.SHR, AluOp.MAX, AluOp.MIN, AluOp.MUL)


def _programs(rng, channels: int, residual: bool, vector: bool):
    """Two device epilogues of one structure with different random immediates."""
    kinds = [("imm", "main")] * int(rng.integers(1, 5))
    if vector:
        kinds.insert(int(rng.integers(0, len(kinds) + 1)), ("vec", "main"))
    if residual:
        kinds += [("imm", "residual"), ("combine", "combine"), ("imm", "main")]
    ops = [_IMM_OPS[int(rng.integers(0, len(_IMM_OPS)))] for _ in kinds]
    progs = []
    for _ in range(2):
        steps = []
        for (kind, branch), op in zip(kinds, ops):
            if kind == "imm":
                steps.append(DevStep(op, int(rng.integers(-(1 << 15), 1 << 15)), branch))
            elif kind == "vec":
                steps.append(DevStep(AluOp.ADD, "bias", branch))
            else:
                steps.append(DevStep(AluOp.ADD, None, "combine"))
        vectors = {"bias": np.arange(channels, dtype=np.int64)} if vector else {}
        progs.append(DeviceEpilogue(tuple(steps), vectors))
    assert _structure(progs[0].steps) == _structure(progs[1].steps)
    return progs


def _addrs(rng, residual: bool, vector: bool) -> LayerAddrs:
    def at() -> int:
        return int(rng.integers(1, 1 << 12)) << 16

    return LayerAddrs(at(), at(), at(), at() if vector else None, at() if residual else None)


def _emit(cfg, shape, addrs, prog, tiles):
    b = CommandBuilder(cfg)
    stats = emit_conv2d(b, shape, addrs, prog, tiles=tiles)
    p = b.finish()
    info = {"counts": dict(p.counts()), "tile": []}
    return AccelStep("layer", "qconv2d", [], [], p.to_bytes(0), p.uop_words,
                     list(p.uop_load_pcs), info), stats


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_a_moved_stream_is_what_emission_at_the_new_addresses_gives(name):
    cfg = Config.preset(name)
    rng = np.random.default_rng(3)
    cases = [((1, 16, 8, 8), (16, 16, 3, 3), 1, 1), ((1, 32, 14, 14), (48, 32, 3, 3), 2, 1),
             ((1, 64, 7, 7), (32, 64, 1, 1), 1, 0), ((2, 24, 9, 11), (40, 24, 3, 3), 1, 1),
             ((1, 16, 16, 16), (32, 16, 1, 1), 2, 0)]
    for k, (x, w, stride, pad) in enumerate(cases * 2):
        residual, vector = k % 2 == 1, k % 3 != 0
        shape = ConvShape.make(x, w, stride, pad)
        first, second = _programs(rng, w[0], residual, vector)
        tiles = plan_conv2d(cfg, ConvGeom.of(cfg, shape), first)
        at, to = _addrs(rng, residual, vector), _addrs(rng, residual, vector)
        step, stats = _emit(cfg, shape, at, first, tiles)
        assert stats.imm_pcs, "every program here has immediates"
        moved = _moved(cfg, "next", ["a"], ["b"], step, at, stats.imm_pcs, to, second)
        want, _ = _emit(cfg, shape, to, second, tiles)
        assert moved is not None
        assert moved.code == want.code, (name, k)
        assert moved.uop_words == want.uop_words
        assert moved.uop_load_pcs == want.uop_load_pcs
        assert (moved.name, moved.inputs, moved.outputs) == ("next", ["a"], ["b"])
        # the same program at the same addresses: the stream itself
        same = _moved(cfg, "again", [], [], step, at, stats.imm_pcs, at, first)
        assert same.code == step.code


def test_a_stream_that_cannot_move_is_left_to_emission():
    """An address the dram_base field cannot hold, or an immediate the ALU field cannot hold:
    no moved stream (emission raises the precise error)."""
    cfg = Config.preset("tiny")
    rng = np.random.default_rng(5)
    shape = ConvShape.make((1, 16, 8, 8), (16, 16, 3, 3), 1, 1)
    first, second = _programs(rng, 16, False, True)
    tiles = plan_conv2d(cfg, ConvGeom.of(cfg, shape), first)
    at = _addrs(rng, False, True)
    step, stats = _emit(cfg, shape, at, first, tiles)
    far = LayerAddrs((1 << 32) - 64, at.w, at.y, at.consts)
    assert _moved(cfg, "n", [], [], step, at, stats.imm_pcs, far, second) is None
    top = layout(cfg).limits.imm_max
    steps = tuple(DevStep(s.opcode, top + 1, s.branch) if isinstance(s.operand, int) else s
                  for s in second.steps)
    wide = DeviceEpilogue(steps, second.vectors)
    assert _moved(cfg, "n", [], [], step, at, stats.imm_pcs, at, wide) is None


def _group(rng, cfg, c, o, hw, residual):
    """A ResNet downsample pair: a 3x3 and a 1x1 stride-2 convolution of one input."""
    shapes = [ConvShape.make((1, c, hw, hw), (o, c, 3, 3), 2, 1),
              ConvShape.make((1, c, hw, hw), (o, c, 1, 1), 2, 0)]
    progs = []
    for k in range(2):
        first, _ = _programs(rng, o, residual and k == 0, True)
        progs.append(first)
    return [Member(s, LayerAddrs(0, 0, 0), p, None) for s, p in zip(shapes, progs)]


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_a_moved_group_stream_is_what_emission_at_the_new_addresses_gives(name):
    cfg = Config.preset(name)
    rng = np.random.default_rng(9)
    for c, o, hw, residual in ((16, 32, 14, False), (32, 32, 9, True), (16, 48, 12, True)):
        members = _group(rng, cfg, c, o, hw, residual)
        kept: list[Measured] = []
        planned = plan_group(cfg, members, keep=kept)
        assert planned is not None and len(kept) == 1
        tiles, cycles = planned
        assert kept[0].cycles == cycles
        x = _addrs(rng, False, False).x
        placed = []
        for m, t in zip(members, tiles):
            a = _addrs(rng, m.prog.residual, bool(m.prog.vectors))
            placed.append(Member(m.shape, LayerAddrs(x, a.w, a.y, a.consts, a.residual),
                                 m.prog, t))
        code = moved_group(cfg, kept[0], placed)
        b = CommandBuilder(cfg)
        emit_conv2d_group(b, placed)
        want = b.finish()
        assert code == want.to_bytes(0), (name, c, o, hw)
        assert kept[0].program.uop_words == want.uop_words
        assert kept[0].program.uop_load_pcs == want.uop_load_pcs
        # other tiles, or a member's input elsewhere: not the measured stream
        other = [Member(m.shape, m.addrs, m.prog, replace(m.tiles, th=m.tiles.th % 2 + 1))
                 for m in placed]
        assert moved_group(cfg, kept[0], other) is None
        apart = [placed[0], replace(placed[1], addrs=replace(placed[1].addrs, x=x + 64))]
        assert moved_group(cfg, kept[0], apart) is None
