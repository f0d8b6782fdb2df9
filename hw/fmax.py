"""Out-of-context timing of the core on a Lattice ECP5 (Yosys ``synth_ecp5`` + nextpnr-ecp5).

The core alone is placed and routed without I/O buffers (``--out-of-context``): the result is
the core's own Fmax, what a board SoC can clock it at before its own glue adds paths. The
report keeps nextpnr's maximum frequency and its critical-path listing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.synth import synth_ecp5
from tessera.hw.verilog import TOP_NAME, generate_verilog
from tessera.proc import ToolFailed, run_logged
from tessera.tools import find_tool

__all__ = ["FmaxReport", "core_fmax", "parse_nextpnr_log", "ECP5_85F_CABGA381_6"]

ECP5_85F_CABGA381_6 = ("--85k", "--package", "CABGA381", "--speed", "6")
"""nextpnr's part arguments for the ULX3S board's FPGA (LFE5U-85F, CABGA381, speed 6)."""


@dataclass
class FmaxReport:
    """Fmax of the core's clock in MHz, nextpnr's critical path text, wall seconds, and the
    cell counts of the synthesis it placed (:func:`tessera.hw.synth.synth_ecp5`)."""

    config: Config
    mhz: float
    critical_path: str
    routed: bool
    seconds: float
    cells: dict[str, int] = field(default_factory=dict)


def parse_nextpnr_log(text: str) -> tuple[float, str]:
    """(the last "Max frequency for clock" in MHz, the last critical-path report) of a log."""
    freqs = re.findall(r"Max frequency for clock\s+'[^']*':\s+([\d.]+) MHz", text)
    if not freqs:
        raise HwError("the nextpnr log has no 'Max frequency for clock' line")
    reports = re.findall(r"(Info: Critical path report for clock.*?)(?:\n\s*\n|\nInfo: \n)",
                         text, re.S)
    return float(freqs[-1]), (reports[-1] if reports else "")


def core_fmax(cfg: Config, workdir: str | Path, *, part: tuple[str, ...] = ECP5_85F_CABGA381_6,
              target_mhz: float = 100.0, route: bool = True, seed: int = 1,
              timeout: float | None = None, verilog: str | None = None) -> FmaxReport:
    """Synthesise the core for ``cfg`` and place (and route) it out of context.

    Everything is kept in ``workdir`` (``tessera_core.v``, ``synth.log``, ``core.json``,
    ``nextpnr.log``). nextpnr runs timing-driven for ``target_mhz`` and never fails on timing.
    ``verilog``: the core's Verilog for ``cfg`` when the caller already has it (e.g. from the
    Verilator build cache); generated otherwise.
    """
    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    text = generate_verilog(cfg) if verilog is None else verilog
    if not isinstance(text, str) or f"module {TOP_NAME}" not in text:
        raise HwError(f"the Verilog to place and route must define module {TOP_NAME!r}")
    cells = synth_ecp5(text, TOP_NAME, workdir=out, json_out="core.json", timeout=timeout)
    log = out / "nextpnr.log"
    log.unlink(missing_ok=True)
    cmd = [*find_tool("nextpnr-ecp5"), "--json", "core.json", *part, "--out-of-context",
           "--freq", str(target_mhz), "--timing-allow-fail", "--seed", str(seed),
           *([] if route else ["--no-route"])]
    try:
        run_logged(cmd, cwd=out, env=None, log=log, what="nextpnr-ecp5 (out of context)",
                   timeout=timeout)
    except ToolFailed as exc:
        raise HwError(str(exc)) from None
    mhz, path = parse_nextpnr_log(log.read_text(errors="replace"))
    return FmaxReport(cfg, mhz, path, route, time.monotonic() - t0, cells)
