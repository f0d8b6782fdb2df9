"""Reading a compiled-model file into a :class:`~tessera.runtime.plan.Plan`, checking it first.

Every field is checked against its schema (types, ranges, known keys only) and the plan against
its invariants before anything of the file is used; a violation raises
:class:`~tessera.errors.ArtifactError` naming the file and the field, e.g.
``steps[3].uop_load_pcs[2]: 97 is outside the code (40 instructions)``:

- the config builds (:class:`~tessera.config.Config` checks), the sections are exactly those
  the plan needs;
- slots: names, regions, layouts, dtypes, ``nbytes`` equal to the stored shape's size, blocked
  shapes of the config's block, ranges inside their region; no two slots that are live at the
  same time share a byte (params are live throughout), no slot is produced twice;
- params: the blob's arrays are exactly the params slots, with their shapes and dtypes;
- accelerator steps: the code is a non-empty multiple of 16 bytes, every instruction decodes for
  the config and re-encodes to the same word, the stream ends with its only FINISH and satisfies
  the token invariant (no pop before its push, no queue over ``dep_queue_depth``); the micro-op
  load pcs are exactly its LOADs of micro-ops, which read inside the step's micro-op section;
  every other LOAD reads inside one of the step's input slots and every STORE writes inside one
  of its output slots (so, relocated, the device touches only the buffers the runtime allocated);
- CPU steps: every kernel is regenerated from its description by the kernel library, whose
  generators validate attributes, shapes and dtypes; the slot wiring and sizes match;
- every step reads only slots produced by an earlier step, graph inputs or params; graph outputs
  are produced; input specs match their slots.

See ``docs/threat-model.md`` for what these checks guarantee.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.errors import ArtifactError, ConfigError, IsaError, KernelError, ProgramError
from tessera.isa import INSN_BYTES, MemType, Opcode, decode, depth, elem_bytes, encode
from tessera.runtime.cpu.op import CpuOp
from tessera.runtime.deps import check_tokens
from tessera.runtime.plan import (
    LAYOUTS,
    REGION_BASES,
    REGION_LIMIT,
    REGIONS,
    AccelStep,
    CpuStep,
    Plan,
    Slot,
)

__all__ = ["plan_from_file", "check_name", "check_meta", "MAX_NAME", "MAX_STEPS", "MAX_SLOTS"]

MAX_NAME = 256  # characters of a tensor, slot or step name
MAX_STEPS = 100_000
MAX_SLOTS = 200_000
MAX_STEP_SLOTS = 64  # inputs or outputs of one step
MAX_RANK = 8
MAX_DIM = 1 << 31
# Printable, no whitespace, quotes, backslash or backtick; "/" separates components, none of
# which may be empty (a leading "/" aside: PyTorch's exporter names every tensor
# "/scope/op_output_0"), "." or "..". Names are never used as paths; the rule keeps them plain.
_NAME = re.compile(r"[^\x00-\x20\x7f\"'`\\]+")
SLOT_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "uint32", "float32", "float64",
               "bool")
# An accelerator step's info "tile": [tn, to, th, tw (0: the full width), kc, tkh, tkw (0: the
# whole kernel), accumulator regions] -> the lowest value of each entry.
TILE_FIELDS = {"tn": 1, "to": 1, "th": 1, "tw": 0, "kc": 1, "tkh": 0, "tkw": 0, "regions": 2}


def check_name(v: Any) -> str | None:
    """Why ``v`` is not an acceptable name (None when it is)."""
    if not isinstance(v, str) or not 0 < len(v) <= MAX_NAME:
        return f"must be a string of 1 to {MAX_NAME} characters"
    if not _NAME.fullmatch(v):
        return "must not contain whitespace, quotes, backslashes or control characters"
    parts = v.split("/")
    if parts[0] == "" and len(parts) > 1:  # "/model.0/conv/Conv_output_0"
        parts = parts[1:]
    if any(part in ("", ".", "..") for part in parts):
        return "must not be path-like (empty, '.' or '..' components around '/')"
    return None


class _Checker:
    """Schema helpers; every message carries the file name and the field."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, msg: str) -> ArtifactError:
        return ArtifactError(f"{self.path!r}: {where}: {msg}")

    def obj(self, v: Any, where: str, keys: set[str], optional: frozenset[str] = frozenset()
            ) -> dict:
        if not isinstance(v, dict):
            raise self.fail(where, f"must be an object, not {type(v).__name__}")
        missing = keys - set(v)
        extra = set(v) - keys - optional
        if missing or extra:
            raise self.fail(where, f"must have the keys {sorted(keys)}; missing "
                                   f"{sorted(missing)}, unknown {sorted(map(str, extra))[:5]}")
        return v

    def int_(self, v: Any, where: str, lo: int = 0, hi: int = 1 << 62) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(where, f"must be an integer, not {v!r}"[:200])
        if not lo <= v <= hi:
            raise self.fail(where, f"{v} is outside [{lo}, {hi}]")
        return v

    def str_(self, v: Any, where: str, max_len: int = MAX_NAME,
             choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(v, str) or len(v) > max_len:
            raise self.fail(where, f"must be a string of at most {max_len} characters")
        if choices is not None and v not in choices:
            raise self.fail(where, f"must be one of {choices}, not {v[:60]!r}")
        return v

    def list_(self, v: Any, where: str, max_len: int) -> list:
        if not isinstance(v, list):
            raise self.fail(where, f"must be a list, not {type(v).__name__}")
        if len(v) > max_len:
            raise self.fail(where, f"has {len(v)} entries, more than {max_len}")
        return v

    def name(self, v: Any, where: str) -> str:
        why = check_name(v)
        if why:
            raise self.fail(where, f"{str(v)[:60]!r} {why}")
        return v

    def shape(self, v: Any, where: str) -> tuple[int, ...]:
        dims = self.list_(v, where, MAX_RANK)
        return tuple(self.int_(d, f"{where}[{k}]", 0, MAX_DIM) for k, d in enumerate(dims))


# -- meta and step info ----------------------------------------------------------------------


def check_meta(c: _Checker, meta: Any, where: str = "meta") -> dict:
    """The compilation facts a model carries: all optional, each of a fixed type."""
    meta = c.obj(meta, where, set(), frozenset({"calibration", "partition", "compile_seconds",
                                                "precision", "compile_phases"}))
    if "precision" in meta and meta["precision"] not in ("int8", "float"):
        raise c.fail(f"{where}.precision", f"must be 'int8' or 'float', not "
                                           f"{meta['precision']!r}"[:200])
    if "calibration" in meta:
        c.str_(meta["calibration"], f"{where}.calibration", 200)

    def seconds(v: Any, w: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e9:
            raise c.fail(w, "must be a non-negative number")
    if "compile_seconds" in meta:
        seconds(meta["compile_seconds"], f"{where}.compile_seconds")
    if "compile_phases" in meta:  # phase name -> seconds, in compile order
        phases = meta["compile_phases"]
        if not isinstance(phases, dict) or len(phases) > 64:
            raise c.fail(f"{where}.compile_phases", "must be an object of at most 64 phases")
        for name, v in phases.items():
            c.str_(name, f"{where}.compile_phases key", 64)
            seconds(v, f"{where}.compile_phases.{name}")
    if "partition" in meta:
        rows = c.list_(meta["partition"], f"{where}.partition", MAX_STEPS)
        for k, row in enumerate(rows):
            w = f"{where}.partition[{k}]"
            if not isinstance(row, list) or len(row) != 3:
                raise c.fail(w, "must be [node, op, where]")
            for j, v in enumerate(row):
                c.str_(v, f"{w}[{j}]", 300)
    return meta


def _info(c: _Checker, info: Any, where: str, accel: bool) -> dict:
    ints = ({"macs", "gemm_steps", "insns", "est_cycles", "loads_skipped", "epilogue_steps"}
            if accel else {"macs"})
    keys = ints | {"op"} | ({"tile", "double_buffer", "counts"} if accel else set())
    info = c.obj(info, where, keys, frozenset({"members"}) if accel else frozenset())
    if "members" in info:  # the sibling layers of a grouped step
        members = c.list_(info["members"], f"{where}.members", MAX_STEP_SLOTS)
        for j, v in enumerate(members):
            c.str_(v, f"{where}.members[{j}]", MAX_NAME)
    c.str_(info["op"], f"{where}.op", 64)
    for k in ints:
        c.int_(info[k], f"{where}.{k}", 0)
    if accel:
        tile = c.list_(info["tile"], f"{where}.tile", len(TILE_FIELDS))
        if len(tile) != len(TILE_FIELDS):
            raise c.fail(f"{where}.tile", f"must have {len(TILE_FIELDS)} entries "
                                          f"{list(TILE_FIELDS)}")
        for j, (name, low) in enumerate(TILE_FIELDS.items()):
            c.int_(tile[j], f"{where}.tile[{j}] ({name})", low, 1 << 20)
        if tile[-1] not in (2, 4):
            raise c.fail(f"{where}.tile[{len(tile) - 1}] (regions)",
                         f"must be 2 or 4, not {tile[-1]!r}")
        if not isinstance(info["double_buffer"], bool):
            raise c.fail(f"{where}.double_buffer", "must be true or false")
        counts = c.obj(info["counts"], f"{where}.counts", set(),
                       frozenset({"load", "uop_load", "acc_load", "store", "gemm", "reset",
                                  "alu", "finish"}))
        for k, v in counts.items():
            c.int_(v, f"{where}.counts.{k}", 0)
    return info


# -- slots and params ------------------------------------------------------------------------


def _slot(c: _Checker, cfg: Config, d: Any, where: str) -> Slot:
    d = c.obj(d, where, {"name", "region", "offset", "nbytes", "shape", "dtype", "layout"})
    name = c.name(d["name"], f"{where}.name")
    region = c.str_(d["region"], f"{where}.region", choices=REGIONS)
    layout = c.str_(d["layout"], f"{where}.layout", choices=LAYOUTS)
    dtype = c.str_(d["dtype"], f"{where}.dtype", choices=SLOT_DTYPES)
    shape = c.shape(d["shape"], f"{where}.shape")
    offset = c.int_(d["offset"], f"{where}.offset", 0, REGION_LIMIT)
    nbytes = c.int_(d["nbytes"], f"{where}.nbytes", 0, REGION_LIMIT)
    want = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes != want:
        raise c.fail(f"{where}.nbytes", f"{nbytes} does not match {dtype}{list(shape)} "
                                        f"({want} bytes)")
    if (region == "params") != (layout == "raw"):
        raise c.fail(f"{where}.layout", "params slots are 'raw' and arena slots are not")
    if layout == "blocked" and (dtype != "int8" or len(shape) not in (4, 6)
                                or shape[-2:] != (cfg.batch, cfg.block_in)):
        raise c.fail(f"{where}.shape", f"a blocked slot must be int8 with trailing dims "
                                       f"({cfg.batch}, {cfg.block_in}), not {dtype}{list(shape)}")
    return Slot(name, region, offset, nbytes, shape, dtype, layout)


def _params(c: _Checker, index: Any, blob: bytes, slots: dict[str, Slot]
            ) -> dict[str, np.ndarray]:
    from tessera.runtime.artifact import unpack_arrays

    index = c.list_(index, "params_index", MAX_SLOTS)
    for k, e in enumerate(index):
        e = c.obj(e, f"params_index[{k}]", {"name", "dtype", "shape", "offset"})
        c.name(e["name"], f"params_index[{k}].name")
        c.str_(e["dtype"], f"params_index[{k}].dtype", choices=SLOT_DTYPES)
        c.shape(e["shape"], f"params_index[{k}].shape")
        c.int_(e["offset"], f"params_index[{k}].offset", 0, len(blob))
    names = [e["name"] for e in index]
    if len(set(names)) != len(names):
        raise c.fail("params_index", "names an array twice")
    want = {n for n, s in slots.items() if s.region == "params"}
    if set(names) != want:
        extra, missing = sorted(set(names) - want)[:3], sorted(want - set(names))[:3]
        raise c.fail("params_index", f"must name exactly the params slots; unknown {extra}, "
                                     f"missing {missing}")
    for e in index:
        s = slots[e["name"]]
        if tuple(e["shape"]) != s.shape or e["dtype"] != s.dtype:
            raise c.fail(f"params {e['name']!r}", f"is {e['dtype']}{e['shape']} but its slot "
                                                 f"is {s.dtype}{list(s.shape)}")
    try:
        return unpack_arrays(index, blob)
    except ArtifactError as exc:
        raise c.fail("params", str(exc)) from None


def _check_overlaps(c: _Checker, plan: Plan) -> None:
    """No two slots live at the same time share a byte (liveness as the plan's steps give it)."""
    end = len(plan.steps)
    first: dict[str, int] = {s: -1 for s in plan.inputs.values()}
    last: dict[str, int] = {}
    for k, step in enumerate(plan.steps):
        for s in step.inputs:
            if s:
                last[s] = k
        for s in step.outputs:
            first[s] = k
            last.setdefault(s, k)
    for s in list(plan.inputs.values()) + list(plan.outputs.values()):
        last[s] = end
    for name, s in plan.slots.items():
        if s.region == "params":
            first[name], last[name] = -1, end
    for region in REGIONS:
        used = sorted((s.offset, s.offset + s.nbytes, n) for n, s in plan.slots.items()
                      if s.region == region and s.nbytes and n in first)
        active: list[tuple[int, str]] = []
        for lo, hi, n in used:
            active = [(e, m) for e, m in active if e > lo]
            for _, m in active:
                if first[n] <= last.get(m, first[m]) and first[m] <= last.get(n, first[n]):
                    raise c.fail(f"slots {m!r} and {n!r}", f"overlap in the {region} region "
                                                           f"while both are live")
            active.append((hi, n))


# -- accelerator code ------------------------------------------------------------------------


def _check_code(c: _Checker, where: str, cfg: Config, step: AccelStep,
                slots: dict[str, Slot]) -> None:
    code = step.code
    n = len(code) // INSN_BYTES
    insns = []
    for pc in range(n):
        word = int.from_bytes(code[pc * INSN_BYTES:(pc + 1) * INSN_BYTES], "little")
        try:
            insn = decode(word, cfg)
            if encode(insn, cfg) != word:
                raise IsaError("unused bits are set")
        except IsaError as exc:
            raise c.fail(f"{where}.code[{pc}]", f"does not decode for this config: {exc}") \
                from None
        insns.append(insn)
    finishes = [pc for pc, i in enumerate(insns) if i.opcode == Opcode.FINISH]
    if finishes != [n - 1]:
        raise c.fail(f"{where}.code", f"must end with its only FINISH (FINISH at {finishes[:3]})")
    try:
        check_tokens(insns, cfg.dep_queue_depth)
    except ProgramError as exc:
        raise c.fail(f"{where}.code", f"dependency tokens: {exc}") from None
    n_uops = len(step.uop_words) // cfg.uop_elem_bytes
    uop_loads = [pc for pc, i in enumerate(insns)
                 if i.opcode == Opcode.LOAD and i.memory_type == MemType.UOP]
    if sorted(set(step.uop_load_pcs)) != uop_loads or len(step.uop_load_pcs) != len(uop_loads):
        raise c.fail(f"{where}.uop_load_pcs", f"must list exactly the micro-op loads "
                                              f"{uop_loads[:8]}, not {step.uop_load_pcs[:8]}")
    regions = {k: [] for k in ("load", "store")}
    for key, names in (("load", step.inputs), ("store", step.outputs)):
        for s in names:
            slot = slots[s]
            base = REGION_BASES[slot.region] + slot.offset
            regions[key].append((base, base + slot.nbytes, s))
    for pc, i in enumerate(insns):
        if i.opcode not in (Opcode.LOAD, Opcode.STORE) or i.x_size == 0:
            continue
        w = f"{where}.code[{pc}]"
        mt = MemType(i.memory_type)
        span = (i.y_size * i.x_size if i.opcode == Opcode.STORE else
                (i.y_pad_0 + i.y_size + i.y_pad_1) * (i.x_pad_0 + i.x_size + i.x_pad_1))
        if i.sram_base + span > depth(cfg, mt):
            raise c.fail(w, f"{mt.name} SRAM range [{i.sram_base}, {i.sram_base + span}) "
                            f"exceeds the buffer ({depth(cfg, mt)} elements)")
        if mt == MemType.UOP:
            if i.dram_base + i.x_size > n_uops or i.y_size != 1:
                raise c.fail(w, f"micro-op load [{i.dram_base}, {i.dram_base + i.x_size}) lies "
                                f"outside the step's {n_uops} micro-ops")
            continue
        if i.opcode == Opcode.LOAD and mt == MemType.OUT or \
                i.opcode == Opcode.STORE and mt != MemType.OUT:
            raise c.fail(w, f"a {Opcode(i.opcode).name} of {mt.name} is not allowed")
        if i.y_size == 0:
            continue
        eb = elem_bytes(cfg, mt)
        lo = i.dram_base * eb
        hi = (i.dram_base + (i.y_size - 1) * i.x_stride + i.x_size) * eb
        key = "load" if i.opcode == Opcode.LOAD else "store"
        if not any(base <= lo and hi <= top for base, top, _ in regions[key]):
            kind = "input" if key == "load" else "output"
            raise c.fail(w, f"{Opcode(i.opcode).name} of DRAM bytes [{lo:#x}, {hi:#x}) lies "
                            f"outside every {kind} slot of the step")


def _accel_step(c: _Checker, e: dict, k: int, sections: dict[str, bytes]) -> AccelStep:
    where = f"steps[{k}]"
    c.obj(e, where, {"kind", "name", "op", "inputs", "outputs", "info", "uop_load_pcs"})
    code, uops = sections[f"code/{k}"], sections[f"uops/{k}"]
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
    c.str_(e["op"], f"{where}.op", choices=("qconv2d", "qdense"))
    return AccelStep(e["name"], e["op"], e["inputs"], e["outputs"], code, uops, list(pcs),
                     _info(c, e["info"], f"{where}.info", True))


def _cpu_step(c: _Checker, e: dict, k: int) -> CpuStep:
    where = f"steps[{k}]"
    c.obj(e, where, {"kind", "name", "op", "inputs", "outputs", "info"})
    info = _info(c, e["info"], f"{where}.info", False)
    try:
        op = CpuOp.from_json(e["op"])
    except KernelError as exc:
        raise c.fail(f"{where}.op", str(exc)) from None
    if op.op != info["op"]:
        raise c.fail(f"{where}.info.op", f"{info['op']!r} is not the op's {op.op!r}")
    return CpuStep(e["name"], op, e["inputs"], e["outputs"], info)


# -- the whole plan --------------------------------------------------------------------------


def _same_size(c: _Checker, where: str, slot: Slot, spec: tuple) -> None:
    shape, dtype = spec
    if slot.dtype != dtype.name or math.prod(slot.shape) != math.prod(shape):
        raise c.fail(where, f"slot {slot.name!r} holds {slot.dtype}{list(slot.shape)}, not "
                            f"{dtype.name}{list(shape)}")


def _check_wiring(c: _Checker, plan: Plan) -> None:
    """Every step reads slots that exist and were produced earlier (or are graph inputs or
    params) and writes arena slots nothing produced before; CPU steps' slots hold what their
    kernels expect; accelerator steps touch only their own slots; outputs are produced."""
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
        if not step.outputs:
            raise c.fail(f"{where}.outputs", "a step must produce at least one slot")
        for j, s in enumerate(step.outputs):
            if s not in slots or slots[s].region != "arena":
                raise c.fail(f"{where}.outputs[{j}]", f"{str(s)[:80]!r} is not an arena slot")
            if s in produced:
                raise c.fail(f"{where}.outputs[{j}]", f"slot {s!r} is produced twice")
            produced.add(s)
        if isinstance(step, CpuStep):
            op = step.op
            if len(step.inputs) != len(op.in_specs) or len(step.outputs) != len(op.out_specs):
                raise c.fail(where, "inputs/outputs do not line up with the op's specs")
            for j, (s, spec) in enumerate(zip(step.inputs, op.in_specs, strict=True)):
                if (s == "") != (spec is None):
                    raise c.fail(f"{where}.inputs[{j}]", "must be absent exactly when the op's "
                                                         "input spec is")
                if spec is not None:
                    _same_size(c, f"{where}.inputs[{j}]", slots[s], spec)
            for j, (s, spec) in enumerate(zip(step.outputs, op.out_specs, strict=True)):
                _same_size(c, f"{where}.outputs[{j}]", slots[s], spec)
        else:
            if any(slots[s].layout != "blocked" for s in step.outputs):
                raise c.fail(f"{where}.outputs", "an accelerator step writes blocked slots")
            _check_code(c, where, plan.config, step, slots)
    for kind, names in (("inputs", plan.inputs), ("outputs", plan.outputs)):
        for g, s in names.items():
            c.name(g, f"{kind} name")
            if s not in slots or s not in produced or slots[s].region != "arena":
                raise c.fail(f"{kind}[{g!r}]", f"slot {str(s)[:80]!r} does not exist or is "
                                               f"never produced")
    if not plan.outputs:
        raise c.fail("outputs", "a model has at least one output")


def _json(c: _Checker, data: bytes, where: str) -> Any:
    def bad_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data, parse_constant=bad_constant)
    except (ValueError, RecursionError) as exc:
        raise c.fail(where, f"is not valid JSON: {exc}") from None


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
    meta = check_meta(c, head["meta"])
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
        s = _slot(c, cfg, d, f"slots[{k}]")
        if s.name in slots:
            raise c.fail(f"slots[{k}].name", f"{s.name!r} is used twice")
        top = arena if s.region == "arena" else params_size
        if s.offset + s.nbytes > top:
            raise c.fail(f"slots[{k}]", f"[{s.offset}, {s.offset + s.nbytes}) lies outside the "
                                        f"{s.region} region ({top} bytes)")
        slots[s.name] = s
    raw_steps = c.list_(g["steps"], "steps", MAX_STEPS)
    for k, e in enumerate(raw_steps):
        if not isinstance(e, dict) or e.get("kind") not in ("accel", "cpu"):
            raise c.fail(f"steps[{k}].kind", "must be 'accel' or 'cpu'")
    want = {"graph.json", "params"} | {f"{kind}/{k}" for k, e in enumerate(raw_steps)
                                       if e["kind"] == "accel" for kind in ("code", "uops")}
    if set(sections) != want:
        raise c.fail("sections", f"must be exactly those of the steps; missing "
                                 f"{sorted(want - set(sections))[:4]}, unknown "
                                 f"{sorted(set(sections) - want)[:4]}")
    params = _params(c, head["params_index"], sections["params"], slots)
    steps: list[AccelStep | CpuStep] = []
    for k, e in enumerate(raw_steps):
        c.name(e.get("name"), f"steps[{k}].name")
        for key in ("inputs", "outputs"):
            for j, s in enumerate(c.list_(e.get(key), f"steps[{k}].{key}", MAX_STEP_SLOTS)):
                if not isinstance(s, str) or (s and check_name(s)):
                    raise c.fail(f"steps[{k}].{key}[{j}]", "must be a slot name")
        steps.append(_accel_step(c, e, k, sections) if e["kind"] == "accel"
                     else _cpu_step(c, e, k))
    for key in ("inputs", "outputs"):
        m = g[key]
        if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
            raise c.fail(key, "must map graph tensor names to slot names")
    plan = Plan(cfg, slots, steps, dict(g["inputs"]), dict(g["outputs"]), arena, params,
                params_size)
    _check_overlaps(c, plan)
    _check_wiring(c, plan)
    specs_raw = c.obj(g["input_specs"], "input_specs", set(plan.inputs))
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, v in specs_raw.items():
        where = f"input_specs[{name!r}]"
        if not isinstance(v, list) or len(v) != 2 or v[1] not in SLOT_DTYPES:
            raise c.fail(where, "must be [[dims...], dtype]")
        shape = c.shape(v[0], where)
        slot = slots[plan.inputs[name]]
        if shape != slot.shape or v[1] != slot.dtype or slot.layout != "nchw":
            raise c.fail(where, f"{v[1]}{list(shape)} does not match its slot "
                                f"{slot.dtype}{list(slot.shape)} ({slot.layout})")
        specs[name] = (shape, v[1])
    return plan, specs, meta
