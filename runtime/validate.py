"""Reading a compiled-model file into a :class:`~tessera.runtime.plan.Plan`, checking it first.

Every field is checked against its schema and against the plan's invariants before anything of
the file is used; a violation raises :class:`~tessera.errors.ArtifactError` naming the file and
the field, e.g. ``steps[3].uop_load_pcs[2]: 97 is outside the code (40 instructions)``.
See ``docs/threat-model.md`` for what these checks guarantee.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.errors import ArtifactError, ConfigError, KernelError
from tessera.isa import INSN_BYTES
from tessera.runtime.cpu.op import CpuOp
from tessera.runtime.plan import (
    LAYOUTS,
    REGION_LIMIT,
    REGIONS,
    AccelStep,
    CpuStep,
    Plan,
    Slot,
)

__all__ = ["plan_from_file", "MAX_NAME", "MAX_STEPS", "MAX_SLOTS"]

MAX_NAME = 256  # characters of a tensor, slot or step name
MAX_STEPS = 100_000
MAX_SLOTS = 200_000
MAX_RANK = 8
_NAME = re.compile(r"[\w.:@/+\-\[\]]+")  # printable identifiers; no spaces, quotes or controls
SLOT_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "uint32", "float32", "float64",
               "bool")


class _Checker:
    """Collects the file name into every message."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, msg: str) -> ArtifactError:
        return ArtifactError(f"{self.path!r}: {where}: {msg}")

    def obj(self, v: Any, where: str, keys: set[str], optional: set[str] = frozenset()
            ) -> dict:
        if not isinstance(v, dict):
            raise self.fail(where, f"must be an object, not {type(v).__name__}")
        missing = keys - set(v)
        extra = set(v) - keys - optional
        if missing or extra:
            raise self.fail(where, f"must have the keys {sorted(keys)}; missing "
                                   f"{sorted(missing)}, unknown {sorted(extra)[:5]}")
        return v

    def int_(self, v: Any, where: str, lo: int = 0, hi: int = 1 << 62) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(where, f"must be an integer, not {v!r}"[:200])
        if not lo <= v <= hi:
            raise self.fail(where, f"{v} is outside [{lo}, {hi}]")
        return v

    def list_(self, v: Any, where: str, max_len: int) -> list:
        if not isinstance(v, list):
            raise self.fail(where, f"must be a list, not {type(v).__name__}")
        if len(v) > max_len:
            raise self.fail(where, f"has {len(v)} entries, more than {max_len}")
        return v

    def name(self, v: Any, where: str) -> str:
        if not isinstance(v, str) or not 0 < len(v) <= MAX_NAME or not _NAME.fullmatch(v):
            raise self.fail(where, f"must be a name of 1 to {MAX_NAME} letters, digits or "
                                   f"._:@/+-[] characters, not {str(v)[:80]!r}")
        return v

    def shape(self, v: Any, where: str) -> tuple[int, ...]:
        dims = self.list_(v, where, MAX_RANK)
        return tuple(self.int_(d, f"{where}[{k}]", 0, 1 << 31) for k, d in enumerate(dims))


def _json(c: _Checker, data: bytes, where: str) -> Any:
    def bad_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data, parse_constant=bad_constant)
    except (ValueError, RecursionError) as exc:
        raise c.fail(where, f"is not valid JSON: {exc}") from None


def _slot(c: _Checker, d: Any, where: str) -> Slot:
    d = c.obj(d, where, {"name", "region", "offset", "nbytes", "shape", "dtype", "layout"})
    name = c.name(d["name"], f"{where}.name")
    if d["region"] not in REGIONS:
        raise c.fail(f"{where}.region", f"must be one of {REGIONS}, not {d['region']!r}"[:200])
    if d["layout"] not in LAYOUTS:
        raise c.fail(f"{where}.layout", f"must be one of {LAYOUTS}, not {d['layout']!r}"[:200])
    if d["dtype"] not in SLOT_DTYPES:
        raise c.fail(f"{where}.dtype", f"must be one of {SLOT_DTYPES}, not {d['dtype']!r}"[:200])
    shape = c.shape(d["shape"], f"{where}.shape")
    offset = c.int_(d["offset"], f"{where}.offset", 0, REGION_LIMIT)
    nbytes = c.int_(d["nbytes"], f"{where}.nbytes", 0, REGION_LIMIT)
    want = math.prod(shape) * np.dtype(d["dtype"]).itemsize
    if nbytes != want:
        raise c.fail(f"{where}.nbytes", f"{nbytes} does not match {d['dtype']}{list(shape)} "
                                        f"({want} bytes)")
    return Slot(name, d["region"], offset, nbytes, shape, d["dtype"], d["layout"])


