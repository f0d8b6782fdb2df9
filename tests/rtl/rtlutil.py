"""Helpers of the differential tests: run one program on ``verilator`` and ``fsim`` and compare."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.config import Config
from tessera.driver import Device, open_device
from tessera.errors import DeviceError
from tessera.isa import INSN_BYTES, Field, layout
from tessera.regs import COUNTERS

ARCH_COUNTERS = tuple(name for name, timing, _ in COUNTERS if not timing)
MEM_BYTES = 1 << 24


@dataclass
class Outcome:
    """What a run left behind: the error (if any), architectural counters and cycles."""

    error: DeviceError | None
    counters: dict[str, int]
    cycles: int | None


def run(dev: Device, insn_addr: int, insn_count: int, timeout_cycles: int | None) -> Outcome:
    try:
        stats = dev.run(insn_addr, insn_count, timeout_cycles=timeout_cycles)
    except DeviceError as exc:
        return Outcome(exc, {}, None)
    return Outcome(None, {k: stats.counters[k] for k in ARCH_COUNTERS}, stats.cycles)


def free_all(dev: Device) -> None:
    for buf in dev.allocator.blocks():
        dev.free(buf)


def memory_diff(a: Device, b: Device) -> list[str]:
    """Descriptions of every allocated block whose contents differ between ``a`` and ``b``."""
    blocks_a, blocks_b = a.allocator.blocks(), b.allocator.blocks()
    assert blocks_a == blocks_b, (blocks_a, blocks_b)
    out = []
    for buf in blocks_a:
        x, y = a.read(buf.addr, buf.size), b.read(buf.addr, buf.size)
        if x != y:
            first = next(i for i in range(buf.size) if x[i] != y[i])
            nbad = sum(1 for i in range(buf.size) if x[i] != y[i])
            out.append(f"block {buf.addr:#x}+{buf.size}: {nbad} bytes differ, first at "
                       f"{buf.addr + first:#x} ({a.kind} {x[first]:#04x} vs {b.kind} "
                       f"{y[first]:#04x})")
    return out


def open_pair(cfg: Config, **verilator_options) -> tuple[Device, Device]:
    """A verilator and an fsim device; the DRAM knobs go to both (fsim's cycle model)."""
    knobs = {k: v for k, v in verilator_options.items()
             if k in ("read_latency", "beats_per_cycle")}
    return (open_device("verilator", cfg, mem_bytes=MEM_BYTES, **verilator_options),
            open_device("fsim", cfg, mem_bytes=MEM_BYTES, **knobs))


def patch(word: int, fld: Field, value: int) -> int:
    """``word`` with field ``fld`` replaced by ``value`` (any bit pattern, legal or not)."""
    return (word & ~(fld.mask << fld.lo)) | ((value & fld.mask) << fld.lo)


def field(cfg: Config, fmt: str, name: str) -> Field:
    return layout(cfg).field(fmt, name)


def words_to_bytes(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(INSN_BYTES, "little") for w in words)
