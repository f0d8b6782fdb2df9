"""The co-simulated board SoC as a Verilator executable, cached by content.

:func:`build_soc_sim` compiles the SoC's Verilog (``tessera.hw.boards.build.sim_verilog``) with
``sim/soc/harness.cpp`` into ``tessera_soc_sim``, which serves the SoC's serial port on a TCP
socket. The cache entry (``tessera.sim.verilator_build.cached_build_dir``) is keyed by the
Verilog text, the harness source, the Verilator version and the build options.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from tessera.errors import HwError
from tessera.sim.verilator_build import (
    MAKE_FIXUPS,
    cached_build_dir,
    verilator_env,
    verilator_root,
)

__all__ = ["build_soc_sim", "soc_sim_executable", "HARNESS", "EXE_NAME"]

HARNESS = Path(__file__).parent / "harness.cpp"
EXE_NAME = "tessera_soc_sim"
VERILATOR_ARGS = ("-O3", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal",
                  "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "--no-timing")


def _run(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=verilator_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait()
        except BaseException:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise HwError(f"{what} failed (exit {rc}); last lines of {log}:\n" + "\n".join(tail))


def build_soc_sim(verilog: str, *, jobs: int = 2, cache: Path | None = None) -> Path:
    """Compile the co-simulation SoC; return the path of its executable."""
    if "module sim" not in verilog:
        raise HwError("the co-simulation Verilog must define module 'sim'")
    harness = HARNESS.read_text()
    parts = {"verilog": hashlib.sha256(verilog.encode()).hexdigest(),
             "harness": hashlib.sha256(harness.encode()).hexdigest(),
             "args": VERILATOR_ARGS, "make": MAKE_FIXUPS}

    def build(out: Path) -> None:
        (out / "soc.v").write_text(verilog)
        shutil.copy(HARNESS, out / "harness.cpp")
        log = out / "build.log"
        _run([str(verilator_root() / "bin" / "verilator"), "--cc", "--exe", "--top-module",
              "sim", "--prefix", "Vsim", "-Mdir", "obj", *VERILATOR_ARGS,
              "-o", EXE_NAME, "soc.v", "harness.cpp"], out, log, "verilating the SoC")
        _run(["make", f"-j{jobs}", "-C", "obj", "-f", "Vsim.mk", "OPT_FAST=-O2",
              "OPT_SLOW=-O1", "OPT_GLOBAL=-O2", "VM_PARALLEL_BUILDS=1", *MAKE_FIXUPS],
             out, log, "compiling the Verilated SoC")
        shutil.move(out / "obj" / EXE_NAME, out / EXE_NAME)
        shutil.rmtree(out / "obj", ignore_errors=True)

    return cached_build_dir("soc", parts, build, cache=cache) / EXE_NAME


def soc_sim_executable(cfg, board="ulx3s") -> Path:
    """The cached co-simulation executable for ``cfg`` on ``board`` (built on first use)."""
    from tessera.hw.boards.build import sim_verilog
    from tessera.sim.verilator_build import core_verilog

    return build_soc_sim(sim_verilog(cfg, board, core_verilog=core_verilog(cfg)))
