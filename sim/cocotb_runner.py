"""Launch cocotb testbenches on Verilator from pytest (``cocotb_tools.runner``), with the build
cached by a hash of the Verilog like every other Verilator build (``verilator_build``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from tessera.errors import HwError
from tessera.sim.verilator_build import MAKE_FIXUPS, cached_build_dir, install_verilator_env

__all__ = ["run_cocotb", "COCOTB_BUILD_ARGS"]

COCOTB_BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "fast",
                     "--x-initial", "fast", "-O3")


def _prepare_env() -> None:
    install_verilator_env()
    # The runner runs `make -f Vtop.mk` itself; pass our verilated.mk fix-ups through MAKEFLAGS
    # (variable assignments there act like command-line ones).
    flags = os.environ.get("MAKEFLAGS", "")
    for fix in MAKE_FIXUPS:
        if fix not in flags:
            flags = f"{flags} {fix}".strip()
    os.environ["MAKEFLAGS"] = flags


def run_cocotb(verilog: str, toplevel: str, test_module: str, *, work_dir: Path,
               testcase: str | None = None, extra_env: Mapping[str, str] | None = None) -> None:
    """Build ``verilog`` (cached) and run the cocotb tests of ``test_module`` against it.

    Raises AssertionError naming the results file when any cocotb test fails.
    """
    from cocotb_tools.runner import get_results, get_runner

    _prepare_env()
    parts = {"verilog": hashlib.sha256(verilog.encode()).hexdigest(), "top": toplevel,
             "args": COCOTB_BUILD_ARGS, "make": MAKE_FIXUPS}

    def build(out: Path) -> None:
        src = out / f"{toplevel}.v"
        src.write_text(verilog)
        runner = get_runner("verilator")
        try:
            runner.build(sources=[src], hdl_toplevel=toplevel, build_dir=out,
                         build_args=list(COCOTB_BUILD_ARGS), log_file=out / "build.log")
        except SystemExit as exc:
            raise HwError(f"cocotb Verilator build of {toplevel} failed (exit {exc.code}); "
                          f"see {out / 'build.log'}") from None

    build_dir = cached_build_dir(f"cocotb-{toplevel}", parts, build)
    runner = get_runner("verilator")
    work_dir.mkdir(parents=True, exist_ok=True)
    results = work_dir / "results.xml"
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel,
                    hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=work_dir,
                    testcase=testcase, extra_env=dict(extra_env or {}),
                    results_xml=str(results))
    except SystemExit as exc:
        raise AssertionError(f"cocotb tests in {test_module} failed (exit {exc.code}); see "
                             f"{results} and the log above") from None
    num_tests, num_failed = get_results(results)
    if num_tests == 0 or num_failed:
        raise AssertionError(f"cocotb: {num_failed} of {num_tests} tests in {test_module} "
                             f"failed; see {results}")
