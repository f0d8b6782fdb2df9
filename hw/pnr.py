"""Fmax estimate: Yosys ``synth_ecp5`` then nextpnr-ecp5 place and route of the core alone.

The core is placed and routed *out of context* (``--out-of-context``: its ports are not tied to
pins, so no board constraints are needed) on a Lattice ECP5 part (the ULX3S board's LFE5U-85F,
CABGA381, speed grade 6 by default). The figure is nextpnr's last (post-route) "Max frequency for
clock" line of the core's clock; the cell counts come from the same synthesis run, so one call
gives both area and Fmax. A design that does not fit the part is an :class:`HwError` naming the
resource nextpnr ran out of.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.errors import HwError
from tessera.hw.synth import parse_stat
from tessera.proc import ToolFailed, run_logged
from tessera.tools import find_tool

__all__ = ["PnrReport", "place_and_route_ecp5", "parse_fmax", "ECP5_PART"]

ECP5_PART = ("--85k", "--package", "CABGA381", "--speed", "6")
"""nextpnr-ecp5 arguments selecting the ULX3S's LFE5U-85F."""

_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([\d.]+) MHz")


@dataclass
class PnrReport:
    """Cell counts after synthesis, the routed Fmax of the clock, and the tools' wall times."""

    cells: dict[str, int] = field(default_factory=dict)
    fmax_mhz: float = 0.0
    clock: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def parse_fmax(log: str) -> tuple[str, float]:
    """``(clock, MHz)`` of the last "Max frequency for clock" line of a nextpnr log (the
    post-route figure); :class:`HwError` when there is none."""
    found = _FMAX.findall(log)
    if not found:
        raise HwError("the nextpnr log has no 'Max frequency for clock' line (did routing run?)")
    name, mhz = found[-1]
    return name, float(mhz)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def place_and_route_ecp5(verilog: str, top: str, *, part: tuple[str, ...] = ECP5_PART,
                         target_mhz: float = 100.0, seed: int = 1,
                         timeout: float | None = None,
                         workdir: str | Path | None = None) -> PnrReport:
    """Synthesise module ``top`` of ``verilog`` for ECP5 and place and route it out of context.

    ``target_mhz`` is the clock nextpnr optimises for (the reported Fmax is what it reached,
    above or below it). ``timeout`` bounds each tool in seconds. ``workdir`` keeps the sources and
    logs; otherwise a temporary directory is used and removed.
    """
    if not isinstance(verilog, str) or f"module {top}" not in verilog:
        raise HwError(f"the Verilog to place and route must define module {top!r}")
    if isinstance(target_mhz, bool) or not isinstance(target_mhz, (int, float)) \
            or not 0 < target_mhz <= 1000:
        raise HwError(f"target_mhz must be in (0, 1000], not {target_mhz!r}")
    if timeout is not None and timeout <= 0:
        raise HwError(f"timeout must be positive, not {timeout!r}")
    yosys, nextpnr = find_tool("yosys"), find_tool("nextpnr-ecp5")
    with tempfile.TemporaryDirectory(prefix="tessera-pnr-") as tmp:
        out = Path(workdir) if workdir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{top}.v").write_text(verilog)
        report = PnrReport()
        script = f"read_verilog {top}.v; synth_ecp5 -top {top} -json {top}.json; stat"
        t0 = time.monotonic()
        try:
            run_logged([*yosys, "-q", "-p", script, "-l", "synth.log"], cwd=out, env=None,
                       log=out / "yosys-output.log", what=f"synth_ecp5 of {top}",
                       timeout=timeout)
        except ToolFailed as exc:
            raise HwError(f"{exc}\n{_tail(out / 'synth.log')}") from None
        report.seconds["yosys"] = time.monotonic() - t0
        report.cells = parse_stat((out / "synth.log").read_text(errors="replace"))
        t0 = time.monotonic()
        cmd = [*nextpnr, "--json", f"{top}.json", *part, "--out-of-context",
               "--freq", f"{target_mhz:g}", "--seed", str(seed), "--log", "pnr.log", "-q"]
        try:
            run_logged(cmd, cwd=out, env=None, log=out / "nextpnr-output.log",
                       what=f"nextpnr-ecp5 of {top}", timeout=timeout)
        except ToolFailed as exc:
            log = (out / "pnr.log").read_text(errors="replace") if (out / "pnr.log").exists() \
                else ""
            if re.search(r"Unable to place cell|only \d+ .* available|device has only", log):
                raise HwError(f"{top} does not fit the ECP5 part {' '.join(part)}:\n"
                              f"{_tail(out / 'pnr.log')}") from None
            raise HwError(f"{exc}\n{_tail(out / 'pnr.log')}") from None
        report.seconds["nextpnr"] = time.monotonic() - t0
        report.clock, report.fmax_mhz = parse_fmax((out / "pnr.log").read_text(errors="replace"))
    return report
