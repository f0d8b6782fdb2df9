"""Profile-guided Verilator builds (``BuildOptions(pgo=True)``, issue 9 part 5).

The build mechanics run against the stand-in design (``standin.py``, small and quick to build):
the instrumented library is trained in a child process, its profile is kept in the entry and
used by the second compilation, the result works, and a training that fails or writes nothing
is an error naming it. The real training workload (``tessera.driver.verilator_pgo``) is checked
on fsim, whose race detector rejects any load/compute/store overlap the tokens do not order.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from standin import DST, standin_verilog

from tessera.config import Config
from tessera.driver import open_device
from tessera.driver.verilator import VerilatorDevice
from tessera.driver.verilator_pgo import train
from tessera.errors import HwError
from tessera.sim.verilator_build import BuildOptions, PgoTraining, build_harness_library

CFG = Config.preset("tiny")
PGO = BuildOptions(opt_fast="-O1", opt_slow="-O0", opt_global="-O0", pgo=True)

# The child process: copy 8 KiB through the stand-in's DMA engine on the instrumented library.
_TRAIN = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from tessera.config import Config
    from tessera.driver.verilator import VerilatorDevice
    with VerilatorDevice(Config.preset("tiny"), 1 << 22, library=Path(sys.argv[1])) as dev:
        src, dst = dev.alloc(8192), dev.alloc(8192)
        dev.write(src.addr, np.arange(8192, dtype=np.uint32).astype(np.uint8))
        dev.write_reg(0x1C, dst.addr)
        dev.run(src.addr, 8192 // 16)
        assert dev.read(dst.addr, 8192) == dev.read(src.addr, 8192)
        print("standin training done")
""")


def _training(code: str = _TRAIN, key: str = "standin copy") -> PgoTraining:
    def run(library: Path, log: Path) -> None:
        with open(log, "a") as fh:
            rc = subprocess.run([sys.executable, "-c", code, str(library)], stdout=fh,
                                stderr=subprocess.STDOUT, check=False).returncode
        if rc:
            raise HwError(f"the standin training exited with {rc}")
    return PgoTraining(key=key, run=run)


@pytest.fixture(scope="module")
def verilog() -> str:
    return standin_verilog(CFG.mem_bus_bits)


@pytest.mark.slow  # two Verilator builds and a training run: ~45 s at load 8
def test_pgo_build_uses_the_training_profile(verilog, tmp_path):
    lib = build_harness_library(verilog, CFG.mem_bus_bytes, options=PGO, cache=tmp_path,
                                training=_training())
    entry = lib.parent
    profiles = sorted(p.name for p in (entry / "profile").glob("*.gcda"))
    assert "harness.gcda" in profiles and any(p.startswith("Vtop") for p in profiles), profiles
    log = (entry / "build.log").read_text()
    assert "standin training done" in log
    assert "-fprofile-generate=" in log and "-fprofile-use=" in log
    assert not (entry / "pgo-gen").exists()  # the instrumented build is not kept
    with VerilatorDevice(CFG, 1 << 22, library=lib) as dev:
        src, dst = dev.alloc(4096), dev.alloc(4096)
        data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)
        dev.write(src.addr, data)
        dev.write_reg(DST, dst.addr)
        dev.run(src.addr, 4096 // 16)
        assert dev.read(dst.addr, 4096) == data.tobytes()
    # the same inputs hit the cache; another training workload is another entry
    assert build_harness_library(verilog, CFG.mem_bus_bytes, options=PGO, cache=tmp_path,
                                 training=_training()) == lib
    assert _training(key="other").key != _training().key


def test_pgo_option_errors(verilog, tmp_path):
    with pytest.raises(HwError, match="options.pgo needs a PgoTraining"):
        build_harness_library(verilog, CFG.mem_bus_bytes, options=PGO, cache=tmp_path)
    traced = BuildOptions(pgo=True, trace=True)
    with pytest.raises(HwError, match="traced build cannot be profile-guided"):
        build_harness_library(verilog, CFG.mem_bus_bytes, options=traced, cache=tmp_path,
                              training=_training())
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow  # two instrumented Verilator builds: ~55 s at load 8
def test_pgo_training_failures(verilog, tmp_path):
    with pytest.raises(HwError, match="standin training exited with 3"):
        build_harness_library(verilog, CFG.mem_bus_bytes, options=PGO, cache=tmp_path,
                              training=_training("raise SystemExit(3)", key="fails"))
    with pytest.raises(HwError, match=r"PGO training run \(writes nothing\) wrote no profile"):
        build_harness_library(verilog, CFG.mem_bus_bytes, options=PGO, cache=tmp_path,
                              training=_training("pass", key="writes nothing"))
    assert not list(tmp_path.glob("harness-*.tmp*"))  # failed builds leave no directory


def test_library_option_checks_the_file(tmp_path):
    from tessera.errors import DeviceError

    with pytest.raises(DeviceError, match="library must be a built harness library"):
        VerilatorDevice(CFG, 1 << 20, library=tmp_path / "missing.so")


@pytest.mark.parametrize("preset", ["default", "ulx3s"])
def test_training_workload_is_race_free_on_fsim(preset):
    with open_device("fsim", preset, mem_bytes=1 << 24) as dev:
        assert train(dev, rounds=2) > 10_000  # a race or a bad field raises instead
