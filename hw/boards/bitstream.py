"""``tessera hw bitstream``: the board SoC through Yosys, nextpnr-ecp5 and ecppack (PyPI's yowasp).

LiteX writes the project (Verilog top, ``.lpf`` pin and clock constraints, Yosys script and the
shell script of its trellis flow) without running it; each command of that script is then run
here with the tool it names replaced by what :func:`tessera.tools.find_tool` finds (an
environment override, else the interpreter's own ``yowasp-*`` tools), with its output in a log
in the build directory and a progress line while it runs. Nothing is downloaded.
The reports (``report.txt``, ``report.json``: utilisation and nextpnr's "Max frequency for
clock" lines) are written next to the ``.bit``; a clock that fails timing is an error.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.boards.board import Board, get_board
from tessera.tools import find_tool

__all__ = ["BitstreamReport", "build_bitstream", "parse_timing", "parse_utilisation",
           "format_report", "FLOW_TOOLS"]

FLOW_TOOLS = ("yosys", "nextpnr-ecp5", "ecppack")
"""The tools LiteX's trellis flow runs, by the names :func:`tessera.tools.find_tool` knows."""


@dataclass
class BitstreamReport:
    """What one build produced and measured."""

    board: str
    config: dict
    bitstream: str
    utilisation: dict[str, tuple[int, int]] = field(default_factory=dict)
    clocks: dict[str, dict] = field(default_factory=dict)  # name -> {fmax, target, pass}
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def timing_pass(self) -> bool:
        return bool(self.clocks) and all(c["pass"] for c in self.clocks.values())


_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([\d.]+) MHz \((PASS|FAIL) at "
                   r"([\d.]+) MHz\)")
