"""CPU kernels: reshape, flatten, transpose, concat, slice, blocked layout pack/unpack."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tessera import Config
from tessera.errors import KernelError
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.jit import Engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(cache_dir=tmp_path_factory.mktemp("llvm"))


def run(engine: Engine, op: str, attrs: dict, *arrays: np.ndarray) -> np.ndarray:
    kernel = cpu_kernels.get(op, attrs, [(a.shape, a.dtype) for a in arrays], engine=engine)
    outs = kernel(*arrays)
    assert [(o.shape, o.dtype) for o in outs] == kernel.out_specs
    return outs[0]


def rand(shape, dtype, seed=20):
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", ["float32", "int8", "int32"])
def test_reshape_and_flatten(engine, dtype):
    x = rand((2, 3, 4, 5), dtype)
    np.testing.assert_array_equal(run(engine, "Reshape", {"shape": [0, -1, 5]}, x),
                                  x.reshape(2, 12, 5))
    np.testing.assert_array_equal(run(engine, "Reshape", {"shape": [120]}, x), x.reshape(120))
    for axis in (0, 1, 3, 4, -1):
        a = axis + x.ndim if axis < 0 else axis
        want = x.reshape(int(np.prod(x.shape[:a])), -1)
        np.testing.assert_array_equal(run(engine, "Flatten", {"axis": axis}, x), want)


@pytest.mark.parametrize("shape,perm", [((2, 3, 4, 5), (0, 2, 3, 1)), ((2, 3, 4, 5), (3, 1, 0, 2)),
                                        ((7, 9), None), ((3, 1, 5), (2, 1, 0)),
                                        ((2, 3, 4, 5, 6), (4, 0, 3, 1, 2)), ((17,), (0,))])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_transpose(engine, shape, perm, dtype):
    x = rand(shape, dtype)
    attrs = {} if perm is None else {"perm": list(perm)}
    np.testing.assert_array_equal(run(engine, "Transpose", attrs, x), np.transpose(x, perm))


def test_transpose_all_permutations_rank4(engine):
    x = rand((2, 3, 4, 5), "int32")
    for perm in itertools.permutations(range(4)):
        np.testing.assert_array_equal(run(engine, "Transpose", {"perm": list(perm)}, x),
                                      np.transpose(x, perm))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_concat(engine, axis, dtype):
    base = [2, 3, 5]
    arrays = []
    for k, n in enumerate((1, 4, 2)):
        shape = list(base)
        shape[axis] = n
        arrays.append(rand(shape, dtype, seed=k))
    np.testing.assert_array_equal(run(engine, "Concat", {"axis": axis}, *arrays),
                                  np.concatenate(arrays, axis=axis))


@pytest.mark.parametrize("attrs,index", [
    ({"starts": [1], "ends": [3]}, np.s_[1:3]),
    ({"starts": [0, 2], "ends": [-1, 100], "axes": [1, 3]}, np.s_[:, 0:-1, :, 2:]),
    ({"starts": [-1], "ends": [-10**9], "axes": [2], "steps": [-2]}, np.s_[:, :, ::-2]),
    ({"starts": [5, 0], "ends": [1, 7], "axes": [3, 0], "steps": [-1, 3]},
     np.s_[0:7:3, :, :, 5:1:-1]),
    ({"starts": [4], "ends": [2], "axes": [-1]}, np.s_[..., 4:2]),
])
def test_slice(engine, attrs, index):
    x = rand((4, 5, 6, 7), "float32")
    np.testing.assert_array_equal(run(engine, "Slice", attrs, x), x[index])


def ref_pack(x: np.ndarray, bt: int, bl: int) -> np.ndarray:
    n, c, h, w = x.shape
    nb, cb = -(-n // bt), -(-c // bl)
    xp = np.zeros((nb * bt, cb * bl, h, w), x.dtype)
    xp[:n, :c] = x
    return xp.reshape(nb, bt, cb, bl, h, w).transpose(0, 2, 4, 5, 1, 3).copy()


@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (1, 3, 5, 7), (3, 37, 2, 3), (2, 5, 1, 1)])
@pytest.mark.parametrize("bt,bl", [(1, 16), (1, 4), (2, 8), (4, 3)])
def test_pack_unpack(engine, shape, bt, bl):
    x = rand(shape, "int8")
    packed = run(engine, "PackNCHW", {"batch": bt, "block": bl}, x)
    np.testing.assert_array_equal(packed, ref_pack(x, bt, bl))
    back = run(engine, "UnpackNCHW", {"batch": bt, "block": bl, "shape": list(shape)}, packed)
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("shape,bt,bl,dtype", [
    ((1, 64, 9, 11), 1, 16, "int8"),     # 99 positions: 6 whole 16x16 tiles + a 3-column tail
    ((2, 35, 4, 8), 2, 8, "int32"),      # ragged channel block, batch blocking
    ((1, 70, 5, 13), 1, 32, "int8"),     # 32-wide tiles, ragged last block
    ((1, 8, 2, 2), 1, 8, "float32"),     # fewer positions than the tile: the big axis is C
    ((1, 256, 4, 4), 1, 64, "int8"),     # 64-byte tile rows
])
def test_pack_unpack_through_vector_tiles(engine, shape, bt, bl, dtype):
    """Shapes that take the register-tile transpose, with tails on either axis."""
    x = rand(shape, dtype, seed=21)
    packed = run(engine, "PackNCHW", {"batch": bt, "block": bl}, x)
    np.testing.assert_array_equal(packed, ref_pack(x, bt, bl))
    back = run(engine, "UnpackNCHW", {"batch": bt, "block": bl, "shape": list(shape)}, packed)
    np.testing.assert_array_equal(back, x)
    y = run(engine, "Transpose", {"perm": [0, 2, 3, 1]}, x)
    np.testing.assert_array_equal(y, x.transpose(0, 2, 3, 1))


def test_pack_uses_config_blocking(engine):
    cfg = Config.preset("tiny")
    x = rand((1, 6, 3, 3), "int8")
    packed = run(engine, "PackNCHW", {"batch": cfg.batch, "block": cfg.block_in}, x)
    assert packed.shape == (1, 2, 3, 3, 1, 4)
    np.testing.assert_array_equal(packed[0, 1, :, :, 0, 2:], 0)  # channels 6, 7 are padding


@pytest.mark.parametrize("op,attrs,specs,match", [
    ("Reshape", {"shape": [7, -1]}, [((2, 3), "float32")], "cannot reshape"),
    ("Reshape", {"shape": [-1, -1]}, [((2, 3), "float32")], "more than one"),
    ("Transpose", {"perm": [0, 0]}, [((2, 3), "float32")], "permutation"),
    ("Concat", {"axis": 0}, [((2, 3), "float32"), ((2, 4), "float32")], "does not match"),
    ("Concat", {}, [((2, 3), "float32")], "axis"),
    ("Slice", {"starts": [0], "ends": [1], "steps": [0]}, [((2, 3), "float32")], "steps"),
    ("PackNCHW", {"block": 16}, [((2, 3), "int8")], "4-D"),
    ("UnpackNCHW", {"block": 16, "shape": [1, 3, 2, 2]}, [((1, 1, 2, 2, 1, 8), "int8")],
     "blocked layout"),
])
def test_bad_inputs_raise_compile_error(engine, op, attrs, specs, match):
    with pytest.raises(KernelError, match=match) as info:
        cpu_kernels.get(op, attrs, specs, engine=engine)
    assert op in str(info.value)
