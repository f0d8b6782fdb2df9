"""Crafted compiled-model files: every one is refused with an ArtifactError naming the field
(re-checksummed, so only the schema and the plan's invariants can catch them); see
docs/threat-model.md."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tessera
from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.errors import ArtifactError
from tessera.isa import INSN_BYTES, MemInsn, Opcode, decode, encode
from tessera.runtime.artifact import read_container, write_container

IR = 'declare i32 @system(ptr)\ndefine void @f(ptr %a) { call i32 @system(ptr %a) ret void }'


def _compile(name, config="tiny", seed=0):
    proto = getattr(zoo, name)()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    return tcompile(proto, config=config, calibration=cal), {
        inp.name: rng.standard_normal(shape).astype(np.float32)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    model, x = _compile("mlp")
    model.save(d / "mlp.tsr")
    other_cnn, _ = _compile("small_cnn")
    other_cnn.save(d / "cnn.tsr")
    return d, x, model.run(x)


def _edit(saved, fn, name="bad.tsr", src="mlp.tsr"):
    d = saved[0]
    sections, head = read_container(d / src)
    graph = json.loads(sections["graph.json"])
    fn(sections, head, graph)
    sections["graph.json"] = json.dumps(graph).encode()
    write_container(d / name, sections, head)  # re-checksummed: only validation can object
    return d / name


def _refused(path, match):
    with pytest.raises(ArtifactError, match=match):
        tessera.load(path)


def _cpu_step(graph):
    return next(k for k, s in enumerate(graph["steps"]) if s["kind"] == "cpu")


def _accel_step(graph):
    return next(k for k, s in enumerate(graph["steps"]) if s["kind"] == "accel")


def test_the_untouched_file_loads_and_runs(saved):
    d, x, want = saved
    for a, b in zip(tessera.load(d / "mlp.tsr").run(x), want):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("where, mutate, match", [
    ("kernel description", lambda g: g["steps"][_cpu_step(g)]["op"]["kernels"][0].update(ir=IR),
     r"steps\[\d+\]\.op: kernels\[0\] must have exactly the keys"),
    ("kernel attribute", lambda g: g["steps"][_cpu_step(g)]["op"]["kernels"][0]["attrs"].update(
        ir=IR), r"steps\[\d+\]\.op: kernels\[0\]: .*unsupported attribute"),
    ("kernel op", lambda g: g["steps"][_cpu_step(g)]["op"]["kernels"][0].update(op="System"),
     r"no CPU kernel for this operator"),
    ("step info", lambda g: g["steps"][0]["info"].update(ir=IR), r"steps\[0\]\.info"),
    ("step", lambda g: g["steps"][0].update(ir=IR), r"steps\[0\]: must have the keys"),
    ("slot", lambda g: g["slots"][0].update(ir=IR), r"slots\[0\]: must have the keys"),
    ("graph", lambda g: g.update(ir=IR), r"graph\.json: must have the keys"),
])
def test_ir_text_anywhere_is_refused(saved, where, mutate, match):
    _refused(_edit(saved, lambda s, h, g: mutate(g)), match)


def test_ir_text_in_meta_or_header_is_refused(saved):
    _refused(_edit(saved, lambda s, h, g: h["meta"].update(llvm=IR)), r"meta: must have the keys")
    _refused(_edit(saved, lambda s, h, g: h.update(ir=IR)), r"header meta: must have the keys")


@pytest.mark.parametrize("mutate, match", [
    (lambda g: g.update(arena_size=1 << 40), r"arena_size: .* is outside"),
    (lambda g: g["slots"][0].update(nbytes=1 << 40), r"slots\[0\]\.nbytes"),
    (lambda g: g["slots"][0].update(shape=[1 << 31, 1 << 31]), r"slots\[0\]\.nbytes"),
    (lambda g: g["slots"][0].update(offset=-8), r"slots\[0\]\.offset: -8 is outside"),
    (lambda g: g["slots"][0].update(offset=1 << 28), r"slots\[0\]: .* lies outside the"),
    (lambda g: g["slots"][0].update(dtype="object"), r"slots\[0\]\.dtype"),
    (lambda g: g["steps"][_accel_step(g)].update(uop_load_pcs=[10 ** 6]),
     r"uop_load_pcs\[0\]: 1000000 is outside the code"),
    (lambda g: g["steps"][_accel_step(g)].update(  # one micro-op load dropped
        uop_load_pcs=g["steps"][_accel_step(g)]["uop_load_pcs"][1:]),
     r"uop_load_pcs: must list exactly the micro-op loads"),
])
def test_huge_negative_and_out_of_range_fields(saved, mutate, match):
    _refused(_edit(saved, lambda s, h, g: mutate(g)), match)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/../etc/passwd", "a/../b", "a//b", "/",
                                  "x\ny", "a b", "", "q'uote"])
def test_path_like_or_odd_names_are_refused(saved, name):
    def rename_output(s, h, g):
        (old,) = g["outputs"]
        g["outputs"] = {name: g["outputs"][old]}
    _refused(_edit(saved, rename_output), r"outputs name: .*must")

    def rename_slot(s, h, g):
        g["slots"][0]["name"] = name
    _refused(_edit(saved, rename_slot), r"slots\[0\]\.name")


def test_pytorch_scope_names_save_and_load(tmp_path):
    """PyTorch's exporter names tensors "/scope/op_output_0": such a model saves, loads and runs
    (a leading "/" is not path-like; names are never used as paths)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                                "/model.0/conv/weight")
    nodes = [helper.make_node("Conv", ["images", "/model.0/conv/weight"],
                              ["/model.0/conv/Conv_output_0"], name="/model.0/conv/Conv",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["/model.0/conv/Conv_output_0"], ["output0"],
                              name="/model.0/act/Relu")]
    graph = helper.make_graph(
        nodes, "torch_names", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                             [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cal = [{"images": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    x = {"images": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    for precision in ("int8", "float"):
        model = tcompile(proto, config="tiny", precision=precision,
                         calibration=cal if precision == "int8" else None)
        model.save(tmp_path / f"{precision}.tsr")
        (want,), (got,) = model.run(x), tessera.load(tmp_path / f"{precision}.tsr").run(x)
        np.testing.assert_array_equal(got, want)


def test_overlapping_slots_are_refused(saved):
    def overlap_arena(s, h, g):
        k = _cpu_step(g)
        # the first CPU step's output moved onto the graph input (both live at that point)
        out = g["steps"][k]["outputs"][0]
        inp = next(iter(g["inputs"].values()))
        slots = {d["name"]: d for d in g["slots"]}
        slots[out]["offset"] = slots[inp]["offset"]
    _refused(_edit(saved, overlap_arena), r"overlap in the arena region while both are live")

    def overlap_params(s, h, g):
        params = [d for d in g["slots"] if d["region"] == "params"]
        params[1]["offset"] = params[0]["offset"]
    _refused(_edit(saved, overlap_params), r"overlap in the params region")

    def arena_slot_into_params(s, h, g):
        d = next(d for d in g["slots"] if d["region"] == "arena")
        d["region"] = "params"
    _refused(_edit(saved, arena_slot_into_params), r"params slots are 'raw'")


def test_another_models_graph_or_params_is_refused(saved):
    d = saved[0]
    cnn_sections, cnn_head = read_container(d / "cnn.tsr")

    def graph_of_cnn(s, h, g):
        g.clear()
        g.update(json.loads(cnn_sections["graph.json"]))
    _refused(_edit(saved, graph_of_cnn), r"sections: must be exactly those of the steps|params")

    def params_of_cnn(s, h, g):
        s["params"] = cnn_sections["params"]
        h["params_index"] = cnn_head["params_index"]
    _refused(_edit(saved, params_of_cnn), r"params_index: must name exactly the params slots")

    def code_of_cnn(s, h, g):
        k = _accel_step(g)
        j = next(j for j, e in enumerate(json.loads(cnn_sections["graph.json"])["steps"])
                 if e["kind"] == "accel")
        s[f"code/{k}"] = cnn_sections[f"code/{j}"]
    _refused(_edit(saved, code_of_cnn), r"steps\[\d+\]")


def test_a_deleted_accelerator_step_is_refused(saved):
    def delete(s, h, g):
        k = _accel_step(g)
        del g["steps"][k]
        n = len(g["steps"]) + 1
        for j in range(k, n):  # renumber the later steps' sections
            for kind in ("code", "uops"):
                if f"{kind}/{j + 1}" in s:
                    s[f"{kind}/{j}"] = s.pop(f"{kind}/{j + 1}")
                elif j == k:
                    s.pop(f"{kind}/{j}", None)
    _refused(_edit(saved, delete), r"is read before any step produces it")


def _code_edit(saved, fn):
    def edit(s, h, g):
        k = _accel_step(g)
        s[f"code/{k}"] = fn(bytearray(s[f"code/{k}"]), h)
    return _edit(saved, edit)


def test_bad_accelerator_code_is_refused(saved):
    rng = np.random.default_rng(60)
    _refused(_code_edit(saved, lambda c, h: bytes(c[:-3])), r"multiple of 16 bytes")
    _refused(_code_edit(saved, lambda c, h: b""), r"non-empty multiple of 16 bytes")
    _refused(_code_edit(saved, lambda c, h: rng.integers(0, 256, len(c), np.uint8).tobytes()),
             r"code\[\d+\]: does not decode|code:|code\[\d+\]")
    _refused(_code_edit(saved, lambda c, h: bytes(c[:-INSN_BYTES])), r"only FINISH")


def test_dma_outside_the_steps_slots_is_refused(saved):
    cfg = tessera.Config.from_dict(read_container(saved[0] / "mlp.tsr")[1]["config"])

    def retarget(code, h):
        for pc in range(len(code) // INSN_BYTES):
            word = int.from_bytes(code[pc * 16:(pc + 1) * 16], "little")
            insn = decode(word, cfg)
            if isinstance(insn, MemInsn) and insn.opcode == Opcode.STORE and insn.x_size:
                moved = MemInsn(**{**insn.__dict__, "dram_base": insn.dram_base + (1 << 20)})
                code[pc * 16:(pc + 1) * 16] = encode(moved, cfg).to_bytes(16, "little")
                return bytes(code)
        raise AssertionError("no STORE")
    _refused(_code_edit(saved, retarget), r"STORE of DRAM bytes .* outside every output slot")


def test_non_regular_and_truncated_files_are_refused_without_hanging(saved, tmp_path):
    _refused("/dev/zero", "not a regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _refused(fifo, "not a regular file")  # would block forever if opened for a plain read
    _refused(tmp_path, "not a regular file")
    raw = (saved[0] / "mlp.tsr").read_bytes()
    huge = bytearray(raw)
    huge[12:20] = (1 << 60).to_bytes(8, "little")  # header length far beyond the file
    (tmp_path / "huge.tsr").write_bytes(bytes(huge))
    _refused(tmp_path / "huge.tsr", "truncated")


@pytest.mark.parametrize("mutate, match", [
    (lambda h: h.update(config={"log_block": 99}), r"config: "),
    (lambda h: h.update(config="default"), r"config: "),
    (lambda h: h["config"].update(log_block=True), r"config: "),
    (lambda h: h.update(kind="something-else"), r"not a compiled model"),
    (lambda h: h["params_index"][0].update(shape=[-1]), r"params_index\[0\]\.shape"),
    (lambda h: h["params_index"][0].update(offset=1 << 40), r"params_index\[0\]\.offset"),
])
def test_bad_header_fields(saved, mutate, match):
    _refused(_edit(saved, lambda s, h, g: mutate(h)), match)


def test_bad_json_and_sections(saved):
    _refused(_edit(saved, lambda s, h, g: s.update({"extra/0": b"x"})),
             r"sections: must be exactly those of the steps")

    def deep(s, h, g):
        s["graph.json"] = b"[" * 100_000 + b"]" * 100_000
    d = saved[0]
    sections, head = read_container(d / "mlp.tsr")
    deep(sections, head, None)
    write_container(d / "deep.tsr", sections, head)
    _refused(d / "deep.tsr", r"graph\.json: is not valid JSON")
    sections, head = read_container(d / "mlp.tsr")
    sections["graph.json"] = json.dumps({"x": float("nan")}).encode()
    write_container(d / "nan.tsr", sections, head)
    _refused(d / "nan.tsr", r"graph\.json: is not valid JSON")
