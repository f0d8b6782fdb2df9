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
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tessera.errors import ArtifactError
from tessera.files import open_regular
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
    """Write ``sections`` (name -> bytes) and JSON-serialisable ``meta`` to ``path`` (through a
    temporary file in the same directory, so a failed write leaves no partial file)."""
    index, offset = [], 0
    for name, data in sections.items():
        if not isinstance(data, (bytes, bytearray)):
            raise ArtifactError(f"section {name!r} must be bytes, not {type(data).__name__}")
        index.append({"name": name, "offset": offset, "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    try:
        header = json.dumps({"sections": index, "meta": meta}, sort_keys=True,
                            allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the container's meta must be JSON data: {exc}") from None
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
            f.write(header)
            for data in sections.values():
                f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"cannot write compiled model {str(path)!r}: "
                            f"{exc.strerror or exc}") from None


# Bounds on what a file may declare; checked against the file's size before anything is read.
MAX_FILE_BYTES = 1 << 32  # a model's params and arena are each < 512 MiB (REGION_LIMIT)
MAX_HEADER_BYTES = 1 << 24
MAX_SECTIONS = 1 << 17
_SECTION_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}(/[0-9]{1,6})?")


def _open_regular(path: str | Path) -> tuple[int, int]:
    """``(fd, size)`` of a regular file opened for reading; anything else (a directory, FIFO,
    device such as /dev/zero, socket) is refused without blocking or reading."""
    return open_regular(path, "compiled model", ArtifactError, MAX_FILE_BYTES)


def _read_exact(fd: int, offset: int, n: int, path: str | Path, what: str) -> bytes:
    data = os.pread(fd, n, offset) if n else b""
    if len(data) != n:
        raise ArtifactError(f"{str(path)!r} is truncated ({what} cut short)")
    return data


def _index(path: str | Path, header: Any, payload: int) -> list[tuple[str, int, int, str]]:
    """The header's section list, checked: names, integer offsets and sizes inside the payload,
    no overlaps, checksums as 64 hex digits."""
    where = f"{str(path)!r} has a corrupt header"
    if not isinstance(header, dict) or set(header) != {"sections", "meta"}:
        raise ArtifactError(f"{where}: it must be an object with the keys sections and meta")
    entries = header["sections"]
    if not isinstance(entries, list) or len(entries) > MAX_SECTIONS:
        raise ArtifactError(f"{where}: sections must be a list of at most {MAX_SECTIONS}")
    out, seen = [], set()
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"name", "offset", "size", "sha256"}:
            raise ArtifactError(f"{where}: sections[{k}] must have exactly the keys name, "
                                f"offset, size, sha256")
        name, off, size, digest = e["name"], e["offset"], e["size"], e["sha256"]
        if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name) or name in seen:
            raise ArtifactError(f"{where}: sections[{k}].name {str(name)[:60]!r} is not a "
                                f"section name, or repeats one")
        for key, v in (("offset", off), ("size", size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ArtifactError(f"{where}: sections[{k}].{key} must be a non-negative "
                                    f"integer, not {v!r}"[:200])
        if off + size > payload:
            raise ArtifactError(f"{str(path)!r} is truncated (section {name!r} needs "
                                f"{off + size} payload bytes, the file has {payload})")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ArtifactError(f"{where}: sections[{k}].sha256 must be 64 hex digits")
        seen.add(name)
        out.append((name, off, size, digest))
    spans = sorted((off, off + size, name) for name, off, size, _ in out if size)
    for (_, hi1, n1), (lo2, _, n2) in zip(spans, spans[1:]):
        if lo2 < hi1:
            raise ArtifactError(f"{where}: sections {n1!r} and {n2!r} overlap")
    return out


def read_container(path: str | Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Sections and meta of a file written by :func:`write_container`; verifies everything.

    Only regular files are read; the header's declared length and every section's offset and
    size are checked against the file's size before the bytes are read, so a file can make the
    reader allocate at most its own size.
    """
    fd, fsize = _open_regular(path)
    try:
        prefix = _read_exact(fd, 0, min(_PREFIX.size, fsize), path, "prefix")
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise ArtifactError(f"{str(path)!r} is not a Tessera compiled model (bad magic)")
        _, version, hlen = _PREFIX.unpack(prefix)
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{str(path)!r} has format version {version}; this Tessera "
                                f"reads version {FORMAT_VERSION}")
        if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > fsize:
            raise ArtifactError(f"{str(path)!r} is truncated (header cut short: it declares "
                                f"{hlen} bytes, the file has {fsize - _PREFIX.size} after the "
                                f"prefix)")
        raw_header = _read_exact(fd, _PREFIX.size, hlen, path, "header")
        try:
            header = json.loads(raw_header, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ArtifactError(f"{str(path)!r} has a corrupt header: {exc}") from None
        start = _PREFIX.size + hlen
        index = _index(path, header, fsize - start)
        sections = {}
        for name, off, size, digest in index:
            data = _read_exact(fd, start + off, size, path, f"section {name!r}")
            if hashlib.sha256(data).hexdigest() != digest:
                raise ArtifactError(f"{str(path)!r}: section {name!r} is corrupt "
                                    f"(checksum mismatch)")
            sections[name] = data
    finally:
        os.close(fd)
    return sections, header["meta"]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


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
        if any(d < 0 for d in shape):
            raise ArtifactError(f"array {entry['name']!r} has a negative dimension")
        n = math.prod(shape) * dt.itemsize  # exact: no int64 wrap for absurd shapes
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
    from tessera.runtime.validate import _Checker, check_meta, check_name

    names = list(plan.slots) + [s.name for s in plan.steps] + list(plan.inputs) + \
        list(plan.outputs)
    for name in names:
        why = check_name(name)
        if why:
            raise ArtifactError(f"cannot save: the name {name[:60]!r} {why}")
    check_meta(_Checker(str(path)), _jsonable(meta))
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
