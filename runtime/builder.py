"""The command-stream builder (the role of VTA's runtime.cc): instructions, micro-ops, tokens.

A :class:`CommandBuilder` accumulates one instruction stream and the micro-op words it needs:

- ``load_2d`` / ``store_2d``: 2-D DMA with padding (SPEC §4), checked against the buffer depths;
- ``gemm`` / ``alu``: run a :class:`~tessera.runtime.uop_cache.MicroKernel`; a kernel missing
  from the micro-op SRAM is loaded first (LOAD UOP from a DRAM micro-op area), see
  :class:`~tessera.runtime.uop_cache.UopCache`;
- ``dep_push(src, dst)`` / ``dep_pop(src, dst)``: dependency tokens (SPEC §5). A push is folded
  into the last instruction ``src`` has emitted and a pop into the next instruction ``dst``
  emits; a sync-only no-op is emitted only when no such instruction can carry the flag (none
  yet, the flag already set, or a pending pop on ``src`` that must precede the push);
- ``barrier()``: order everything emitted so far before everything emitted later (layer
  boundaries: a later LOAD may read what an earlier STORE wrote);
- ``finish()`` returns the :class:`Program` (instructions ending in FINISH, micro-op words) and
  ``synchronize()`` also writes it to the device, runs it and returns the ``RunStats``.

Every instruction is encoded as it is appended, so a request the ISA cannot express raises
:class:`~tessera.errors.ProgramError` at the call that made it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np

from tessera.config import Config
from tessera.driver.base import Device, RunStats
from tessera.errors import IsaError, ProgramError
from tessera.isa import (
    INSN_BYTES,
    AluInsn,
    AluOp,
    FinishInsn,
    GemmInsn,
    Insn,
    MemInsn,
    MemType,
    Opcode,
    depth,
    elem_bytes,
    encode,
    extract,
    insert,
    layout,
    to_bytes,
)
from tessera.runtime.deps import Module, check_tokens_encoded, module_of, noop, queue
from tessera.runtime.uop_cache import MicroKernel, UopCache

__all__ = ["CommandBuilder", "Program", "Module", "BuilderStats", "insn_kind", "count_kinds",
           "data_moves", "relocate"]


@dataclass
class Program:
    """A finished stream: instructions (UOP loads address the micro-op area from element 0, at
    the pcs ``uop_load_pcs``) and the micro-op area's words. ``to_bytes(base)`` encodes the
    instructions for a micro-op area at device byte address ``base`` (:func:`relocate`)."""

    config: Config
    insns: list[Insn]
    uop_words: bytes
    uop_load_pcs: list[int] = field(default_factory=list)
    # the instructions :meth:`CommandBuilder.finish` encoded and their words (micro-op area at
    # 0), reused while ``insns`` still holds exactly those records
    _encoded: tuple[tuple[Insn, ...], bytes] | None = field(default=None, repr=False,
                                                           compare=False)

    def _code(self) -> bytes | None:
        enc = self._encoded
        if enc is not None and len(enc[0]) == len(self.insns) and enc[0] == tuple(self.insns):
            return enc[1]
        return None

    def to_bytes(self, uop_area_addr: int) -> bytes:
        code = self._code()
        if code is None:
            code = to_bytes(self.insns, self.config)
        return relocate(code, self.config, self.uop_load_pcs, uop_area_addr)

    def counts(self) -> Counter:
        """Instructions per kind: ``load``, ``store``, ``gemm``, ``reset``, ``alu``, ...
        (keys in order of first occurrence)."""
        code = self._code()
        if code is None:
            return Counter(map(insn_kind, self.insns))
        return _encoded_kinds(code, self.config)


def data_moves(lo: np.ndarray, hi: np.ndarray, cfg: Config,
               uop_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the instruction words ``lo, hi`` of an encoded stream: which instructions move data
    (a LOAD or STORE of ``x_size > 0`` that is not a micro-op load, ``uop_mask``), each
    instruction's element bytes, and its DRAM extent in elements from its ``dram_base``
    (``(y_size - 1) * x_stride + x_size``; meaningful where it moves data). The one decoding of
    data ranges (:func:`relocate`, :func:`tessera.runtime.accel.group.moved_group`)."""
    f = {fl.name: fl for fl in layout(cfg).mem}
    op = (lo & np.uint64(7)).astype(np.int64)
    mt = extract(lo, hi, f["memory_type"])
    x_size = extract(lo, hi, f["x_size"])
    data = ((op == Opcode.LOAD) | (op == Opcode.STORE)) & ~uop_mask & (x_size > 0)
    table = np.array([elem_bytes(cfg, t) for t in MemType], np.int64)
    eb = table[np.minimum(mt, len(table) - 1)]
    extent = (extract(lo, hi, f["y_size"]) - 1) * extract(lo, hi, f["x_stride"]) + x_size
    return data, eb, extent


