"""The compiled-model container: round trip, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.errors import ArtifactError
from tessera.runtime.artifact import pack_arrays, read_container, unpack_arrays, write_container


def _arrays():
    rng = np.random.default_rng(0)
    return {"w": rng.integers(-128, 128, (3, 5), dtype=np.int8),
            "b": rng.integers(-1000, 1000, 7).astype(np.int32),
            "s": rng.standard_normal((2, 2, 2)).astype(np.float32)}


def test_round_trip(tmp_path):
    index, blob = pack_arrays(_arrays())
    path = tmp_path / "m.tsr"
    write_container(path, {"params": blob, "program": b"\x01\x02"}, {"index": index, "v": 3})
    sections, meta = read_container(path)
    assert sections["program"] == b"\x01\x02" and meta["v"] == 3
    back = unpack_arrays(meta["index"], sections["params"])
    for k, v in _arrays().items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


def test_bad_files_raise_clear_errors(tmp_path):
    path = tmp_path / "m.tsr"
    index, blob = pack_arrays(_arrays())
    write_container(path, {"params": blob}, {"index": index})
    raw = path.read_bytes()
    (tmp_path / "cut.tsr").write_bytes(raw[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        read_container(tmp_path / "cut.tsr")
    (tmp_path / "foreign.tsr").write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(ArtifactError, match="not a Tessera compiled model"):
        read_container(tmp_path / "foreign.tsr")
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF
    (tmp_path / "flip.tsr").write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="corrupt"):
        read_container(tmp_path / "flip.tsr")
    newer = bytearray(raw)
    newer[8] = 99
    (tmp_path / "new.tsr").write_bytes(bytes(newer))
    with pytest.raises(ArtifactError, match="format version 99"):
        read_container(tmp_path / "new.tsr")
    older = bytearray(raw)
    older[8] = 1  # format 1 stored CPU kernels as LLVM IR text: refused, naming the version
    (tmp_path / "v1.tsr").write_bytes(bytes(older))
    with pytest.raises(ArtifactError, match="format version 1; this Tessera reads version 2"):
        read_container(tmp_path / "v1.tsr")
    with pytest.raises(ArtifactError, match="cannot read"):
        read_container(tmp_path / "missing.tsr")
