"""Config validation and serialisation; ISA encode/decode round trips and the disassembler."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tessera import isa
from tessera.config import PRESETS, Config
from tessera.errors import ConfigError, IsaError
from tessera.isa import AluInsn, AluOp, FinishInsn, GemmInsn, MemInsn, MemType, Opcode, Uop


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = Config.preset(name)
    assert Config.from_json(cfg.to_json()) == cfg
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert Config.from_json(path) == cfg
    assert Config.resolve(str(path)) == cfg


def test_default_matches_spec_depths():
    cfg = Config.preset("default")
    assert (cfg.inp_depth, cfg.wgt_depth, cfg.acc_depth, cfg.uop_depth) == (2048, 1024, 2048, 8192)
    assert (cfg.inp_elem_bytes, cfg.wgt_elem_bytes, cfg.acc_elem_bytes) == (16, 256, 64)


@pytest.mark.parametrize("change, words", [
    ({"log_block": 2.0}, "log_block must be an integer"),
    ({"log_block": True}, "log_block must be an integer"),
    ({"log_block": 9}, "log_block must be in"),
    ({"log_inp_width": 4}, "log_inp_width must be 3"),
    ({"mem_bus_bits": 48}, "mem_bus_bits must be one of"),
    ({"log_inp_buff_size": 3}, "log_inp_buff_size must give at least one 16-byte element"),
    ({"log_acc_buff_size": 23}, "cannot be addressed|at most 65536"),
    ({"log_uop_buff_size": 17}, "GEMM/ALU first word"),
    ({"log_acc_buff_size": 20}, "GEMM second word 70 bits"),
    ({"log_acc_buff_size": 15, "log_inp_buff_size": 10, "log_wgt_buff_size": 10,
      "log_block": 1, "log_uop_buff_size": 10}, "ALU second word"),
    ({"clock_mhz": -1}, "clock_mhz must be in"),
    ({"dep_queue_depth": 0}, "dep_queue_depth must be in"),
])
def test_bad_configs_name_the_field(change, words):
    values = dict(PRESETS["default"], **change)
    with pytest.raises(ConfigError, match=words):
        Config(**values)


def test_from_json_rejects_unknown_and_missing_fields():
    values = dict(PRESETS["tiny"])
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_json(json.dumps(dict(values, bogus=1)))
    del values["log_block"]
    with pytest.raises(ConfigError, match="missing field"):
        Config.from_json(json.dumps(values))
    with pytest.raises(ConfigError, match="unknown preset"):
        Config.preset("nope")


def test_default_layout_is_vtas():
    lay = isa.layout(Config.preset("default"))
    pos = {f.name: (f.lo, f.hi) for f in lay.gemm}
    assert pos["uop_bgn"] == (8, 20) and pos["uop_end"] == (21, 34)
    assert pos["iter_out"] == (35, 48) and pos["iter_in"] == (49, 62)
    assert pos["wgt_factor_in"] == (118, 127)
    alu = {f.name: (f.lo, f.hi) for f in lay.alu}
    assert alu["alu_opcode"] == (108, 110) and alu["use_imm"] == (111, 111)
    assert alu["imm"] == (112, 127)
    mem = {f.name: (f.lo, f.hi) for f in lay.mem}
    assert mem["dram_base"] == (26, 57) and mem["x_pad_1"] == (124, 127)
    assert [(f.lo, f.hi) for f in lay.uop] == [(0, 10), (11, 21), (22, 31)]


def _random_insn(rng, cfg):
    lay = isa.layout(cfg)
    kind = rng.integers(0, 5)
    cls, table, extra = {
        0: (MemInsn, lay.mem, {"opcode": Opcode.LOAD}),
        1: (MemInsn, lay.mem, {"opcode": Opcode.STORE}),
        2: (GemmInsn, lay.gemm, {}),
        3: (AluInsn, lay.alu, {}),
        4: (FinishInsn, lay.finish, {}),
    }[int(kind)]
    values = {}
    for f in table:
        if f.name == "opcode":
            continue
        values[f.name] = int(rng.integers(f.min, f.max + 1))
    if "memory_type" in values:
        values["memory_type"] = int(rng.integers(0, 6))
    if "alu_opcode" in values:
        values["alu_opcode"] = int(rng.integers(0, 5))
    return cls(**values, **extra)


@pytest.mark.parametrize("name", ["tiny", "default", "ulx3s"])
def test_encode_decode_round_trip(name):
    cfg = Config.preset(name)
    rng = np.random.default_rng(1)
    for _ in range(500):
        insn = _random_insn(rng, cfg)
        word = isa.encode(insn, cfg)
        assert 0 <= word < 1 << 128
        back = isa.decode(word, cfg)
        assert dataclasses.astuple(back) == dataclasses.astuple(insn)
        assert isa.encode(back, cfg) == word
    lay = isa.layout(cfg)
    for _ in range(200):
        uop = Uop(*(int(rng.integers(0, f.max + 1)) for f in lay.uop))
        assert isa.decode_uop(isa.encode_uop(uop, cfg), cfg) == uop


def test_extreme_field_values_round_trip():
    cfg = Config.preset("default")
    for imm in (-32768, -1, 0, 32767):
        insn = AluInsn(alu_opcode=AluOp.SHR, use_imm=1, imm=imm, uop_end=8191 * 2 + 1)
        assert isa.decode(isa.encode(insn, cfg), cfg) == insn
    mem = MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, dram_base=2**32 - 1,
                  y_size=65535, x_size=65535, x_stride=65535, x_pad_1=15)
    assert isa.decode(isa.encode(mem, cfg), cfg) == mem


@pytest.mark.parametrize("insn, words", [
    (GemmInsn(uop_bgn=1 << 13), "uop_bgn must be in"),
    (GemmInsn(iter_out=-1), "iter_out must be in"),
    (AluInsn(imm=40000, use_imm=1), "imm must be in"),
    (AluInsn(alu_opcode=7), "alu_opcode must be one of"),
    (MemInsn(memory_type=6), "memory_type must be one of"),
    (MemInsn(y_pad_0=16), "y_pad_0 must be in"),
    (MemInsn(dram_base=1 << 32), "dram_base must be in"),
    (MemInsn(x_size=1.5), "x_size must be an integer"),
])
def test_out_of_range_fields_raise(insn, words):
    with pytest.raises(IsaError, match=words):
        isa.encode(insn, Config.preset("default"))


def test_uop_out_of_range_raises():
    cfg = Config.preset("tiny")
    with pytest.raises(IsaError, match="dst_idx must be in"):
        isa.encode_uop(Uop(dst_idx=cfg.acc_depth), cfg)


def test_decode_rejects_bad_opcode_and_disassembler_shows_it():
    cfg = Config.preset("tiny")
    with pytest.raises(IsaError, match="unknown opcode 6"):
        isa.decode(6, cfg)
    code = isa.to_bytes([MemInsn(memory_type=MemType.WGT, x_size=3, y_size=2, x_stride=4,
                                 push_next=1), GemmInsn(reset=1, uop_end=4)], cfg)
    code += (7).to_bytes(16, "little")
    text = isa.disassemble(code, cfg).splitlines()
    assert len(text) == 3
    assert "LOAD" in text[0] and "WGT" in text[0] and "push_next" in text[0]
    assert "GEMM" in text[1] and "reset" in text[1]
    assert "bad opcode 7" in text[2]


def _random_insns(cfg, rng, n):
    """``n`` random legal records of every format (enum and plain-int field values)."""
    lay = isa.layout(cfg)
    out = []
    for _ in range(n):
        kind = int(rng.integers(0, 4))
        cls, fmt = [(MemInsn, "mem"), (GemmInsn, "gemm"), (AluInsn, "alu"),
                    (FinishInsn, "finish")][kind]
        values = {}
        for f in getattr(lay, fmt):
            if f.name == "opcode":
                continue
            values[f.name] = int(rng.integers(f.min, f.max + 1))
        if cls is MemInsn:
            values["opcode"] = [Opcode.LOAD, Opcode.STORE][int(rng.integers(0, 2))]
            values["memory_type"] = MemType(int(rng.integers(0, len(MemType))))
        if cls is AluInsn:
            values["alu_opcode"] = AluOp(int(rng.integers(0, len(AluOp))))
        out.append(cls(**values))
    return out


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_vectorised_to_bytes_equals_encode(name):
    """to_bytes (whole-row vectorised path) gives exactly encode's words, numpy integer field
    values included, and still names the bad field of a bool or an out-of-range value."""
    cfg = Config.preset(name)
    rng = np.random.default_rng(7)
    insns = _random_insns(cfg, rng, 400)
    want = b"".join(isa.encode(i, cfg).to_bytes(16, "little") for i in insns)
    assert isa.to_bytes(insns, cfg) == want
    as_numpy = [dataclasses.replace(i, pop_prev=np.int64(i.pop_prev)) for i in insns]
    assert isa.to_bytes(as_numpy, cfg) == want
    bad = list(insns) + [GemmInsn(reset=True, uop_end=1)]
    with pytest.raises(IsaError, match="field reset must be an integer"):
        isa.to_bytes(bad, cfg)
    too_big = list(insns) + [MemInsn(x_size=1 << 16)]
    with pytest.raises(IsaError, match="field x_size must be in"):
        isa.to_bytes(too_big, cfg)


def _encode_error(insn, cfg) -> str:
    with pytest.raises(IsaError) as err:
        isa.encode(insn, cfg)
    return str(err.value)


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_to_bytes_takes_or_rejects_every_opcode_value_like_encode(name):
    """Records are grouped by opcode whatever its type: plain ints, enums and numpy integers
    encode as encode() does (in stream order, whatever the grouping), a bool, an unknown value
    or a non-integer opcode raises encode()'s error for that record."""
    cfg = Config.preset(name)
    rng = np.random.default_rng(11)
    insns = _random_insns(cfg, rng, 300)
    want = b"".join(isa.encode(i, cfg).to_bytes(16, "little") for i in insns)
    plain = [dataclasses.replace(i, opcode=int(i.opcode)) if k % 3 == 0 else
             dataclasses.replace(i, opcode=np.int64(i.opcode)) if k % 3 == 1 else i
             for k, i in enumerate(insns)]
    assert isa.to_bytes(plain, cfg) == want
    assert isa.to_bytes([], cfg) == b""
    for bad in (GemmInsn(opcode=True, uop_end=1), GemmInsn(opcode=7, uop_end=1),
                GemmInsn(opcode="gemm", uop_end=1), GemmInsn(opcode=None, uop_end=1)):
        message = _encode_error(bad, cfg)
        at = int(rng.integers(0, len(insns)))
        with pytest.raises(IsaError) as err:
            isa.to_bytes(insns[:at] + [bad] + insns[at:], cfg)
        assert str(err.value) == message