def relocate(code: bytes, cfg: Config, uop_pcs: list[int], uop_addr: int,
             regions: dict[int, tuple[int, int]] | None = None,
             shifts: dict[MemType, int] | None = None) -> bytes:
    """Rewrite the DRAM addresses of an encoded stream (the one relocation mechanism).

    Micro-op loads (``uop_pcs``) address their micro-op area from element 0 and are moved to
    byte address ``uop_addr``. With ``regions`` (virtual base -> (size, real base)), every other
    LOAD/STORE that moves data must lie inside one region and moves with it; with ``shifts``
    (memory type -> element offset; a stream whose every memory type addresses one tensor,
    re-targeted at other tensors), every other LOAD/STORE that moves data moves by its memory
    type's offset (none for a type not named) and must still end inside the 32-bit address
    space; without either, data addresses are already real and stay. Raises
    :class:`ProgramError` for a pc that is not a micro-op load, an address outside every
    region, or a moved address the dram_base field cannot hold.
    """
    if len(code) % INSN_BYTES:
        raise ProgramError(f"an instruction stream must be a multiple of {INSN_BYTES} bytes, "
                           f"not {len(code)}")
    if uop_addr % cfg.uop_elem_bytes:
        raise ProgramError(f"the micro-op area must be {cfg.uop_elem_bytes}-byte aligned, not "
                           f"{uop_addr:#x}")
    words = np.frombuffer(code, dtype="<u8").reshape(-1, 2).copy()
    lo, hi = words[:, 0], words[:, 1]
    f = {fl.name: fl for fl in layout(cfg).mem}
    op = (lo & np.uint64(7)).astype(np.int64)
    mt = extract(lo, hi, f["memory_type"])
    base = extract(lo, hi, f["dram_base"])
    pcs = np.asarray(list(uop_pcs), np.int64)
    if pcs.size and (pcs.min() < 0 or pcs.max() >= len(base)):
        raise ProgramError(f"micro-op load pcs must lie inside the stream of {len(base)} "
                           f"instructions")
    uop_mask = np.zeros(len(base), bool)
    uop_mask[pcs] = True
    if (op[uop_mask] != Opcode.LOAD).any() or (mt[uop_mask] != MemType.UOP).any():
        raise ProgramError("a micro-op load pc does not point at a LOAD of micro-ops")
    data, eb, extent = data_moves(lo, hi, cfg, uop_mask)
    new = base.copy()
    new[uop_mask] += uop_addr // cfg.uop_elem_bytes
    if regions is not None:
        for pc in np.flatnonzero(data):
            e = int(eb[pc])
            byte = int(base[pc]) * e
            for vbase, (size, real) in regions.items():
                if vbase <= byte < vbase + size:
                    if (real - vbase) % e:
                        raise ProgramError(
                            f"instruction {pc}: region {vbase:#x} moved to {real:#x} is not "
                            f"aligned to its {e}-byte {MemType(int(mt[pc])).name} elements")
                    new[pc] = (byte - vbase + real) // e
                    break
            else:
                raise ProgramError(f"instruction {pc} addresses {byte:#x}, outside every region "
                                   f"of the plan")
    if shifts is not None:
        if regions is not None:
            raise ProgramError("relocate takes regions or shifts, not both")
        for t, d in shifts.items():
            new[data & (mt == int(t))] += int(d)
        end = (new + extent) * eb
        bad = data & ((new < 0) | (end > 1 << 32))
        if bad.any():
            pc = int(np.argmax(bad))
            raise ProgramError(f"instruction {pc}: the shifted DRAM range [{int(new[pc])}, ...) "
                               f"leaves the 32-bit address space")
    dram = f["dram_base"]
    if (new > dram.max).any():
        raise ProgramError("a relocated DRAM address does not fit the dram_base field")
    insert(words, dram, new)
    return words.tobytes()


def _encoded_kinds(code: bytes, cfg: Config) -> Counter:
    """:func:`insn_kind` counts of an encoded stream (as ``Counter(map(insn_kind, insns))``,
    keys in order of first occurrence), vectorised."""
    words = np.frombuffer(code, dtype="<u8")
    lo, hi = words[0::2], words[1::2]
    lay = layout(cfg)
    f = {fl.name: fl for fl in lay.mem}
    op = extract(lo, hi, f["opcode"])
    mt = extract(lo, hi, f["memory_type"])
    reset = extract(lo, hi, lay.field("gemm", "reset"))
    kind = np.full(len(op), -1, np.int64)  # index into _KINDS
    for k, (o, cond) in enumerate(_KIND_RULES):
        sel = (op == o) & (kind < 0)
        if cond is not None:
            sel &= cond(mt, reset)
        kind[sel] = k
    if (kind < 0).any():  # an opcode without a name: the record path raises
        raise ProgramError(f"unknown opcode {int(op[np.argmax(kind < 0)])} in an encoded stream")
    names = [_KIND_RULE_NAMES[k] for k in kind[np.sort(np.unique(kind, return_index=True)[1])]]
    out: Counter = Counter()
    totals = np.bincount(kind, minlength=len(_KIND_RULES))
    for name in names:
        out[name] = 0
    for k, name in enumerate(_KIND_RULE_NAMES):
        if totals[k]:
            out[name] += int(totals[k])
    return out


