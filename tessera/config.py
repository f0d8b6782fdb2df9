"""The hardware configuration (SPEC §1): one frozen, typed object every layer derives from.

Nothing else in Tessera keeps its own copy of a width or a depth; everything derived is a
property here. A config that the ISA cannot encode is rejected when it is built.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError

__all__ = ["Config", "PRESETS"]

# Widths of the fixed-size instruction fields (SPEC §3); the ISA module uses the same numbers.
HEADER_BITS = 7
ITER_BITS = 14
MEM_WORD0_FIXED = HEADER_BITS + 3 + 16 + 32  # memory_type, sram_base, dram_base
MEM_WORD1_BITS = 16 * 3 + 4 * 4
ALU_OPCODE_BITS = 3
ALU_IMM_BITS = 16
UOP_BITS = 32
MAX_DEPTH_LOG = 16  # sram_base is 16 bits wide


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Config:
    """One hardware instance of the accelerator.

    Field meanings are those of SPEC §1. Derived constants (element sizes, buffer depths, field
    widths) are properties, computed from these fields only.
    """

    log_inp_width: int = 3
    log_wgt_width: int = 3
    log_acc_width: int = 5
    log_batch: int = 0
    log_block: int = 4
    log_uop_buff_size: int = 15
    log_inp_buff_size: int = 15
    log_wgt_buff_size: int = 18
    log_acc_buff_size: int = 17
    mem_bus_bits: int = 64
    dep_queue_depth: int = 8
    clock_mhz: float = 100.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "clock_mhz":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"clock_mhz must be a number, not {value!r}")
                if not (0 < value <= 10_000):
                    raise ConfigError(f"clock_mhz must be in (0, 10000], not {value!r}")
                object.__setattr__(self, "clock_mhz", float(value))
            elif not _is_int(value):
                raise ConfigError(f"{f.name} must be an integer, not {value!r}")
        self._check_ranges()
        self._check_buffers()
        self._check_isa_fit()

    # -- validation ---------------------------------------------------------------------------

    def _check_ranges(self) -> None:
        fixed = {"log_inp_width": 3, "log_wgt_width": 3, "log_acc_width": 5}
        for name, want in fixed.items():
            got = getattr(self, name)
            if got != want:
                raise ConfigError(
                    f"{name} must be {want} (the datapath is int8 x int8 -> int32), not {got!r}"
                )
        ranges = {
            "log_batch": (0, 4),
            "log_block": (1, 6),
            "log_uop_buff_size": (2, 24),
            "log_inp_buff_size": (1, 30),
            "log_wgt_buff_size": (1, 30),
            "log_acc_buff_size": (1, 30),
            "dep_queue_depth": (1, 1024),
        }
        for name, (lo, hi) in ranges.items():
            got = getattr(self, name)
            if not lo <= got <= hi:
                raise ConfigError(f"{name} must be in [{lo}, {hi}], not {got!r}")
        if self.mem_bus_bits not in (32, 64, 128, 256, 512):
            raise ConfigError(
                f"mem_bus_bits must be one of 32, 64, 128, 256, 512, not {self.mem_bus_bits!r}"
            )

    def _check_buffers(self) -> None:
        for buf in ("uop", "inp", "wgt", "acc"):
            size = 1 << getattr(self, f"log_{buf}_buff_size")
            elem = getattr(self, f"{buf}_elem_bytes")
            if size < elem:
                raise ConfigError(
                    f"log_{buf}_buff_size must give at least one {elem}-byte element, "
                    f"not {size} bytes"
                )
            depth = size // elem
            if depth > 1 << MAX_DEPTH_LOG:
                raise ConfigError(
                    f"log_{buf}_buff_size gives a {buf} buffer of {depth} elements; at most "
                    f"{1 << MAX_DEPTH_LOG} can be addressed by the 16-bit sram_base"
                )

    def _check_isa_fit(self) -> None:
        du, di, dw, da = (self.log_uop_depth, self.log_inp_depth, self.log_wgt_depth,
                          self.log_acc_depth)
        word0 = HEADER_BITS + 1 + du + (du + 1) + 2 * ITER_BITS
        if word0 > 64:
            raise ConfigError(
                f"log_uop_buff_size={self.log_uop_buff_size} makes the GEMM/ALU first word "
                f"{word0} bits; it must fit in 64"
            )
        gemm1 = 2 * da + 2 * di + 2 * dw
        if gemm1 > 64:
            raise ConfigError(
                f"buffer sizes make the GEMM second word {gemm1} bits (2*{da} acc + 2*{di} inp "
                f"+ 2*{dw} wgt index bits); it must fit in 64"
            )
        alu1 = 4 * da + ALU_OPCODE_BITS + 1 + ALU_IMM_BITS
        if alu1 > 64:
            raise ConfigError(
                f"log_acc_buff_size={self.log_acc_buff_size} makes the ALU second word {alu1} "
                f"bits; it must fit in 64"
            )
        uop = da + max(di, da) + dw
        if uop > UOP_BITS:
            raise ConfigError(
                f"buffer sizes make a micro-op {uop} bits ({da} dst + {max(di, da)} src + {dw} "
                f"wgt); it must fit in {UOP_BITS}"
            )

    # -- derived constants --------------------------------------------------------------------
    # Pure functions of the fields, computed once per instance (the compiler's hot loops read
    # them hundreds of thousands of times); cached_property bypasses the frozen __setattr__.

    @cached_property
    def batch(self) -> int:
        return 1 << self.log_batch

    @cached_property
    def block_in(self) -> int:
        return 1 << self.log_block

    @cached_property
    def block_out(self) -> int:
        return 1 << self.log_block

    @cached_property
    def inp_bits(self) -> int:
        return 1 << self.log_inp_width

    @cached_property
    def wgt_bits(self) -> int:
        return 1 << self.log_wgt_width

    @cached_property
    def acc_bits(self) -> int:
        return 1 << self.log_acc_width

    @cached_property
    def inp_elem_bytes(self) -> int:
        return self.batch * self.block_in * self.inp_bits // 8

    @cached_property
    def wgt_elem_bytes(self) -> int:
        return self.block_out * self.block_in * self.wgt_bits // 8

    @cached_property
    def acc_elem_bytes(self) -> int:
        return self.batch * self.block_out * self.acc_bits // 8

    @cached_property
    def out_elem_bytes(self) -> int:
        return self.batch * self.block_out * self.inp_bits // 8

    @cached_property
    def acc8_elem_bytes(self) -> int:
        """Bytes of one ACC_8BIT element in DRAM: int8 ``[BATCH][BLOCK_OUT]``."""
        return self.batch * self.block_out

    @cached_property
    def uop_elem_bytes(self) -> int:
        return UOP_BITS // 8

    @cached_property
    def uop_depth(self) -> int:
        return (1 << self.log_uop_buff_size) // self.uop_elem_bytes

    @cached_property
    def inp_depth(self) -> int:
        return (1 << self.log_inp_buff_size) // self.inp_elem_bytes

    @cached_property
    def wgt_depth(self) -> int:
        return (1 << self.log_wgt_buff_size) // self.wgt_elem_bytes

    @cached_property
    def acc_depth(self) -> int:
        return (1 << self.log_acc_buff_size) // self.acc_elem_bytes

    @cached_property
    def out_depth(self) -> int:
        return self.acc_depth

    @cached_property
    def log_uop_depth(self) -> int:
        return self.uop_depth.bit_length() - 1

    @cached_property
    def log_inp_depth(self) -> int:
        return self.inp_depth.bit_length() - 1

    @cached_property
    def log_wgt_depth(self) -> int:
        return self.wgt_depth.bit_length() - 1

    @cached_property
    def log_acc_depth(self) -> int:
        return self.acc_depth.bit_length() - 1

    @cached_property
    def macs_per_gemm_step(self) -> int:
        return self.batch * self.block_in * self.block_out

    @cached_property
    def mem_bus_bytes(self) -> int:
        return self.mem_bus_bits // 8

    @cached_property
    def dram_align(self) -> int:
        """Bytes a DRAM tensor must be aligned to so that every memory type can address it
        (SPEC §2: ``dram_base`` counts elements): the largest element size. Every element size
        is a power of two, so this is also their least common multiple."""
        return max(self.uop_elem_bytes, self.inp_elem_bytes, self.wgt_elem_bytes,
                   self.acc_elem_bytes, self.out_elem_bytes, self.acc8_elem_bytes)

    # -- presets and serialisation ------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> Config:
        """A named configuration shipped with Tessera: ``default``, ``tiny`` or ``ulx3s``."""
        try:
            values = PRESETS[name]
        except KeyError:
            raise ConfigError(
                f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
            ) from None
        return cls(**values)

    @classmethod
    def resolve(cls, config: Config | str | None) -> Config:
        """Accept a Config, a preset name, a JSON file path, or None (the default preset)."""
        if config is None:
            return cls.preset("default")
        if isinstance(config, Config):
            return config
        if isinstance(config, (str, Path)):
            if str(config) in PRESETS:
                return cls.preset(str(config))
            return cls.from_json(config)
        raise ConfigError(f"config must be a Config, a preset name or a path, not {config!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a JSON object, not {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        missing = sorted(names - set(values))
        if missing:
            raise ConfigError(f"config is missing field(s): {', '.join(missing)}")
        return cls(**values)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to ``path`` when one is given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> Config:
        """Parse JSON text, or read a JSON file when ``source`` is a path."""
        text = str(source)
        if isinstance(source, Path) or not text.lstrip().startswith("{"):
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read config file {str(source)!r}: {exc}") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(values)

    def summary(self) -> str:
        return (
            f"BATCH={self.batch} BLOCK={self.block_in} bus={self.mem_bus_bits}b "
            f"depths inp={self.inp_depth} wgt={self.wgt_depth} acc={self.acc_depth} "
            f"uop={self.uop_depth}"
        )


PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        log_inp_width=3, log_wgt_width=3, log_acc_width=5, log_batch=0, log_block=4,
        log_uop_buff_size=15, log_inp_buff_size=15, log_wgt_buff_size=18,
        log_acc_buff_size=17, mem_bus_bits=64, dep_queue_depth=8, clock_mhz=100.0,
    ),
    "tiny": dict(
        log_inp_width=3, log_wgt_width=3, log_acc_width=5, log_batch=0, log_block=2,
        log_uop_buff_size=10, log_inp_buff_size=10, log_wgt_buff_size=12,
        log_acc_buff_size=11, mem_bus_bits=64, dep_queue_depth=8, clock_mhz=100.0,
    ),
    # ECP5-85F (ULX3S): an 8x8 GEMM array (a 16x16 one needs 256 int8 multipliers, more than the
    # 156 MULT18X18D). Yosys synth_ecp5 of this preset: 16.4k LUT4, 4.7k FF, 120 DP16KD,
    # 91 MULT18X18D, leaving block RAM headroom for the board shell (SDRAM controller etc.).
    "ulx3s": dict(
        log_inp_width=3, log_wgt_width=3, log_acc_width=5, log_batch=0, log_block=3,
        log_uop_buff_size=14, log_inp_buff_size=14, log_wgt_buff_size=16,
        log_acc_buff_size=16, mem_bus_bits=64, dep_queue_depth=8, clock_mhz=25.0,
    ),
}