_UTIL = re.compile(r"^Info:\s+([A-Z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)


def parse_timing(log: str) -> dict[str, dict]:
    """The last (post-route) "Max frequency for clock" line of each clock in a nextpnr log."""
    out: dict[str, dict] = {}
    for name, fmax, verdict, target in _FMAX.findall(log):
        out[name] = {"fmax_mhz": float(fmax), "target_mhz": float(target),
                     "pass": verdict == "PASS"}
    return out


def parse_utilisation(log: str) -> dict[str, tuple[int, int]]:
    """``cell -> (used, available)`` from nextpnr's "Device utilisation" table."""
    start = log.rfind("Device utilisation:")
    if start < 0:
        return {}
    body = log[start:start + 4000]
    return {name: (int(used), int(cap)) for name, used, cap in _UTIL.findall(body)}


def _run_step(cmd: list[str], cwd: Path, log: Path, what: str, progress: Callable[[str], None],
              timeout: float | None) -> float:
    """Run one tool with its output in ``log``; report progress; return its wall time."""
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as exc:
            raise HwError(f"cannot run {what} ({cmd[0]}): {exc}") from None
        try:
            last = t0
            while proc.poll() is None:
                time.sleep(0.5)
                now = time.monotonic()
                if timeout is not None and now - t0 > timeout:
                    raise HwError(f"{what} did not finish within {timeout:.0f} s (log: {log})")
                if now - last >= 15:
                    last = now
                    progress(f"  {what}: {now - t0:5.0f} s  {_last_phase(log)}")
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise HwError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return time.monotonic() - t0


def _last_phase(log: Path) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        line = line.strip()
        if line and not line.startswith("Info:     ") and len(line) < 110:
            return line
    return ""


def build_bitstream(cfg: Config, board: Board | str, out_dir: str | Path, *,
                    seed: int = 1, progress: Callable[[str], None] = print,
                    timeout: float | None = None) -> BitstreamReport:
    """Build the SoC of ``cfg`` for ``board`` into ``out_dir``; raise :class:`HwError` when a
    tool is missing or fails, or when a clock misses its target (the reports are kept)."""
    from tessera.hw.boards.build import elaborate

    board = get_board(board)
    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    if abs(cfg.clock_mhz * 1e6 - board.core_clk_hz) > 1:
        raise HwError(f"config clock_mhz ({cfg.clock_mhz}) must be the {board.name}'s core clock "
                      f"({board.core_clk_hz / 1e6:g} MHz): the cycle-to-time figures would "
                      f"be wrong otherwise")
    tools = {name: find_tool(name) for name in FLOW_TOOLS}  # fail before any work
    out = Path(out_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HwError(f"cannot create output directory {str(out)!r}: {exc}") from None
    name = f"tessera_{board.name}"
    gw = out / "gateware"
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    progress(f"elaborating the {board.name} SoC ({cfg.summary()})")
    platform, soc = elaborate(cfg, board, sim=False, src_dir=out / "src")
    platform.build(soc, build_dir=str(gw), build_name=name, run=False)
    seconds["elaborate"] = time.monotonic() - t0
    _relative_sources(gw / f"{name}.ys", gw)
    script = (gw / f"build_{name}.sh").read_text()
    steps = [shlex.split(line) for line in script.splitlines()
             if line.strip() and not line.startswith(("#", "set "))]
    what = {"yosys": "synthesis (yosys)", "nextpnr-ecp5": "place and route (nextpnr-ecp5)",
            "ecppack": "packing (ecppack)"}
    for argv in steps:
        tool = argv[0]
        if tool not in tools:
            raise HwError(f"the LiteX build script runs {tool!r}, which this flow does not "
                          f"provide")
        if tool == "ecppack":
            report = _timing_report(gw, name, board, cfg, seconds)
            if not report.timing_pass:
                _write_reports(out, report)
                raise HwError(f"timing FAILED for the {board.name} SoC: "
                              + "; ".join(f"{c}: {v['fmax_mhz']:.2f} MHz at {v['target_mhz']:.2f}"
                                          for c, v in report.clocks.items())
                              + f" (reports in {out})")
        argv = list(argv)
        if tool == "nextpnr-ecp5":
            if "--seed" in argv:
                i = argv.index("--seed")
                del argv[i:i + 2]
            argv += ["--seed", str(seed)]
        progress(f"{what[tool]} ...")
        log = gw / f"{tool}.log"
        seconds[tool] = _run_step(tools[tool] + argv[1:], gw, log, what[tool], progress, timeout)
        progress(f"{what[tool]} done in {seconds[tool]:.0f} s")
    bit = out / f"{name}.bit"
    shutil.copy(gw / f"{name}.bit", bit)
    report = _timing_report(gw, name, board, cfg, seconds)
    report.bitstream = str(bit)
    seconds["total"] = time.monotonic() - t0
    _write_reports(out, report)
    return report


def _relative_sources(ys: Path, gw: Path) -> None:
    """The yowasp tools (WebAssembly) see only their working directory: copy every source the
    Yosys script reads into the build directory and name it relatively."""
    lines = []
    for line in ys.read_text().splitlines():
        m = re.match(r"^(read_verilog(?:\s+-\S+)*)\s+(\S+)$", line)
        if m and Path(m.group(2)).is_absolute():
            src = Path(m.group(2))
            if src.parent != gw:
                shutil.copy(src, gw / src.name)
            line = f"{m.group(1)} {src.name}"
        lines.append(line)
    ys.write_text("\n".join(lines) + "\n")


def _timing_report(gw: Path, name: str, board: Board, cfg: Config,
                   seconds: dict[str, float]) -> BitstreamReport:
    log = (gw / "nextpnr-ecp5.log").read_text(errors="replace")
    return BitstreamReport(board=board.name, config=cfg.to_dict(), bitstream="",
                           utilisation=parse_utilisation(log), clocks=parse_timing(log),
                           seconds=seconds)


def _write_reports(out: Path, report: BitstreamReport) -> None:
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "report.txt").write_text(format_report(report) + "\n")


def format_report(report: BitstreamReport) -> str:
    """Utilisation and timing as a small text table."""
    lines = [f"board {report.board}   bitstream {report.bitstream or '(not written)'}",
             f"{'resource':<14}{'used':>8}{'of':>8}{'%':>7}"]
    for cell, (used, cap) in sorted(report.utilisation.items()):
        if used:
            lines.append(f"{cell:<14}{used:>8}{cap:>8}{100 * used / cap:>7.1f}")
    lines.append(f"{'clock':<40}{'Fmax MHz':>10}{'target':>9}  verdict")
    for clk, v in report.clocks.items():
        lines.append(f"{clk[:40]:<40}{v['fmax_mhz']:>10.2f}{v['target_mhz']:>9.2f}  "
                     f"{'PASS' if v['pass'] else 'FAIL'}")
    if report.seconds:
        lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()))
    return "\n".join(lines)
