"""The LLVM engine: compilation caches (memory and disk), kernels rebuilt from their
descriptions, host code quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tessera.errors import KernelError
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine
from tessera.runtime.cpu.kernels import CpuKernel

SPECS = [((3, 40), "float32"), ((40,), "float32")]


def test_second_get_does_not_recompile(tmp_path):
    engine = Engine(cache_dir=tmp_path)
    cpu_kernels.clear_cache()
    k1 = cpu_kernels.get("Mul", {}, SPECS, engine=engine)
    assert engine.stats.compiles == 1
    k2 = cpu_kernels.get("Mul", {}, SPECS, engine=engine)
    assert k2 is k1 and engine.stats.compiles == 1
    # Even with the kernel cache cleared, the engine finds the IR in memory.
    cpu_kernels.clear_cache()
    k3 = cpu_kernels.get("Mul", {}, SPECS, engine=engine)
    assert engine.stats.compiles == 1 and engine.stats.memory_hits == 1
    a, b = np.full((3, 40), 3, np.float32), np.full(40, 2, np.float32)
    np.testing.assert_array_equal(k3(a, b)[0], 6)
    # A different specialisation is a different kernel.
    cpu_kernels.get("Mul", {}, [((3, 41), "float32"), ((41,), "float32")], engine=engine)
    assert engine.stats.compiles == 2


def test_disk_cache_is_used_by_a_new_engine(tmp_path):
    cpu_kernels.clear_cache()
    first = Engine(cache_dir=tmp_path)
    cpu_kernels.get("Softmax", {"axis": 1}, [((4, 9, 3), "float32")], engine=first)
    assert first.stats.compiles == 1
    assert len(list(tmp_path.rglob("*.o"))) == 1
    second = Engine(cache_dir=tmp_path)
    kernel = cpu_kernels.get("Softmax", {"axis": 1}, [((4, 9, 3), "float32")], engine=second)
    assert second.stats.compiles == 0 and second.stats.disk_hits == 1
    y = kernel(np.zeros((4, 9, 3), np.float32))[0]
    np.testing.assert_allclose(y, 1 / 9, rtol=1e-6)


def test_damaged_cache_file_is_rebuilt(tmp_path):
    cpu_kernels.clear_cache()
    first = Engine(cache_dir=tmp_path)
    cpu_kernels.get("Relu", {}, [((5,), "float32")], engine=first)
    (obj,) = tmp_path.rglob("*.o")
    obj.write_bytes(b"not an object file")
    second = Engine(cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="damaged"):
        kernel = cpu_kernels.get("Relu", {}, [((5,), "float32")], engine=second)
    assert second.stats.compiles == 1
    x = np.array([-1, 2, -3, 4, 0], np.float32)
    np.testing.assert_array_equal(kernel(x)[0], [0, 2, 0, 4, 0])
    assert obj.read_bytes() != b"not an object file"


def test_description_round_trip(tmp_path):
    engine = Engine(cache_dir=tmp_path)
    kernel = cpu_kernels.get("MaxPool", {"kernel_shape": (2, 2), "strides": [2, 2]},
                             [((1, 2, 6, 6), "int8")], engine=engine)
    desc = json.loads(json.dumps(kernel.description()))
    assert desc == {"op": "MaxPool", "attrs": {"kernel_shape": [2, 2], "strides": [2, 2]},
                    "in_specs": [[[1, 2, 6, 6], "int8"]]}
    fresh = Engine(cache_dir=tmp_path / "other")
    again = CpuKernel.from_description(desc, engine=fresh)
    assert fresh.stats.compiles == 1
    x = np.random.default_rng(30).integers(-128, 128, (1, 2, 6, 6), dtype=np.int8)
    np.testing.assert_array_equal(again(x)[0], kernel(x)[0])
    # the description key, not the IR, finds the cached object in a third engine
    third = Engine(cache_dir=tmp_path / "other")
    CpuKernel.from_description(desc, engine=third)
    assert third.stats.compiles == 0 and third.stats.disk_hits == 1
    with pytest.raises(KernelError, match="exactly the keys"):
        CpuKernel.from_description({**desc, "ir": "define void @f() { ret void }"}, fresh)
    with pytest.raises(KernelError, match="strides must be >= 1"):
        CpuKernel.from_description({**desc, "attrs": {"kernel_shape": [2, 2],
                                                      "strides": [0, 2]}}, fresh)


def test_engine_rejects_bad_ir(tmp_path):
    engine = Engine(cache_dir=tmp_path)
    kernel = cpu_kernels.get("Relu", {}, [((4,), "float32")], engine=engine)
    with pytest.raises(KernelError, match="does not define"):
        engine.compile(kernel.ir, "nope", 2)
    with pytest.raises(KernelError, match="invalid LLVM IR"):
        engine.compile("define void @f( {", "f", 0)


def test_code_is_vectorised_for_the_host(tmp_path):
    engine = Engine(cache_dir=tmp_path)
    kernel = cpu_kernels.get("Add", {}, [((1024,), "float32"), ((1024,), "float32")],
                             engine=engine)
    opt = engine.optimised_ir(kernel.ir)
    assert "<4 x float>" in opt or "<8 x float>" in opt or "<16 x float>" in opt


def test_kernel_ir_text_is_rendered_on_first_use():
    """A planned kernel keeps its module unrendered until ``ir`` is read or it is compiled."""
    from tessera.runtime.cpu.builder import IrText

    cpu_kernels.clear_cache()
    k = cpu_kernels.get("Relu", {}, [((3, 5), np.float32)], lazy=True)
    assert isinstance(k._ir, IrText) and k._ir._text is None
    text = k.ir
    assert isinstance(text, str) and "define" in text and k.ir is text
    out = k(np.linspace(-1, 1, 15, dtype=np.float32).reshape(3, 5))[0]
    assert np.array_equal(out, np.maximum(np.linspace(-1, 1, 15, dtype=np.float32), 0)
                          .reshape(3, 5))
    with pytest.raises(KernelError, match="ir_text must be a str or IrText"):
        CpuKernel("Relu", {}, [], 3, "f", [], None, cpu_kernels.default_engine(), "k")
