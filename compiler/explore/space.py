"""The design space of a sweep: configs (any :class:`~tessera.config.Config` field) and the DRAM
timing knobs of the cycle model (:class:`~tessera.sim.timing.DramTiming`).

A :class:`Point` is one config (or, for a grid combination the Config rejects, the field values
that were asked for and why they are invalid) and one DRAM timing. :func:`grid_points` expands
``FIELD=V1,V2,...`` specs into their product over a base config; :func:`random_configs` draws
seeded random valid configs over the whole range (array 2x2 to 64x64, batch 1 to 16, every bus
width, buffer depths from 32 to 8192 elements, queue depths 1 to 16).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.errors import ConfigError, SimError
from tessera.sim.timing import DramTiming

__all__ = ["Point", "CONFIG_FIELDS", "DRAM_KNOBS", "parse_grid", "grid_points",
           "random_configs", "random_points", "config_label", "BUS_WIDTHS"]

CONFIG_FIELDS = tuple(f.name for f in fields(Config))
DRAM_KNOBS = tuple(f.name for f in fields(DramTiming))
BUS_WIDTHS = (32, 64, 128, 256, 512)
_FLOAT_KNOBS = {"clock_mhz", "beats_per_cycle"}
# log2 of the buffer depths (elements) random configs draw from
_LOG_DEPTHS = {"inp": (5, 13), "wgt": (5, 13), "acc": (5, 13), "uop": (7, 13)}
_QUEUE_DEPTHS = (1, 2, 3, 4, 8, 16)


@dataclass(frozen=True)
class Point:
    """One design point: ``config`` (None when the requested ``values`` make no valid Config,
    ``error`` then says why) and the DRAM timing ``dram``."""

    values: tuple[tuple[str, Any], ...]  # every Config field, as requested
    dram: DramTiming
    config: Config | None = None
    error: str | None = None

    @property
    def config_json(self) -> str:
        """``Config.to_json()`` of the point (the requested fields' JSON when invalid)."""
        if self.config is not None:
            return self.config.to_json()
        return json.dumps(dict(self.values), indent=2) + "\n"

    @property
    def key(self) -> tuple[str, int, float]:
        """What identifies the point in a results table (with the model)."""
        return (self.config_json, self.dram.read_latency, self.dram.beats_per_cycle)


def _convert(name: str, text: str) -> int | float:
    text = text.strip()
    try:
        return float(text) if name in _FLOAT_KNOBS else int(text, 0)
    except ValueError:
        kind = "a number" if name in _FLOAT_KNOBS else "an integer"
        raise ConfigError(f"grid value of {name} must be {kind}, not {text!r}") from None


def parse_grid(specs: list[str] | tuple[str, ...]) -> dict[str, list[int | float]]:
    """``["log_block=4,5", "read_latency=16,64"]`` -> ``{"log_block": [4, 5], ...}``.

    Every name must be a Config field or a DRAM knob, named once, with at least one value.
    """
    out: dict[str, list[int | float]] = {}
    for spec in specs:
        if not isinstance(spec, str) or "=" not in spec:
            raise ConfigError(f"a grid spec must read FIELD=V1,V2,..., not {spec!r}")
        name, _, values = spec.partition("=")
        name = name.strip()
        if name not in CONFIG_FIELDS and name not in DRAM_KNOBS:
            raise ConfigError(f"grid field must be a Config field ({', '.join(CONFIG_FIELDS)}) "
                              f"or a DRAM knob ({', '.join(DRAM_KNOBS)}), not {name!r}")
        if name in out:
            raise ConfigError(f"grid field {name} is given twice")
        parts = [v for v in values.split(",") if v.strip()]
        if not parts:
            raise ConfigError(f"grid field {name} needs at least one value, not {values!r}")
        vals = [_convert(name, v) for v in parts]
        if len(set(vals)) != len(vals):
            raise ConfigError(f"grid field {name} repeats a value: {values!r}")
        out[name] = vals
    return out


def _dram(values: dict[str, Any]) -> DramTiming:
    try:
        return DramTiming(**values)
    except SimError as exc:
        raise ConfigError(str(exc)) from None


def _point(values: dict[str, Any], dram: DramTiming) -> Point:
    items = tuple(sorted(values.items()))
    try:
        return Point(items, dram, Config(**values))
    except ConfigError as exc:
        return Point(items, dram, None, str(exc))


def grid_points(grid: dict[str, list[int | float]], base: Config | None = None,
                configs: list[Config] | None = None) -> list[Point]:
    """The product of ``grid`` over ``base`` (the default preset when None), or over each of
    ``configs`` when given. Config fields the Config rejects in combination become invalid
    points (recorded with their error); bad DRAM knob values are a :class:`ConfigError`."""
    dram_grid = {k: v for k, v in grid.items() if k in DRAM_KNOBS}
    cfg_grid = {k: v for k, v in grid.items() if k in CONFIG_FIELDS}
    drams = [_dram(dict(zip(dram_grid, combo)))
             for combo in itertools.product(*dram_grid.values())]
    bases = configs if configs is not None else [base or Config.preset("default")]
    out: list[Point] = []
    seen: set[tuple] = set()
    for cfg in bases:
        for combo in itertools.product(*cfg_grid.values()):
            values = {**cfg.to_dict(), **dict(zip(cfg_grid, combo))}
            for dram in drams:
                p = _point(values, dram)
                if p.key not in seen:
                    seen.add(p.key)
                    out.append(p)
    return out


def random_configs(n: int, seed: int = 0, base: Config | None = None) -> list[Config]:
    """``n`` distinct random valid configs, reproducible from ``seed``.

    Each draws the batch (1..16), the array (2x2..64x64), the bus width, a queue depth and the
    depth of every buffer (log2 uniform over :data:`_LOG_DEPTHS`), then keeps the config if the
    ISA can encode it; the other fields (element widths, clock) are ``base``'s.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"the number of random configs must be a non-negative integer, "
                          f"not {n!r}")
    rng = np.random.default_rng(seed)
    base = base or Config.preset("default")
    out: list[Config] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * (n + 1):
            raise ConfigError(f"could not draw {n} distinct valid configs (got {len(out)})")
        values = base.to_dict()
        values["log_batch"] = int(rng.integers(0, 5))
        values["log_block"] = int(rng.integers(1, 7))
        values["mem_bus_bits"] = int(rng.choice(BUS_WIDTHS))
        values["dep_queue_depth"] = int(rng.choice(_QUEUE_DEPTHS))
        # 4 KiB buffers are valid for every batch/array size: read the element sizes off them
        probe = Config(**{**values, **{f"log_{b}_buff_size": 12 for b in _LOG_DEPTHS}})
        for buf, (lo, hi) in _LOG_DEPTHS.items():
            elem = getattr(probe, f"{buf}_elem_bytes")
            values[f"log_{buf}_buff_size"] = int(rng.integers(lo, hi + 1)) + elem.bit_length() - 1
        try:
            cfg = Config(**values)
        except ConfigError:
            continue  # the instruction fields do not fit 128 bits: draw again
        if cfg not in out:
            out.append(cfg)
    return out


def random_points(n: int, seed: int = 0, base: Config | None = None,
                  grid: dict[str, list[int | float]] | None = None) -> list[Point]:
    """``n`` random configs, each crossed with ``grid`` (its DRAM knobs and Config fields)."""
    return grid_points(grid or {}, configs=random_configs(n, seed, base))


def config_label(cfg: Config | None, values: dict[str, Any] | None = None) -> str:
    """A short label of a config for tables and plots: ``16x16 b1 64b i2048 w1024 a2048 q8``."""
    if cfg is None:
        ref = Config.preset("default").to_dict()
        diff = [f"{k}={v}" for k, v in (values or {}).items() if ref.get(k) != v]
        return "invalid " + " ".join(diff) if diff else "invalid"
    return (f"{cfg.block_in}x{cfg.block_out} b{cfg.batch} {cfg.mem_bus_bits}b "
            f"i{cfg.inp_depth} w{cfg.wgt_depth} a{cfg.acc_depth} u{cfg.uop_depth} "
            f"q{cfg.dep_queue_depth}")