def count_kinds(insns: list[Insn]) -> dict[str, int]:
    """Instructions per kind (see :func:`insn_kind`)."""
    return dict(Counter(map(insn_kind, insns)))


def insn_kind(insn: Insn) -> str:
    """``load``, ``uop_load``, ``acc_load``, ``store``, ``gemm``, ``reset`` (a GEMM that zeroes
    accumulators), ``alu`` or ``finish``."""
    op = insn.opcode
    if op == _LOAD:
        return _LOAD_KINDS.get(insn.memory_type, "load")
    if op == _GEMM and insn.reset:
        return "reset"
    return _KIND_NAMES.get(op) or Opcode(op).name.lower()


_LOAD, _GEMM = int(Opcode.LOAD), int(Opcode.GEMM)


_LOAD_KINDS = {MemType.UOP: "uop_load", MemType.ACC: "acc_load", MemType.ACC_8BIT: "acc_load"}
_KIND_NAMES = {o: o.name.lower() for o in Opcode}
# insn_kind as (opcode, condition on (memory type, reset) columns) rules, first match wins
_KIND_RULES = (
    [(int(Opcode.LOAD), lambda mt, _, t=int(t): mt == t) for t in _LOAD_KINDS]
    + [(int(Opcode.LOAD), None), (int(Opcode.GEMM), lambda _, r: r != 0)]
    + [(int(o), None) for o in Opcode if o != Opcode.LOAD])
_KIND_RULE_NAMES = ([_LOAD_KINDS[t] for t in _LOAD_KINDS] + ["load", "reset"]
                    + [_KIND_NAMES[o] for o in Opcode if o != Opcode.LOAD])


@dataclass
class BuilderStats:
    pushes_folded: int = 0
    pops_folded: int = 0
    noops: int = 0
    pops_dropped: int = 0