def _params(c: _Checker, index: Any, blob: bytes, slots: dict[str, Slot]
            ) -> dict[str, np.ndarray]:
    from tessera.runtime.artifact import unpack_arrays

    index = c.list_(index, "params_index", MAX_SLOTS)
    for k, e in enumerate(index):
        e = c.obj(e, f"params_index[{k}]", {"name", "dtype", "shape", "offset"})
        c.name(e["name"], f"params_index[{k}].name")
        c.shape(e["shape"], f"params_index[{k}].shape")
        c.int_(e["offset"], f"params_index[{k}].offset", 0, len(blob))
    try:
        params = unpack_arrays(index, blob)
    except ArtifactError as exc:
        raise c.fail("params", str(exc)) from None
    want = {n for n, s in slots.items() if s.region == "params"}
    if set(params) != want:
        raise c.fail("params_index", f"names the arrays {sorted(params)[:5]}..., but the params "
                                     f"slots are {sorted(want)[:5]}...")
    for name, arr in params.items():
        s = slots[name]
        if tuple(arr.shape) != s.shape or arr.dtype.name != s.dtype:
            raise c.fail(f"params {name!r}", f"is {arr.dtype.name}{list(arr.shape)} but its slot "
                                            f"is {s.dtype}{list(s.shape)}")
    return params


def _accel_step(c: _Checker, e: dict, k: int, sections: dict[str, bytes]) -> AccelStep:
    where = f"steps[{k}]"
    c.obj(e, where, {"kind", "name", "op", "inputs", "outputs", "info", "uop_load_pcs"})
    code, uops = sections.get(f"code/{k}"), sections.get(f"uops/{k}")
    if code is None or uops is None:
        raise c.fail(where, f"has no code/{k} or uops/{k} section")
    if not code or len(code) % INSN_BYTES:
        raise c.fail(f"code/{k}", f"must be a non-empty multiple of {INSN_BYTES} bytes, not "
                                  f"{len(code)}")
    if len(uops) % 4:
        raise c.fail(f"uops/{k}", f"must be a multiple of 4 bytes, not {len(uops)}")
    n = len(code) // INSN_BYTES
    pcs = c.list_(e["uop_load_pcs"], f"{where}.uop_load_pcs", n)
    for j, pc in enumerate(pcs):
        if isinstance(pc, bool) or not isinstance(pc, int) or not 0 <= pc < n:
            raise c.fail(f"{where}.uop_load_pcs[{j}]", f"{pc!r} is outside the code ({n} "
                                                       f"instructions)"[:200])
    if not isinstance(e["op"], str) or len(e["op"]) > MAX_NAME:
        raise c.fail(f"{where}.op", "must be a short string")
    return AccelStep(e["name"], e["op"], e["inputs"], e["outputs"], code, uops, list(pcs),
                     e["info"])


def _cpu_step(c: _Checker, e: dict, k: int) -> CpuStep:
    where = f"steps[{k}]"
    c.obj(e, where, {"kind", "name", "op", "inputs", "outputs", "info"})
    try:
        op = CpuOp.from_json(e["op"])
    except KernelError as exc:
        raise c.fail(f"{where}.op", str(exc)) from None
    return CpuStep(e["name"], op, e["inputs"], e["outputs"], e["info"])


def _check_wiring(c: _Checker, plan: Plan) -> None:
    """Every step reads slots that exist and were produced earlier (or are graph inputs or
    params); CPU steps' slots hold what their kernels expect; outputs are produced."""
    slots = plan.slots
    produced = set(plan.inputs.values()) | {n for n, s in slots.items() if s.region == "params"}
    for k, step in enumerate(plan.steps):
        where = f"steps[{k}]"
        for j, s in enumerate(step.inputs):
            if s == "" and step.kind == "cpu":
                continue
            if s not in slots:
                raise c.fail(f"{where}.inputs[{j}]", f"{str(s)[:80]!r} is not a slot")
            if s not in produced:
                raise c.fail(f"{where}.inputs[{j}]", f"slot {s!r} is read before any step "
                                                     f"produces it")
        for j, s in enumerate(step.outputs):
            if s not in slots or slots[s].region != "arena":
                raise c.fail(f"{where}.outputs[{j}]", f"{str(s)[:80]!r} is not an arena slot")
            produced.add(s)
        if isinstance(step, CpuStep):
            op = step.op
            if len(step.inputs) != len(op.in_specs) or len(step.outputs) != len(op.out_specs):
                raise c.fail(where, "inputs/outputs do not line up with the op's specs")
            for j, (s, spec) in enumerate(zip(step.inputs, op.in_specs, strict=True)):
                if (s == "") != (spec is None):
                    raise c.fail(f"{where}.inputs[{j}]", "is absent exactly when the op's "
                                                         "input spec is not")
                if spec is not None:
                    _same_size(c, f"{where}.inputs[{j}]", slots[s], spec)
            for j, (s, spec) in enumerate(zip(step.outputs, op.out_specs, strict=True)):
                _same_size(c, f"{where}.outputs[{j}]", slots[s], spec)
    for kind, names in (("inputs", plan.inputs), ("outputs", plan.outputs)):
        for g, s in names.items():
            c.name(g, f"{kind} name")
            if s not in slots or s not in produced:
                raise c.fail(f"{kind}[{g!r}]", f"slot {str(s)[:80]!r} does not exist or is "
                                               f"never produced")


