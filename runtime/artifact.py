"""The compiled-model file (``.tsr``): one container of named sections holding data only.

Layout (little-endian)::

    b"TESSERA\\0"  magic (8 bytes)
    u32           format version
    u64           header length H
    H bytes       header JSON: {"sections": [{"name", "offset", "size", "sha256"}], "meta": {...}}
    ...           section payloads, at the offsets the header gives (relative to the payload start)

A compiled model (:func:`save`, :func:`load`) has the sections ``graph.json`` (slots, steps,
inputs, outputs, sizes), ``params`` (one raw blob of arrays, indexed in the header's meta by
name, dtype, shape and offset), and per accelerator step ``code/K`` (encoded instructions) and
``uops/K`` (micro-op words). CPU steps are *descriptions* of kernel calls (operator, attributes,
input shapes and dtypes, slot wiring) that the runtime regenerates through its kernel library:
a file never carries native code or IR, and loading never executes anything from it. A
truncated, corrupted, foreign or inconsistent file, or one of another format version, raises
:class:`~tessera.errors.ArtifactError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tessera.errors import ArtifactError
from tessera.runtime.plan import AccelStep, Plan

__all__ = ["MAGIC", "FORMAT_VERSION", "ARTIFACT_KIND", "write_container", "read_container",
           "pack_arrays", "unpack_arrays", "save", "load"]

MAGIC = b"TESSERA\0"
FORMAT_VERSION = 2
ARTIFACT_KIND = "tessera-compiled-model"
_PREFIX = struct.Struct("<8sIQ")
_ALLOWED_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "uint32", "float32", "float64",
                   "bool"}


def write_container(path: str | Path, sections: dict[str, bytes], meta: dict[str, Any]) -> None:
    """Write ``sections`` (name -> bytes) and JSON-serialisable ``meta`` to ``path``."""
    index, offset = [], 0
    for name, data in sections.items():
        if not isinstance(data, (bytes, bytearray)):
            raise ArtifactError(f"section {name!r} must be bytes, not {type(data).__name__}")
        index.append({"name": name, "offset": offset, "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    header = json.dumps({"sections": index, "meta": meta}, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
        f.write(header)
        for data in sections.values():
            f.write(data)


def read_container(path: str | Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Sections and meta of a file written by :func:`write_container`; verifies everything."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read compiled model {str(path)!r}: {exc}") from None
    if len(raw) < _PREFIX.size or raw[:8] != MAGIC:
        raise ArtifactError(f"{str(path)!r} is not a Tessera compiled model (bad magic)")
    _, version, hlen = _PREFIX.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{str(path)!r} has format version {version}; this Tessera reads "
                            f"version {FORMAT_VERSION}")
    start = _PREFIX.size + hlen
    if len(raw) < start:
        raise ArtifactError(f"{str(path)!r} is truncated (header cut short)")
    try:
        header = json.loads(raw[_PREFIX.size:start])
        index, meta = header["sections"], header["meta"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{str(path)!r} has a corrupt header: {exc}") from None
    sections = {}
    for entry in index:
        lo = start + int(entry["offset"])
        hi = lo + int(entry["size"])
        if hi > len(raw):
            raise ArtifactError(f"{str(path)!r} is truncated (section {entry['name']!r} needs "
                                f"{hi} bytes, the file has {len(raw)})")
        data = raw[lo:hi]
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"{str(path)!r}: section {entry['name']!r} is corrupt "
                                f"(checksum mismatch)")
        sections[entry["name"]] = data
    return sections, meta


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], bytes]:
    """A JSON-able index and one blob holding ``arrays`` (each aligned to 64 bytes)."""
    index, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr).reshape(np.shape(arr))  # keeps 0-d arrays 0-d
        if arr.dtype.name not in _ALLOWED_DTYPES:
            raise ArtifactError(f"array {name!r} has unsupported dtype {arr.dtype}")
        pad = -offset % 64
        chunks.append(b"\0" * pad)
        offset += pad
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        index.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape),
                      "offset": offset})
        chunks.append(data)
        offset += len(data)
    return index, b"".join(chunks)


def unpack_arrays(index: list[dict[str, Any]], blob: bytes) -> dict[str, np.ndarray]:
    out = {}
    for entry in index:
        dtype = entry["dtype"]
        if dtype not in _ALLOWED_DTYPES:
            raise ArtifactError(f"array {entry['name']!r} has unsupported dtype {dtype!r}")
        dt = np.dtype(dtype).newbyteorder("<")
        shape = tuple(int(d) for d in entry["shape"])
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        lo = int(entry["offset"])
        if lo < 0 or lo + n > len(blob):
            raise ArtifactError(f"array {entry['name']!r} lies outside the params blob")
        out[entry["name"]] = np.frombuffer(blob, dt, count=n // dt.itemsize,
                                           offset=lo).reshape(shape).astype(dt.newbyteorder("="))
    return out


# -- compiled models ----------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def save(path: str | Path, plan: Plan, input_specs: dict[str, tuple[tuple[int, ...], str]],
         meta: dict[str, Any]) -> None:
    """Write ``plan`` (with the inputs' specs and JSON ``meta``) as a compiled-model file."""
    index, blob = pack_arrays(plan.params)
    sections: dict[str, bytes] = {"params": blob}
    steps = []
    for k, step in enumerate(plan.steps):
        entry: dict[str, Any] = {"kind": step.kind, "name": step.name,
                                 "inputs": list(step.inputs), "outputs": list(step.outputs),
                                 "info": _jsonable(step.info)}
        if isinstance(step, AccelStep):
            entry.update({"op": step.op, "uop_load_pcs": list(step.uop_load_pcs)})
            sections[f"code/{k}"] = bytes(step.code)
            sections[f"uops/{k}"] = bytes(step.uop_words)
        else:
            entry["op"] = step.op.to_json()
        steps.append(entry)
    graph = {"inputs": plan.inputs, "outputs": plan.outputs,
             "slots": [s.to_json() for s in plan.slots.values()], "steps": steps,
             "arena_size": plan.arena_size, "params_size": plan.params_size,
             "input_specs": {k: [list(v[0]), v[1]] for k, v in input_specs.items()}}
    try:
        sections["graph.json"] = json.dumps(graph, allow_nan=False).encode()
        head = {"kind": ARTIFACT_KIND, "config": plan.config.to_dict(), "params_index": index,
                "meta": _jsonable(meta)}
        json.dumps(head, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the model cannot be saved as JSON: {exc}") from None
    write_container(path, sections, head)


def load(path: str | Path) -> tuple[Plan, dict[str, tuple[tuple[int, ...], str]],
                                     dict[str, Any]]:
    """The plan, input specs and meta of a compiled-model file, validated before anything of it
    is used (:mod:`tessera.runtime.validate`)."""
    from tessera.runtime.validate import plan_from_file

    sections, head = read_container(path)
    return plan_from_file(str(path), sections, head)