class CommandBuilder:
    """Builds one instruction stream for ``config``; ``device`` is needed only to run it."""

    def __init__(self, config: Config, device: Device | None = None):
        if not isinstance(config, Config):
            raise ProgramError(f"config must be a tessera.Config, not {config!r}")
        if device is not None and device.config != config:
            raise ProgramError("the device was opened for a different config than the builder")
        self.cfg = config
        self.limits = layout(config).limits
        self._depth = {mt: depth(config, mt) for mt in MemType}
        self._elem_bytes = {mt: elem_bytes(config, mt) for mt in MemType}
        self.device = device
        self.uop_cache = UopCache(config.uop_depth)
        self.stats = BuilderStats()
        self.runs = 0
        self._fast_gemm: tuple[int, ...] | None = None
        self._fast_alu: tuple[int, ...] | None = None
        # kernel key -> (words, hash): shared by the builders of every config with this
        # micro-op format (the words depend on nothing else)
        self._words = _WORDS.setdefault(layout(config).uop, {})
        if len(self._words) > _WORDS_MAX:
            self._words.clear()
        self._reset_stream()

    # -- stream state -----------------------------------------------------------------------

    def _reset_stream(self) -> None:
        self.insns: list[Insn] = []
        self._last: dict[Module, int | None] = {m: None for m in Module}
        self._pending: dict[Module, list[str]] = {m: [] for m in Module}  # queue names
        self._outstanding: dict[str, int] = {"L2C": 0, "C2L": 0, "C2S": 0, "S2C": 0}
        self._barrier_pc = 0  # instructions before this index are ordered before later ones
        self._uop_area = bytearray()
        self._uop_area_index: dict[bytes, int] = {}
        self._uop_load_pcs: list[int] = []

    def __len__(self) -> int:
        return len(self.insns)

    def outstanding(self, src: Module, dst: Module) -> int:
        """Tokens pushed minus popped so far on the queue ``src -> dst`` (program order)."""
        return self._outstanding[queue(src, dst).name]

    def _append(self, insn: Insn, checked: bool = False, module: Module | None = None) -> int:
        """Append ``insn`` (taking the module's pending pops); ``checked``: its fields are known
        to encode (flags aside), so it is not encoded again here; ``module``: the module that
        runs it, when the caller knows."""
        m = module_of(insn) if module is None else module
        pending = self._pending[m]
        if pending:
            # every caller hands over a record it has just made: set the flags in place
            state = insn.__dict__
            for name in pending:
                state[_POP_FLAG[name]] = 1
            self.stats.pops_folded += len(pending)
            pending.clear()
        if not checked:
            try:
                encode(insn, self.cfg)
            except IsaError as exc:
                raise ProgramError(f"cannot encode instruction {len(self.insns)}: {exc}") \
                    from None
        insns = self.insns
        insns.append(insn)
        pc = self._last[m] = len(insns) - 1
        return pc

    def noop(self, module: Module) -> int:
        """Emit a sync-only instruction for ``module`` (it takes any pending pops)."""
        self.stats.noops += 1
        try:
            m = _MODULES.get(module)
        except TypeError:  # unhashable: Module() names it
            m = None
        if m is None:
            return self._append(noop(module))
        template = _NOOPS[m]  # a fresh copy of the module's no-op (all-zero fields: encodes)
        return self._append(_record(template.__dict__, template.__class__), checked=True,
                            module=m)

    # -- dependency tokens ------------------------------------------------------------------

    def dep_push(self, src: Module, dst: Module) -> None:
        """Signal ``dst`` once every instruction ``src`` has emitted so far has completed."""
        q = queue(src, dst)
        if self._outstanding[q.name] >= self.cfg.dep_queue_depth:
            raise ProgramError(
                f"push to {q.name} would leave {self._outstanding[q.name] + 1} tokens "
                f"outstanding, more than dep_queue_depth={self.cfg.dep_queue_depth}")
        self._outstanding[q.name] += 1
        last = self._last[q.src]
        if (last is not None and not self._pending[q.src]
                and not getattr(self.insns[last], q.push_flag)):
            self.insns[last] = _flagged(self.insns[last], q.push_flag)
            self.stats.pushes_folded += 1
            return
        pc = self.noop(q.src)
        self.insns[pc] = _flagged(self.insns[pc], q.push_flag)

    def dep_pop(self, src: Module, dst: Module) -> None:
        """Make the next instruction of ``dst`` wait for a token ``src`` pushed."""
        q = queue(src, dst)
        if self._outstanding[q.name] <= 0:
            raise ProgramError(f"pop from {q.name} with no token pushed before it")
        self._outstanding[q.name] -= 1
        if q.name in self._pending[q.dst]:
            self.noop(q.dst)  # carries the earlier pending pop(s)
        self._pending[q.dst].append(q.name)

    def barrier(self) -> None:
        """Order every instruction emitted so far before every instruction emitted later."""
        if self._barrier_pc >= len(self.insns):
            return  # nothing emitted since the last barrier
        active = {m: self._last[m] is not None and self._last[m] >= self._barrier_pc
                  for m in Module}
        if active[Module.LOAD]:
            self.dep_push(Module.LOAD, Module.COMPUTE)
            self.dep_pop(Module.LOAD, Module.COMPUTE)
        if active[Module.STORE]:
            self.dep_push(Module.STORE, Module.COMPUTE)
            self.dep_pop(Module.STORE, Module.COMPUTE)
        # A compute no-op takes those pops, then signals the other two modules.
        self.noop(Module.COMPUTE)
        self.dep_push(Module.COMPUTE, Module.LOAD)
        self.dep_push(Module.COMPUTE, Module.STORE)
        self.dep_pop(Module.COMPUTE, Module.LOAD)
        self.dep_pop(Module.COMPUTE, Module.STORE)
        self._barrier_pc = len(self.insns)

    # -- data movement ----------------------------------------------------------------------

    def load_2d(self, mem_type: MemType, sram: int, dram_elem_base: int, y: int, x: int,
                stride: int, pads: tuple[int, int, int, int] = (0, 0, 0, 0)) -> int:
        """LOAD ``y`` rows of ``x`` elements at ``dram_elem_base + row*stride`` into a dense
        SRAM region at ``sram``, with ``pads = (y_pad_0, y_pad_1, x_pad_0, x_pad_1)`` zero
        rows/columns around it. Returns the instruction index."""
        try:
            mt = _LOAD_TYPES.get(mem_type)
        except TypeError:  # unhashable: named below
            mt = None
        if mt is None:
            try:
                mt = MemType(mem_type)
            except ValueError:
                raise ProgramError(f"load_2d: unknown memory type {mem_type!r}") from None
            raise ProgramError(f"load_2d: memory type must be INP, WGT, ACC or ACC_8BIT, not "
                               f"{mt.name} (micro-ops are loaded by gemm()/alu())")
        if len(pads) != 4:
            raise ProgramError(f"load_2d: pads must be (y_pad_0, y_pad_1, x_pad_0, x_pad_1), "
                               f"not {pads!r}")
        self._check_mem("load_2d", mt, sram, dram_elem_base, y, x, stride)
        top = self.limits.max_pad
        yp0, yp1, xp0, xp1 = pads
        if not (yp0.__class__ is yp1.__class__ is xp0.__class__ is xp1.__class__ is int
                and 0 <= yp0 <= top and 0 <= yp1 <= top and 0 <= xp0 <= top
                and 0 <= xp1 <= top):
            for name, p in zip(("y_pad_0", "y_pad_1", "x_pad_0", "x_pad_1"), pads):
                if not isinstance(p, int) or not 0 <= p <= top:
                    raise ProgramError(f"load_2d: {name} must be in [0, {top}], not {p!r}")
        span = (yp0 + y + yp1) * (xp0 + x + xp1)
        if sram + span > self._depth[mt]:
            raise ProgramError(f"load_2d: {mt.name} region [{sram}, {sram + span}) exceeds the "
                               f"buffer depth {depth(self.cfg, mt)}")
        return self._append(_record(_MEM_FIELDS, MemInsn, opcode=Opcode.LOAD, memory_type=mt,
                                    sram_base=sram, dram_base=dram_elem_base, y_size=y,
                                    x_size=x, x_stride=stride, y_pad_0=yp0, y_pad_1=yp1,
                                    x_pad_0=xp0, x_pad_1=xp1), checked=True,
                            module=_LOAD_MODULE[mt])

    def store_2d(self, sram: int, dram_elem_base: int, y: int, x: int, stride: int) -> int:
        """STORE ``y`` rows of ``x`` out-buffer elements from ``sram`` (rows consecutive) to
        ``dram_elem_base + row*stride``. Returns the instruction index."""
        self._check_mem("store_2d", MemType.OUT, sram, dram_elem_base, y, x, stride)
        if sram + y * x > self.cfg.out_depth:
            raise ProgramError(f"store_2d: OUT region [{sram}, {sram + y * x}) exceeds the "
                               f"buffer depth {self.cfg.out_depth}")
        return self._append(_record(_MEM_FIELDS, MemInsn, opcode=Opcode.STORE,
                                    memory_type=MemType.OUT, sram_base=sram,
                                    dram_base=dram_elem_base, y_size=y, x_size=x,
                                    x_stride=stride), checked=True, module=Module.STORE)

    def _check_mem(self, what: str, mt: MemType, sram: int, dram: int, y: int, x: int,
                   stride: int) -> None:
        lim = self.limits
        if not (sram.__class__ is y.__class__ is x.__class__ is stride.__class__
                is dram.__class__ is int and 0 <= sram <= lim.max_sram_base
                and 0 <= y <= lim.max_y_size and 0 <= x <= lim.max_x_size
                and 0 <= stride <= lim.max_x_stride and 0 <= dram <= lim.max_dram_base):
            for name, v, hi in (("sram", sram, lim.max_sram_base), ("y", y, lim.max_y_size),
                                ("x", x, lim.max_x_size), ("stride", stride, lim.max_x_stride),
                                ("dram_elem_base", dram, lim.max_dram_base)):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                    raise ProgramError(f"{what}: {name} must be an integer in [0, {hi}], not "
                                       f"{v!r}")
        if y == 0 or x == 0:
            raise ProgramError(f"{what}: y and x must be positive (use noop() to synchronise), "
                               f"not y={y} x={x}")
        end = (dram + (y - 1) * stride + x) * self._elem_bytes[mt]
        if end > 1 << 32:
            raise ProgramError(f"{what}: {mt.name} DRAM range ends at byte {end:#x}, beyond the "
                               f"32-bit address space")

    # -- compute ----------------------------------------------------------------------------

    def _uop_range(self, kernel: MicroKernel) -> tuple[int, int]:
        """Micro-op buffer range of ``kernel``'s part, loading the kernel if not resident."""
        cached = self._words.get(kernel.key)
        if cached is None:
            words = kernel.words(self.cfg)
            cached = self._words[kernel.key] = (words, MicroKernel.content_key(words))
        words, key = cached
        n = kernel.size
        base, hit = self.uop_cache.lookup(key, n)
        if not hit:
            offset = self._uop_area_index.get(key)
            if offset is None:
                offset = len(self._uop_area) // self.cfg.uop_elem_bytes
                self._uop_area += words
                self._uop_area_index[key] = offset
            pc = self._append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP,
                                      sram_base=base, dram_base=offset, y_size=1, x_size=n,
                                      x_stride=n))
            self._uop_load_pcs.append(pc)
        return base + kernel.lo, base + kernel.hi

    def preload(self, kernels: list[MicroKernel]) -> int:
        """Make ``kernels`` resident now, with as few micro-op LOADs as possible (runs of
        kernels adjacent in both the DRAM micro-op area and the buffer share one), so that the
        stream's later GEMM/ALU instructions find them. Does nothing unless all of them fit in
        half the micro-op buffer. Returns the number of LOAD instructions emitted."""
        todo: dict[bytes, tuple[bytes, int]] = {}
        for k in kernels:
            cached = self._words.get(k.key)
            if cached is None:
                words = k.words(self.cfg)
                cached = self._words[k.key] = (words, MicroKernel.content_key(words))
            words, key = cached
            if key not in self.uop_cache and key not in todo:
                todo[key] = (words, k.size)
        if not todo or sum(n for _, n in todo.values()) > self.cfg.uop_depth // 2:
            return 0
        runs: list[list[int]] = []  # [sram base, dram offset, size]
        for key, (words, n) in todo.items():
            base, hit = self.uop_cache.lookup(key, n)
            assert not hit
            offset = self._uop_area_index.get(key)
            if offset is None:
                offset = len(self._uop_area) // self.cfg.uop_elem_bytes
                self._uop_area += words
                self._uop_area_index[key] = offset
            last = runs[-1] if runs else None
            if last and last[0] + last[2] == base and last[1] + last[2] == offset:
                last[2] += n
            else:
                runs.append([base, offset, n])
        for base, offset, n in runs:
            pc = self._append(MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP,
                                      sram_base=base, dram_base=offset, y_size=1, x_size=n,
                                      x_stride=n))
            self._uop_load_pcs.append(pc)
        return len(runs)

    def gemm(self, kernel: MicroKernel, reset: bool = False) -> int:
        """Run ``kernel`` (its part ``[lo, hi)``) as one GEMM (``reset`` zeroes the accumulators
        instead)."""
        if not isinstance(kernel, MicroKernel):
            raise ProgramError(f"gemm needs a MicroKernel, not {type(kernel).__name__}")
        done = kernel.checked
        if done is None or done[0] is not self.cfg or not done[1]:
            self._check_kernel(kernel, gemm=True)
        k = kernel
        r = int(reset)
        fast = self._fast_gemm
        if fast is None:
            fast = self._fast_gemm = self._fast_limits("gemm")
        n, (m_end, m_it, m_do, m_di, m_so, m_si, m_wo, m_wi) = k.hi - k.lo, fast
        io, ii = k.iter_out, k.iter_in
        # the factors of a one-iteration level are encoded as 0 (see _run_kernel)
        do, so, wo = (k.dst_factor_out, k.src_factor_out, k.wgt_factor_out) if io != 1 \
            else (0, 0, 0)
        di, si, wi = (k.dst_factor_in, k.src_factor_in, k.wgt_factor_in) if ii != 1 \
            else (0, 0, 0)
        if (0 <= r <= 1 and n <= m_end and io <= m_it and ii <= m_it and do <= m_do
                and di <= m_di and so <= m_so and si <= m_si and wo <= m_wo and wi <= m_wi):
            # every field encodes (the kernel's values are non-negative ints): no encode()
            bgn, end = self._uop_range(k)
            return self._append(_record(
                _GEMM_FIELDS, GemmInsn, reset=r, uop_bgn=bgn, uop_end=end, iter_out=io,
                iter_in=ii, dst_factor_out=do, dst_factor_in=di, src_factor_out=so,
                src_factor_in=si, wgt_factor_out=wo, wgt_factor_in=wi), checked=True,
                module=Module.COMPUTE)
        insn = GemmInsn(
            reset=r, uop_bgn=0, uop_end=k.hi - k.lo, iter_out=k.iter_out,
            iter_in=k.iter_in, dst_factor_out=k.dst_factor_out, dst_factor_in=k.dst_factor_in,
            src_factor_out=k.src_factor_out, src_factor_in=k.src_factor_in,
            wgt_factor_out=k.wgt_factor_out, wgt_factor_in=k.wgt_factor_in)
        return self._run_kernel(insn, k)

    def alu(self, kernel: MicroKernel, op: AluOp, imm: int | None = None,
            deferred: bool = False) -> int:
        """Run ``kernel`` as one ALU instruction: ``acc[dst] = op(acc[dst], imm or acc[src])``.

        ``deferred`` [ext] lets the compute module run it concurrently with the GEMMs that
        follow, up to the next fence (spec-notes 16): the caller guarantees that those GEMMs
        touch no accumulator row it reads or writes, and none in its destination rows' half."""
        if not isinstance(kernel, MicroKernel):
            raise ProgramError(f"alu needs a MicroKernel, not {type(kernel).__name__}")
        try:
            known = _ALU_OPS.get(op)
            op = known if known is not None else AluOp(op)
        except (ValueError, TypeError):
            raise ProgramError(f"alu: unknown ALU opcode {op!r}") from None
        if imm is not None and not self.limits.imm_min <= imm <= self.limits.imm_max:
            raise ProgramError(f"alu {op.name}: imm must fit 16-bit signed, not {imm}")
        if kernel.wgt_factor_out or kernel.wgt_factor_in:
            raise ProgramError("alu: an ALU kernel has no weight factors")
        done = kernel.checked
        if done is None or done[0] is not self.cfg or done[1]:
            self._check_kernel(kernel, gemm=False)
        k = kernel
        fast = self._fast_alu
        if fast is None:
            fast = self._fast_alu = self._fast_limits("alu")
        n, (m_end, m_it, m_do, m_di, m_so, m_si) = k.hi - k.lo, fast
        io, ii = k.iter_out, k.iter_in
        do, so = (k.dst_factor_out, k.src_factor_out) if io != 1 else (0, 0)
        di, si = (k.dst_factor_in, k.src_factor_in) if ii != 1 else (0, 0)
        if (n <= m_end and io <= m_it and ii <= m_it and do <= m_do and di <= m_di
                and so <= m_so and si <= m_si and (imm is None or imm.__class__ is int)):
            # every field encodes (imm was range-checked above, op is an AluOp): no encode()
            bgn, end = self._uop_range(k)
            return self._append(_record(
                _ALU_FIELDS, AluInsn, uop_bgn=bgn, uop_end=end, iter_out=io, iter_in=ii,
                dst_factor_out=do, dst_factor_in=di, src_factor_out=so, src_factor_in=si,
                alu_opcode=op, use_imm=int(imm is not None), imm=int(imm or 0),
                deferred=int(bool(deferred))), checked=True, module=Module.COMPUTE)
        insn = AluInsn(
            uop_bgn=0, uop_end=k.hi - k.lo, iter_out=k.iter_out, iter_in=k.iter_in,
            dst_factor_out=k.dst_factor_out, dst_factor_in=k.dst_factor_in,
            src_factor_out=k.src_factor_out, src_factor_in=k.src_factor_in,
            alu_opcode=op, use_imm=int(imm is not None), imm=int(imm or 0),
            deferred=int(bool(deferred)))
        return self._run_kernel(insn, k)

    def fence(self) -> int:
        """A compute instruction before which every deferred ALU instruction has completed (an
        empty, non-deferred ALU instruction; spec-notes 16)."""
        # an all-zero ALU record (it encodes): made without the dataclass __init__ or encode()
        return self._append(_record(_ALU_FIELDS, AluInsn), checked=True, module=Module.COMPUTE)

    def _run_kernel(self, insn: GemmInsn | AluInsn, kernel: MicroKernel) -> int:
        """Check that ``insn`` encodes, load its kernel if not resident, then append it.

        The factors of a loop level with one iteration never take effect, so they are
        encoded as 0: a factor that is only ever multiplied by 0 may exceed its field (e.g. a
        stride as large as the whole buffer) on a small config."""
        unused = [f"{o}_factor_{lvl}" for lvl in ("out", "in")
                  if getattr(insn, f"iter_{lvl}") == 1 for o in ("dst", "src", "wgt")
                  if hasattr(insn, f"{o}_factor_{lvl}")]
        if unused:
            insn = _with(insn, **dict.fromkeys(unused, 0))
        try:
            encode(insn, self.cfg)
        except IsaError as exc:
            raise ProgramError(f"cannot encode {Opcode(insn.opcode).name}: {exc}") from None
        bgn, end = self._uop_range(kernel)  # micro-op fields must encode too
        return self._append(_with(insn, uop_bgn=bgn, uop_end=end), checked=True)

    def _fast_limits(self, fmt: str) -> tuple[int, ...]:
        """Largest values of the loop fields of ``fmt`` (``gemm``: uop_end, iter, then the six
        factors; ``alu``: uop_end, iter, the four factors), for the hot paths' range checks."""
        lay = layout(self.cfg)
        names = ["dst_factor_out", "dst_factor_in", "src_factor_out", "src_factor_in"]
        if fmt == "gemm":
            names += ["wgt_factor_out", "wgt_factor_in"]
        top = lay.field(fmt, "iter_out").max
        assert top == lay.field(fmt, "iter_in").max
        return (lay.field(fmt, "uop_end").max, top, *(lay.field(fmt, n).max for n in names))

    def _check_kernel(self, k: MicroKernel, gemm: bool) -> None:
        """Every index the loop nest generates must lie inside its buffer (a kernel that passed
        for this config is not checked again: kernels are immutable and shared)."""
        cfg = self.cfg
        done = k.checked
        if done is not None and done[0] is cfg and done[1] == gemm:
            return
        io, ii = k.iter_out - 1, k.iter_in - 1
        top, lowest = k.bounds()
        if lowest < 0:
            raise ProgramError("micro-kernel indices must be non-negative")
        bounds = [("accumulator", 0, k.dst_factor_out, k.dst_factor_in, cfg.acc_depth)]
        if gemm:
            bounds += [("input", 1, k.src_factor_out, k.src_factor_in, cfg.inp_depth),
                       ("weight", 2, k.wgt_factor_out, k.wgt_factor_in, cfg.wgt_depth)]
        else:
            bounds += [("accumulator source", 1, k.src_factor_out, k.src_factor_in,
                        cfg.acc_depth)]
        for what, col, fo, fi, dep in bounds:
            if fo < 0 or fi < 0:
                raise ProgramError(f"micro-kernel {what} factors must be non-negative")
            t = int(top[col]) + io * fo + ii * fi
            if t >= dep:
                raise ProgramError(f"micro-kernel reaches {what} index {t}, outside the "
                                   f"buffer (depth {dep})")
        k.checked = (cfg, gemm)

    # -- finishing and running --------------------------------------------------------------

    def finish(self) -> Program:
        """Close the stream with FINISH and return it; the builder starts a new stream."""
        for m in Module:
            self.stats.pops_dropped += len(self._pending[m])  # nothing left to order
            self._pending[m].clear()
        self._append(FinishInsn())
        try:
            code = to_bytes(self.insns, self.cfg)
        except IsaError as exc:
            raise ProgramError(f"cannot encode the stream: {exc}") from None
        check_tokens_encoded(code, self.insns, self.cfg)
        prog = Program(self.cfg, self.insns, bytes(self._uop_area), self._uop_load_pcs,
                       (tuple(self.insns), code))
        self._reset_stream()
        self.uop_cache.invalidate()
        return prog

    def synchronize(self, timeout_cycles: int | None = None) -> RunStats:
        """Finish the stream, run it on the device and wait; return the run's statistics."""
        if self.device is None:
            raise ProgramError("synchronize needs a device; pass one to CommandBuilder")
        prog = self.finish()
        dev = self.device
        self.last_program = prog
        uop_buf = dev.alloc(max(len(prog.uop_words), 4)) if prog.uop_words else None
        insn_bytes = prog.to_bytes(uop_buf.addr if uop_buf else 0)
        insn_buf = dev.alloc(len(insn_bytes))
        try:
            if uop_buf is not None:
                dev.write(uop_buf.addr, prog.uop_words)
            dev.write(insn_buf.addr, insn_bytes)
            stats = dev.run(insn_buf.addr, len(insn_bytes) // INSN_BYTES, timeout_cycles)
        finally:
            dev.free(insn_buf)
            if uop_buf is not None:
                dev.free(uop_buf)
        self.runs += 1
        return stats


def _with(insn: Insn, **changes: int) -> Insn:
    """A copy of the frozen record ``insn`` with ``changes`` (field names of its own type; a
    fast ``dataclasses.replace`` for the builder's hot path)."""
    old = insn.__dict__
    for k in changes:
        if k not in old:
            raise ProgramError(f"{type(insn).__name__} has no field {k!r}")
    new = object.__new__(insn.__class__)
    state = new.__dict__
    state.update(old)
    state.update(changes)
    return new


_POP_FLAG = {"L2C": "pop_prev", "C2L": "pop_next", "C2S": "pop_prev", "S2C": "pop_next"}


def queue_flag(name: str) -> str:
    """The pop flag the consumer of queue ``name`` sets."""
    return _POP_FLAG[name]


def _flagged(insn: Insn, flag: str) -> Insn:
    """A copy of ``insn`` with the header flag ``flag`` set (``_with(insn, flag=1)``)."""
    new = object.__new__(insn.__class__)
    state = new.__dict__
    state.update(insn.__dict__)
    state[flag] = 1
    return new


_WORDS: dict[tuple, dict[bytes, tuple[bytes, bytes]]] = {}
_WORDS_MAX = 1 << 16  # kernels whose encoded micro-ops are kept per process

_ALU_OPS = {int(o): o for o in AluOp}
_MODULES = {int(m): m for m in Module}
_NOOPS = {m: noop(m) for m in Module}


def _defaults(cls: type) -> dict[str, int]:
    return {f.name: f.default for f in fields(cls)}


_MEM_FIELDS, _GEMM_FIELDS, _ALU_FIELDS = (_defaults(c) for c in (MemInsn, GemmInsn, AluInsn))
_LOAD_TYPES = {int(m): m for m in (MemType.INP, MemType.WGT, MemType.ACC, MemType.ACC_8BIT)}
_LOAD_MODULE = {MemType.INP: Module.LOAD, MemType.WGT: Module.LOAD, MemType.ACC: Module.COMPUTE,
                MemType.ACC_8BIT: Module.COMPUTE}


def _record(defaults: dict[str, int], cls: type, **values: int) -> Insn:
    """``cls(**values)`` for a frozen instruction record, without the dataclass ``__init__``
    (``defaults``: every field's default, in field order; the builder's hot path)."""
    new = object.__new__(cls)
    state = new.__dict__
    state.update(defaults)
    state.update(values)
    return new