def _same_size(c: _Checker, where: str, slot: Slot, spec: tuple) -> None:
    shape, dtype = spec
    if slot.dtype != dtype.name or math.prod(slot.shape) != math.prod(shape):
        raise c.fail(where, f"slot {slot.name!r} holds {slot.dtype}{list(slot.shape)}, not "
                            f"{dtype.name}{list(shape)}")


def plan_from_file(path: str, sections: dict[str, bytes], head: Any
                   ) -> tuple[Plan, dict[str, tuple[tuple[int, ...], str]], dict[str, Any]]:
    """Build and check the plan of a container's ``sections`` and header ``head``."""
    from tessera.runtime.artifact import ARTIFACT_KIND

    c = _Checker(path)
    head = c.obj(head, "header meta", {"kind", "config", "params_index", "meta"})
    if head["kind"] != ARTIFACT_KIND:
        raise ArtifactError(f"{path!r} is a Tessera container but not a compiled model")
    try:
        if not isinstance(head["config"], dict):
            raise ConfigError("the config must be an object")
        cfg = Config.from_dict(head["config"])
    except ConfigError as exc:
        raise c.fail("config", str(exc)) from None
    if not isinstance(head["meta"], dict):
        raise c.fail("meta", "must be an object")
    for name in ("graph.json", "params"):
        if name not in sections:
            raise c.fail("sections", f"has no {name!r} section")
    g = c.obj(_json(c, sections["graph.json"], "graph.json"), "graph.json",
              {"inputs", "outputs", "slots", "steps", "arena_size", "params_size",
               "input_specs"})
    arena = c.int_(g["arena_size"], "arena_size", 0, REGION_LIMIT)
    params_size = c.int_(g["params_size"], "params_size", 0, REGION_LIMIT)
    slots: dict[str, Slot] = {}
    for k, d in enumerate(c.list_(g["slots"], "slots", MAX_SLOTS)):
        s = _slot(c, d, f"slots[{k}]")
        if s.name in slots:
            raise c.fail(f"slots[{k}].name", f"{s.name!r} is used twice")
        top = arena if s.region == "arena" else params_size
        if s.offset + s.nbytes > top:
            raise c.fail(f"slots[{k}]", f"[{s.offset}, {s.offset + s.nbytes}) lies outside the "
                                        f"{s.region} region ({top} bytes)")
        slots[s.name] = s
    params = _params(c, head["params_index"], sections["params"], slots)
    steps: list[AccelStep | CpuStep] = []
    for k, e in enumerate(c.list_(g["steps"], "steps", MAX_STEPS)):
        if not isinstance(e, dict) or e.get("kind") not in ("accel", "cpu"):
            raise c.fail(f"steps[{k}].kind", "must be 'accel' or 'cpu'")
        step = _accel_step(c, e, k, sections) if e["kind"] == "accel" else _cpu_step(c, e, k)
        c.name(step.name, f"steps[{k}].name")
        for key in ("inputs", "outputs"):
            for j, s in enumerate(c.list_(getattr(step, key), f"steps[{k}].{key}", 64)):
                if not isinstance(s, str):
                    raise c.fail(f"steps[{k}].{key}[{j}]", "must be a slot name")
        if not isinstance(step.info, dict):
            raise c.fail(f"steps[{k}].info", "must be an object")
        steps.append(step)
    for key in ("inputs", "outputs"):
        if not isinstance(g[key], dict) or not all(isinstance(v, str) for v in g[key].values()):
            raise c.fail(key, "must map graph tensor names to slot names")
    plan = Plan(cfg, slots, steps, dict(g["inputs"]), dict(g["outputs"]), arena, params,
                params_size)
    _check_wiring(c, plan)
    specs_raw = c.obj(g["input_specs"], "input_specs", set(plan.inputs))
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, v in specs_raw.items():
        where = f"input_specs[{name!r}]"
        if not isinstance(v, list) or len(v) != 2 or v[1] not in SLOT_DTYPES:
            raise c.fail(where, "must be [[dims...], dtype]")
        shape = c.shape(v[0], where)
        slot = slots[plan.inputs[name]]
        if math.prod(shape) != math.prod(slot.shape) or v[1] != slot.dtype:
            raise c.fail(where, f"{v[1]}{list(shape)} does not match its slot "
                                f"{slot.dtype}{list(slot.shape)}")
        specs[name] = (shape, v[1])
    return plan, specs, head["meta"]
