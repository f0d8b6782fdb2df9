"""The Verilator build cache survives faults (issue 7 part 7).

- a build killed with SIGKILL while compiling leaves no ``make``/compiler process and no
  temporary directory, and the next build succeeds (Ctrl-C and the cache's other paths are
  tested without Verilator in ``tests/unit/test_build_cache_unit.py``);
- a truncated cached library is noticed before it is loaded (it used to kill the process with
  SIGBUS): the next device open warns and rebuilds;
- a failed build's error names a log that exists.

The stand-in design (``standin.py``) keeps the builds small; ``-O0`` keeps them quick.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from standin import standin_verilog

from tessera.errors import HwError
from tessera.sim.verilator_build import (
    LIB_NAME,
    BuildOptions,
    build_harness_library,
    entry_damage,
)

FAST = BuildOptions(opt_fast="-O0", opt_slow="-O0", opt_global="-O0")
BUS_BYTES = 8
HERE = Path(__file__).parent


def _processes_under(folder: Path) -> list[str]:
    """Live processes whose working directory is inside ``folder``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cwd = os.readlink(d / "cwd")
            state = (d / "stat").read_text().split(") ")[-1][:1]
            name = (d / "comm").read_text().strip()
        except OSError:
            continue
        if state != "Z" and cwd.startswith(str(folder)):
            out.append(f"{d.name} {name} in {cwd}")
    return out


def _wait_until(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tessera.sim.verilator_build import BuildOptions, build_harness_library
    fast = BuildOptions(opt_fast="-O0", opt_slow="-O0", opt_global="-O0")
    build_harness_library(Path(sys.argv[1]).read_text(), 8, options=fast, cache=Path(sys.argv[2]))
""")


@pytest.fixture(scope="module")
def verilog_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("standin") / "standin.v"
    path.write_text(standin_verilog(BUS_BYTES * 8))
    return path


@pytest.fixture(scope="module")
def killed_then_built(tmp_path_factory, verilog_file) -> Path:
    """A cache whose first build was killed with SIGKILL while compiling; returns the cache
    after checking the kill left nothing behind and the next build succeeded."""
    cache = tmp_path_factory.mktemp("killed") / "cache"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(verilog_file), str(cache)],
                             cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait until the C++ compilers run (make's children, in <key>.tmp<pid>/obj)
    compiling = lambda: any(" cc1plus " in p for p in _processes_under(cache))  # noqa: E731
    assert _wait_until(compiling, 180), "the build never reached the C++ compiler"
    assert list(cache.glob("harness-*.tmp*"))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert _wait_until(lambda: not _processes_under(cache), 15), _processes_under(cache)
    assert _wait_until(lambda: not list(cache.glob("harness-*.tmp*")), 15), \
        list(cache.glob("*"))
    lib = build_harness_library(verilog_file.read_text(), BUS_BYTES, options=FAST, cache=cache)
    assert lib.name == LIB_NAME and lib.stat().st_size > 0
    assert (lib.parent / "manifest.json").exists()
    return cache


def test_killed_build_leaves_no_orphans_or_temp_dir(killed_then_built):
    names = sorted(p.name for p in killed_then_built.iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".lock", names  # the entry and its lock


_OPEN = textwrap.dedent("""
    import sys, warnings
    from pathlib import Path
    sys.path.insert(0, ".")
    from standin import standin_verilog
    from tessera.config import Config
    from tessera.driver.verilator import VerilatorDevice
    from tessera.sim.verilator_build import BuildOptions
    fast = BuildOptions(opt_fast="-O0", opt_slow="-O0", opt_global="-O0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dev = VerilatorDevice(Config.preset("tiny"), 1 << 20, verilog=standin_verilog(64),
                              build_dir=sys.argv[1], build_options=fast)
    src, dst = dev.alloc(4096), dev.alloc(4096)
    dev.write(src.addr, bytes(range(256)) * 16)
    dev.write_reg(0x1C, dst.addr)
    dev.run(src.addr, 8)
    assert dev.read(dst.addr, 128) == bytes(range(128))
    for w in seen:
        print(type(w.message).__name__, w.message)
""")


@pytest.mark.slow  # a second full build (~25 s); tests/unit/test_build_cache_unit.py: the logic
def test_truncated_library_is_rebuilt_with_a_warning(tmp_path, killed_then_built):
    cache = tmp_path / "cache"
    shutil.copytree(killed_then_built, cache)

    def open_device() -> str:
        out = subprocess.run([sys.executable, "-c", _OPEN, str(cache)], cwd=HERE,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    assert "BuildCacheWarning" not in open_device()
    (lib,) = cache.glob(f"harness-*/{LIB_NAME}")
    size = lib.stat().st_size
    with open(lib, "r+b") as fh:
        fh.truncate(size // 3)
    said = open_device()
    assert re.search(rf"BuildCacheWarning .*is damaged: {LIB_NAME} has {size // 3} bytes, not "
                     rf"the {size} it was built with; rebuilding it", said), said
    assert lib.stat().st_size == size
    assert entry_damage(lib.parent) is None


def test_failed_build_names_a_log_that_exists(tmp_path):
    cache = tmp_path / "cache"
    bad = "module tessera_core(input clk);\n  this is not verilog;\nendmodule\n"
    with pytest.raises(HwError, match="verilating the core failed") as info:
        build_harness_library(bad, BUS_BYTES, options=FAST, cache=cache)
    logs = re.findall(r"(/\S+\.failed\.log)", str(info.value))
    assert logs, str(info.value)
    assert all(Path(p).exists() for p in logs)
    assert "syntax error" in Path(logs[0]).read_text()
    assert not list(cache.glob("harness-*.tmp*"))
