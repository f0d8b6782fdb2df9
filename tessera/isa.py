"""The instruction set (SPEC §3): the single source of truth for opcodes and field layout.

Field positions are derived from a :class:`~tessera.config.Config`; for the ``default`` preset
they are exactly VTA's. The hardware decoders, the functional simulator, the runtime and the
disassembler all read the tables built here.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, fields
from enum import IntEnum
from functools import cache, cached_property

import numpy as np

from tessera.config import ALU_IMM_BITS, ALU_OPCODE_BITS, ITER_BITS, Config
from tessera.errors import IsaError

__all__ = [
    "Opcode", "MemType", "AluOp", "Field", "Layout", "layout", "MemInsn", "GemmInsn", "AluInsn",
    "FinishInsn", "Insn", "Uop", "encode", "decode", "encode_uop", "decode_uop", "to_bytes",
    "from_bytes", "uops_to_bytes", "uop_array_to_bytes", "disassemble", "disassemble_one",
    "INSN_BYTES", "elem_bytes", "depth", "Limits",
    "IMM_MIN", "IMM_MAX", "MAX_ITER",
]

INSN_BYTES = 16
# Config-independent field limits (the widths are fixed in SPEC §3); per-config limits, e.g. the
# padding and stride fields, are in ``layout(cfg).limits``.
IMM_MIN, IMM_MAX = -(1 << (ALU_IMM_BITS - 1)), (1 << (ALU_IMM_BITS - 1)) - 1
MAX_ITER = (1 << ITER_BITS) - 1


class Opcode(IntEnum):
    LOAD = 0
    STORE = 1
    GEMM = 2
    FINISH = 3
    ALU = 4


class MemType(IntEnum):
    UOP = 0
    WGT = 1
    INP = 2
    ACC = 3
    OUT = 4
    ACC_8BIT = 5


class AluOp(IntEnum):
    MIN = 0
    MAX = 1
    ADD = 2
    SHR = 3
    MUL = 4


def elem_bytes(cfg: Config, mem_type: int) -> int:
    """Bytes of one element of ``mem_type`` in DRAM (SPEC §2)."""
    try:
        return _mem_tables(cfg)[0][mem_type]
    except (KeyError, TypeError):
        MemType(mem_type)  # raises ValueError for an unknown memory type
        raise


def depth(cfg: Config, mem_type: int) -> int:
    """Depth in elements of the on-chip buffer that ``mem_type`` addresses."""
    try:
        return _mem_tables(cfg)[1][mem_type]
    except (KeyError, TypeError):
        MemType(mem_type)  # raises ValueError for an unknown memory type
        raise


_last_tables: tuple[object, object] = (None, None)  # (Config, tables) of the latest lookup


def _mem_tables(cfg: Config) -> tuple[dict[int, int], dict[int, int]]:
    """Element bytes and buffer depth per memory type of ``cfg`` (the builder's hot path asks
    for them per instruction; the last config's tables are found by identity)."""
    last = _last_tables
    if last[0] is cfg:
        return last[1]
    tables = ({MemType.UOP: cfg.uop_elem_bytes, MemType.WGT: cfg.wgt_elem_bytes,
               MemType.INP: cfg.inp_elem_bytes, MemType.ACC: cfg.acc_elem_bytes,
               MemType.OUT: cfg.out_elem_bytes, MemType.ACC_8BIT: cfg.acc8_elem_bytes},
              {MemType.UOP: cfg.uop_depth, MemType.WGT: cfg.wgt_depth,
               MemType.INP: cfg.inp_depth, MemType.ACC: cfg.acc_depth,
               MemType.OUT: cfg.out_depth, MemType.ACC_8BIT: cfg.acc_depth})
    globals()["_last_tables"] = (cfg, tables)
    return tables


@dataclass(frozen=True)
class Field:
    """One instruction field: absolute bit position ``lo`` in the 128-bit word, ``width`` bits."""

    name: str
    lo: int
    width: int
    signed: bool = False

    @property
    def hi(self) -> int:
        return self.lo + self.width - 1

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    @property
    def min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else self.mask


def _pack(spec: list[tuple[str, int]], start: int, limit: int) -> list[Field]:
    out, pos = [], start
    for name, width in spec:
        out.append(Field(name, pos, width, signed=(name == "imm")))
        pos += width
    assert pos <= limit, (spec, pos, limit)  # Config already rejected layouts that do not fit
    return out


_last_layout: tuple[object, object] = (None, None)  # (Config, Layout) of the latest layout()

HEADER = [("opcode", 3), ("pop_prev", 1), ("pop_next", 1), ("push_prev", 1), ("push_next", 1)]


@dataclass(frozen=True)
class Limits:
    """Largest values the instruction fields of one Config can hold (read off the tables)."""

    max_pad: int  # each of y_pad_0, y_pad_1, x_pad_0, x_pad_1
    max_sram_base: int
    max_dram_base: int  # in elements of the instruction's memory type
    max_y_size: int
    max_x_size: int
    max_x_stride: int
    max_iter: int  # iter_out and iter_in
    max_uop_end: int
    imm_min: int
    imm_max: int


@dataclass(frozen=True)
class Layout:
    """Field tables of every instruction format and of the micro-op, for one Config."""

    mem: tuple[Field, ...]
    gemm: tuple[Field, ...]
    alu: tuple[Field, ...]
    finish: tuple[Field, ...]
    uop: tuple[Field, ...]

    @cached_property
    def limits(self) -> Limits:
        def top(fmt: str, name: str) -> int:
            return self.field(fmt, name).max

        pads = {top("mem", n) for n in ("y_pad_0", "y_pad_1", "x_pad_0", "x_pad_1")}
        assert len(pads) == 1  # SPEC §3.1: four 4-bit fields
        iters = {top("gemm", "iter_out"), top("gemm", "iter_in"), top("alu", "iter_out")}
        assert len(iters) == 1
        imm = self.field("alu", "imm")
        return Limits(max_pad=pads.pop(), max_sram_base=top("mem", "sram_base"),
                      max_dram_base=top("mem", "dram_base"), max_y_size=top("mem", "y_size"),
                      max_x_size=top("mem", "x_size"), max_x_stride=top("mem", "x_stride"),
                      max_iter=iters.pop(), max_uop_end=top("gemm", "uop_end"),
                      imm_min=imm.min, imm_max=imm.max)

    @cached_property
    def by_opcode(self) -> dict[int, tuple[tuple[Field, ...], tuple]]:
        """Opcode value -> (its field table, the table's encoder specs): built once, so
        :func:`encode` on the compiler's hot path is two dictionary lookups."""
        tables = {Opcode.LOAD: self.mem, Opcode.STORE: self.mem, Opcode.GEMM: self.gemm,
                  Opcode.ALU: self.alu, Opcode.FINISH: self.finish}
        return {int(op): (t, _specs(t)) for op, t in tables.items()}

    def format(self, opcode: int) -> tuple[Field, ...]:
        try:
            entry = self.by_opcode.get(opcode)
        except TypeError:  # unhashable
            entry = None
        if entry is None:
            Opcode(opcode)  # raises ValueError for an unknown opcode
            raise AssertionError(f"opcode {opcode!r} has no format")
        return entry[0]

    def field(self, fmt: str, name: str) -> Field:
        for f in getattr(self, fmt):
            if f.name == name:
                return f
        raise KeyError(f"{fmt} has no field {name!r}")


def layout(cfg: Config) -> Layout:
    """The field tables for ``cfg`` (SPEC §3), built once per config (the last one asked for
    is found by identity, without hashing the config)."""
    last = _last_layout
    if last[0] is cfg:
        return last[1]
    lay = _layout(cfg)
    globals()["_last_layout"] = (cfg, lay)
    return lay


@cache
def _layout(cfg: Config) -> Layout:
    du, di, dw, da = cfg.log_uop_depth, cfg.log_inp_depth, cfg.log_wgt_depth, cfg.log_acc_depth
    mem = _pack(HEADER + [("memory_type", 3), ("sram_base", 16), ("dram_base", 32)], 0, 64)
    mem += _pack([("y_size", 16), ("x_size", 16), ("x_stride", 16), ("y_pad_0", 4),
                  ("y_pad_1", 4), ("x_pad_0", 4), ("x_pad_1", 4)], 64, 128)
    loops = [("uop_bgn", du), ("uop_end", du + 1), ("iter_out", ITER_BITS),
             ("iter_in", ITER_BITS)]
    # bit 7: GEMM reset; ALU [ext] deferred (spec-notes 16; VTA's ALU ignored this bit)
    gemm = _pack(HEADER + [("reset", 1)] + loops, 0, 64) + _pack(
        [("dst_factor_out", da), ("dst_factor_in", da), ("src_factor_out", di),
         ("src_factor_in", di), ("wgt_factor_out", dw), ("wgt_factor_in", dw)], 64, 128)
    alu = _pack(HEADER + [("deferred", 1)] + loops, 0, 64) + _pack(
        [("dst_factor_out", da), ("dst_factor_in", da), ("src_factor_out", da),
         ("src_factor_in", da), ("alu_opcode", ALU_OPCODE_BITS), ("use_imm", 1),
         ("imm", ALU_IMM_BITS)], 64, 128)
    finish = _pack(HEADER, 0, 64)
    uop = _pack([("dst_idx", da), ("src_idx", max(di, da)), ("wgt_idx", dw)], 0, 32)
    return Layout(tuple(mem), tuple(gemm), tuple(alu), tuple(finish), tuple(uop))


# -- typed instruction records ----------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    pop_prev: int = 0
    pop_next: int = 0
    push_prev: int = 0
    push_next: int = 0


@dataclass(frozen=True)
class MemInsn(_Header):
    """LOAD (``opcode=Opcode.LOAD``) or STORE (``Opcode.STORE``) of a 2-D region (SPEC §3.1)."""

    opcode: int = Opcode.LOAD
    memory_type: int = MemType.INP
    sram_base: int = 0
    dram_base: int = 0
    y_size: int = 1
    x_size: int = 0
    x_stride: int = 0
    y_pad_0: int = 0
    y_pad_1: int = 0
    x_pad_0: int = 0
    x_pad_1: int = 0


@dataclass(frozen=True)
class GemmInsn(_Header):
    """GEMM over ``iter_out x iter_in x [uop_bgn, uop_end)`` (SPEC §3.2, §4)."""

    opcode: int = Opcode.GEMM
    reset: int = 0
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0


@dataclass(frozen=True)
class AluInsn(_Header):
    """ALU over the accumulator (SPEC §3.3, §4). ``deferred`` [ext]: the compute module may run
    it concurrently with its following GEMMs (spec-notes 16)."""

    opcode: int = Opcode.ALU
    deferred: int = 0
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    alu_opcode: int = AluOp.ADD
    use_imm: int = 0
    imm: int = 0


@dataclass(frozen=True)
class FinishInsn(_Header):
    """FINISH: completion once every earlier instruction has retired (SPEC §3.5)."""

    opcode: int = Opcode.FINISH


Insn = MemInsn | GemmInsn | AluInsn | FinishInsn


@dataclass(frozen=True)
class Uop:
    """One micro-op: accumulator, input (or accumulator, for ALU) and weight indices."""

    dst_idx: int = 0
    src_idx: int = 0
    wgt_idx: int = 0


_RECORD = {
    Opcode.LOAD: MemInsn, Opcode.STORE: MemInsn, Opcode.GEMM: GemmInsn, Opcode.ALU: AluInsn,
    Opcode.FINISH: FinishInsn,
}


@cache
def _specs(table: tuple[Field, ...]) -> tuple[tuple[str, int, int, int, int, int], ...]:
    """(name, lo, mask, min, max, width) per field: what the encoders loop over."""
    return tuple((f.name, f.lo, f.mask, f.min, f.max, f.width) for f in table)


def _encode_fields(table: tuple[Field, ...], values: dict[str, int], what: str) -> int:
    return _encode_specs(_specs(table), values, what)


def _encode_specs(specs: tuple, values: dict[str, int], what: str) -> int:
    word = 0
    for name, lo, mask, vmin, vmax, width in specs:
        v = values[name]
        if v.__class__ is not int:
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise IsaError(f"{what}: field {name} must be an integer, not {v!r}")
            v = int(v)
        if not vmin <= v <= vmax:
            raise IsaError(
                f"{what}: field {name} must be in [{vmin}, {vmax}] ({width} bits), not {v}")
        word |= (v & mask) << lo
    return word


_OPCODES = {int(o): o for o in Opcode}


def encode(insn: Insn, cfg: Config) -> int:
    """The 128-bit word of ``insn``; out-of-range fields raise :class:`IsaError`."""
    try:
        op = _OPCODES.get(insn.opcode)
    except TypeError:  # unhashable
        op = None
    if op is None:
        try:
            op = Opcode(insn.opcode)
        except ValueError:
            raise IsaError(f"opcode must be one of {[o.name for o in Opcode]}, not "
                           f"{insn.opcode!r}") from None
    if not isinstance(insn, _RECORD[op]):
        raise IsaError(f"opcode {op.name} needs a {_RECORD[op].__name__}, not "
                       f"{type(insn).__name__}")
    if isinstance(insn, MemInsn) and insn.memory_type not in MemType._value2member_map_:
        raise IsaError(f"{op.name}: memory_type must be one of {[m.name for m in MemType]}, not "
                       f"{insn.memory_type!r}")
    if isinstance(insn, AluInsn) and insn.alu_opcode not in AluOp._value2member_map_:
        raise IsaError(f"ALU: alu_opcode must be one of {[a.name for a in AluOp]}, not "
                       f"{insn.alu_opcode!r}")
    return _encode_specs(layout(cfg).by_opcode[op][1], insn.__dict__, op.name)


def _field_value(word: int, f: Field) -> int:
    v = (word >> f.lo) & f.mask
    if f.signed and v >> (f.width - 1):
        v -= 1 << f.width
    return v


def decode(word: int, cfg: Config) -> Insn:
    """The typed record of a 128-bit word; an unknown opcode raises :class:`IsaError`.

    Memory-type and ALU-opcode values are kept as plain integers, so an illegal value decodes
    (the simulator and disassembler report it) and re-encoding refuses it.
    """
    if not 0 <= word < 1 << 128:
        raise IsaError(f"an instruction must be a 128-bit unsigned word, not {word!r}")
    raw_op = word & 0x7
    try:
        op = Opcode(raw_op)
    except ValueError:
        raise IsaError(f"unknown opcode {raw_op} in instruction word {word:#034x}") from None
    lay = layout(cfg)
    values = {f.name: _field_value(word, f) for f in lay.format(op)}
    values["opcode"] = op
    if op in (Opcode.LOAD, Opcode.STORE) and values["memory_type"] in MemType._value2member_map_:
        values["memory_type"] = MemType(values["memory_type"])
    if op == Opcode.ALU and values["alu_opcode"] in AluOp._value2member_map_:
        values["alu_opcode"] = AluOp(values["alu_opcode"])
    return _RECORD[op](**values)


def encode_uop(uop: Uop, cfg: Config) -> int:
    """The 32-bit word of a micro-op; out-of-range indices raise :class:`IsaError`."""
    values = {f.name: getattr(uop, f.name) for f in fields(uop)}
    return _encode_fields(layout(cfg).uop, values, "micro-op")


def decode_uop(word: int, cfg: Config) -> Uop:
    if not 0 <= word < 1 << 32:
        raise IsaError(f"a micro-op must be a 32-bit unsigned word, not {word!r}")
    return Uop(**{f.name: _field_value(word, f) for f in layout(cfg).uop})


def to_bytes(insns: list[Insn], cfg: Config) -> bytes:
    """Little-endian 16-byte words of a list of instructions (SPEC §2); vectorised per
    instruction format, with exactly :func:`encode`'s checks and errors (a group with any value
    the fast path does not take, e.g. a bool or an out-of-range field, is encoded one by one,
    which raises the precise error)."""
    n = len(insns)
    lo = np.zeros(n, np.uint64)
    hi = np.zeros(n, np.uint64)
    lay = layout(cfg)
    for op, idx, recs in _by_opcode(insns):
        try:
            table = lay.format(Opcode(op))
        except ValueError:
            encode(recs[0], cfg)  # raises the precise IsaError
            raise AssertionError("unreachable") from None
        specs = _specs(table)
        names = tuple(sp[0] for sp in specs)
        cols = _columns(recs, _RECORD[Opcode(op)], names)
        if cols is None:
            for r in recs:
                encode(r, cfg)  # raises the precise IsaError
            # they all encode (e.g. a subclass of the record type): take them one by one
            cols = np.array([[int(r.__dict__[k]) for k in names] for r in recs], np.int64)
        glo = np.zeros(len(recs), np.uint64)
        ghi = np.zeros(len(recs), np.uint64)
        for k, (_, flo, mask, vmin, vmax, _) in enumerate(specs):
            v = cols[:, k]
            if ((v < vmin) | (v > vmax)).any():
                for r in recs:
                    encode(r, cfg)  # raises the precise IsaError
            u = (v.astype(np.uint64) & np.uint64(mask))
            if flo < 64:
                glo |= u << np.uint64(flo)
            else:
                ghi |= u << np.uint64(flo - 64)
        if op in (Opcode.LOAD, Opcode.STORE):
            mt = cols[:, names.index("memory_type")]
            if (mt > max(MemType)).any():
                for r in recs:
                    encode(r, cfg)
        if op == Opcode.ALU:
            ao = cols[:, names.index("alu_opcode")]
            if (ao > max(AluOp)).any():
                for r in recs:
                    encode(r, cfg)
        lo[idx] = glo
        hi[idx] = ghi
    return np.stack([lo, hi], axis=1).astype("<u8").tobytes()


_INT_TYPES = (int, Opcode, MemType, AluOp)  # value types the vectorised encoder takes as is
_OPCODE_OF = operator.attrgetter("opcode")
_STATE_OF = operator.attrgetter("__dict__")


def _by_opcode(insns: list) -> list[tuple[object, np.ndarray | list[int], list]]:
    """(opcode, indices, records) of each opcode of ``insns``, in order of first occurrence
    (opcodes that are not plain integers are grouped by equality, one record at a time)."""
    try:
        ops = np.fromiter(map(_OPCODE_OF, insns), np.int64, len(insns))
    except (TypeError, ValueError, OverflowError):
        ops = None
    if ops is None or any(type(o) is bool for o in set(map(_OPCODE_OF, insns))):
        groups: dict[object, list[int]] = {}
        for k, i in enumerate(insns):
            groups.setdefault(i.opcode, []).append(k)
        return [(op, idx, [insns[k] for k in idx]) for op, idx in groups.items()]
    keys, first = np.unique(ops, return_index=True)
    out = []
    for op in keys[np.argsort(first)].tolist():
        idx = np.flatnonzero(ops == op)
        out.append((op, idx, [insns[k] for k in idx.tolist()]))
    return out


def _columns(recs: list, cls: type, names: tuple[str, ...]) -> np.ndarray | None:
    """The fields ``names`` of records ``recs`` as an int64 array (one row per record), or None
    when a record is not a ``cls`` or a value is not a plain integer (ints, the ISA's enums and
    numpy integers are taken; a bool or anything else is left to :func:`encode`)."""
    if set(map(type, recs)) != {cls}:
        return None
    get = operator.itemgetter(*names)
    flat = list(itertools.chain.from_iterable(map(get, map(_STATE_OF, recs))))
    types = set(map(type, flat))
    if not all(t in _INT_TYPES or issubclass(t, np.integer) for t in types):
        return None
    try:
        return np.fromiter(flat, np.int64, len(flat)).reshape(len(recs), len(names))
    except (TypeError, ValueError, OverflowError):
        return None


def from_bytes(data: bytes, cfg: Config) -> list[Insn]:
    if len(data) % INSN_BYTES:
        raise IsaError(f"an instruction stream must be a multiple of 16 bytes, not {len(data)}")
    return [decode(int.from_bytes(data[i:i + INSN_BYTES], "little"), cfg)
            for i in range(0, len(data), INSN_BYTES)]


def uops_to_bytes(uops: list[Uop], cfg: Config) -> bytes:
    """Little-endian 32-bit words of ``uops`` (vectorised; same checks as :func:`encode_uop`)."""
    if not uops:
        return b""
    try:
        cols = np.array([(u.dst_idx, u.src_idx, u.wgt_idx) for u in uops], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return b"".join(encode_uop(u, cfg).to_bytes(4, "little") for u in uops)
    return uop_array_to_bytes(cols, cfg)


def uop_array_to_bytes(cols: np.ndarray, cfg: Config) -> bytes:
    """Little-endian 32-bit words of micro-ops given as an int array of shape ``(n, 3)``
    (dst, src, wgt columns); an index outside its field raises :class:`IsaError`."""
    word = np.zeros(len(cols), np.uint64)
    for k, f in enumerate(layout(cfg).uop):
        col = cols[:, k]
        bad = (col < f.min) | (col > f.max)
        if bad.any():
            i = int(np.argmax(bad))
            encode_uop(Uop(*(int(v) for v in cols[i])), cfg)  # raises the precise IsaError
        word |= col.astype(np.uint64) << np.uint64(f.lo)
    return word.astype("<u4").tobytes()


# -- vectorised field extraction (for the simulator) -------------------------------------------


def split_words(data: bytes | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low and high 64-bit words of a packed instruction stream, as uint64 arrays."""
    arr = np.frombuffer(bytes(data), dtype="<u8")
    return arr[0::2].copy(), arr[1::2].copy()


def extract(lo: np.ndarray, hi: np.ndarray, f: Field) -> np.ndarray:
    """Field ``f`` of every instruction, as int64 (sign-extended for signed fields)."""
    word, shift = (lo, f.lo) if f.lo < 64 else (hi, f.lo - 64)
    v = ((word >> np.uint64(shift)) & np.uint64(f.mask)).astype(np.int64)
    if f.signed:
        v = np.where(v >> (f.width - 1) != 0, v - (1 << f.width), v)
    return v


def insert(words: np.ndarray, f: Field, values, rows=slice(None)) -> None:
    """Write field ``f`` of instructions ``rows`` of ``words`` (n x 2 uint64: low, high halves)
    to ``values`` in place (two's complement for signed fields); the inverse of :func:`extract`.
    The field must lie in one half (every field of the layouts does)."""
    col, shift = (0, f.lo) if f.lo < 64 else (1, f.lo - 64)
    assert shift + f.width <= 64, f
    mask = np.uint64(f.mask << shift)
    v = (np.asarray(values).astype(np.uint64) & np.uint64(f.mask)) << np.uint64(shift)
    words[rows, col] = (words[rows, col] & ~mask) | v


def extract_uops(words: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dst, src and wgt indices of an array of uint32 micro-op words, as int64 arrays."""
    w = words.astype(np.int64)
    d, s, g = layout(cfg).uop
    return ((w >> d.lo) & d.mask, (w >> s.lo) & s.mask, (w >> g.lo) & g.mask)


# -- disassembler -----------------------------------------------------------------------------


def _deps(insn: Insn) -> str:
    names = [n for n in ("pop_prev", "pop_next", "push_prev", "push_next") if getattr(insn, n)]
    return (" deps=" + ",".join(names)) if names else ""


def _enum_name(enum: type[IntEnum], value: int) -> str:
    return enum(value).name if value in enum._value2member_map_ else f"<bad {value}>"


def disassemble_one(insn: Insn) -> str:
    """One readable line for one instruction."""
    if isinstance(insn, MemInsn):
        op = Opcode(insn.opcode).name
        pads = (insn.y_pad_0, insn.y_pad_1, insn.x_pad_0, insn.x_pad_1)
        pad = f" pad(y={pads[0]},{pads[1]} x={pads[2]},{pads[3]})" if any(pads) else ""
        return (f"{op:<6} {_enum_name(MemType, insn.memory_type):<8} sram={insn.sram_base} "
                f"dram={insn.dram_base} y={insn.y_size} x={insn.x_size} "
                f"stride={insn.x_stride}{pad}{_deps(insn)}")
    if isinstance(insn, GemmInsn):
        return (f"GEMM   {'reset ' if insn.reset else ''}uop=[{insn.uop_bgn},{insn.uop_end}) "
                f"iter={insn.iter_out}x{insn.iter_in} "
                f"dst+={insn.dst_factor_out},{insn.dst_factor_in} "
                f"src+={insn.src_factor_out},{insn.src_factor_in} "
                f"wgt+={insn.wgt_factor_out},{insn.wgt_factor_in}{_deps(insn)}")
    if isinstance(insn, AluInsn):
        operand = f"imm={insn.imm}" if insn.use_imm else "src"
        return (f"ALU    {_enum_name(AluOp, insn.alu_opcode):<3} {operand} "
                f"{'deferred ' if insn.deferred else ''}uop=[{insn.uop_bgn},{insn.uop_end}) "
                f"iter={insn.iter_out}x{insn.iter_in} "
                f"dst+={insn.dst_factor_out},{insn.dst_factor_in} "
                f"src+={insn.src_factor_out},{insn.src_factor_in}{_deps(insn)}")
    return f"FINISH{_deps(insn)}"


def disassemble(data: bytes, cfg: Config) -> str:
    """One line per instruction of a packed stream; undecodable words are shown raw."""
    if len(data) % INSN_BYTES:
        raise IsaError(f"an instruction stream must be a multiple of 16 bytes, not {len(data)}")
    lines = []
    for pc in range(len(data) // INSN_BYTES):
        word = int.from_bytes(data[pc * INSN_BYTES:(pc + 1) * INSN_BYTES], "little")
        try:
            text = disassemble_one(decode(word, cfg))
        except IsaError:
            text = f".word  {word:#034x}  (bad opcode {word & 7})"
        lines.append(f"{pc:6d}  {text}")
    return "\n".join(lines)
