"""Driver protocol details and the command line."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tessera import isa
from tessera.cli import main
from tessera.config import Config
from tessera.driver import BACKENDS, open_device
from tessera.errors import DeviceError
from tessera.isa import FinishInsn, GemmInsn


def test_allocator_is_page_aligned_and_reuses_freed_space():
    dev = open_device("fsim", "tiny", mem_bytes=1 << 20)
    a, b = dev.alloc(10), dev.alloc(5000)
    assert a.addr % 4096 == 0 and b.addr % 4096 == 0 and b.addr >= a.addr + 4096
    dev.free(a)
    c = dev.alloc(100)
    assert c.addr == a.addr
    with pytest.raises(DeviceError, match="not the start of an allocated block"):
        dev.free(a.__class__(a.addr + 8, 1))
    with pytest.raises(DeviceError, match="out of device memory"):
        dev.alloc(2 << 20)
    with pytest.raises(DeviceError, match="positive integer"):
        dev.alloc(0)


def test_host_access_outside_allocations_raises():
    dev = open_device("fsim", "tiny")
    buf = dev.alloc(4096)
    dev.write(buf.addr, np.arange(16, dtype=np.int32))
    assert np.frombuffer(dev.read(buf.addr, 64), np.int32).tolist() == list(range(16))
    with pytest.raises(DeviceError, match="write: bytes"):
        dev.write(buf.addr + 4090, b"12345678")
    with pytest.raises(DeviceError, match="read: bytes"):
        dev.read(buf.addr + 8192, 4)
    with pytest.raises(DeviceError, match="bytes or a numpy array"):
        dev.write(buf.addr, [1, 2, 3])


def test_devices_are_independent_and_closable():
    cfg = Config.preset("tiny")
    d1, d2 = open_device("fsim", cfg), open_device("fsim", cfg)
    b1, b2 = d1.alloc(64), d2.alloc(64)
    d1.write(b1.addr, b"\x01" * 64)
    assert d2.read(b2.addr, 64) == b"\0" * 64
    with d1:
        pass
    with pytest.raises(DeviceError, match="closed"):
        d1.read(b1.addr, 1)


def test_open_device_rejects_unknown_kind_and_bad_run_arguments():
    with pytest.raises(DeviceError, match="unknown device kind 'gpu'"):
        open_device("gpu", "tiny")
    assert set(BACKENDS) >= {"fsim", "verilator"}
    dev = open_device("fsim", "tiny")
    buf = dev.alloc(64)
    with pytest.raises(DeviceError, match="16-byte aligned"):
        dev.run(buf.addr + 8, 1)
    with pytest.raises(DeviceError, match="instruction fetch"):
        dev.run(buf.addr, 1000)


def test_registers_start_a_run_and_report_status():
    cfg = Config.preset("tiny")
    dev = open_device("fsim", cfg)
    buf = dev.alloc(4096)
    dev.write(buf.addr, isa.to_bytes([GemmInsn(reset=1, uop_end=2), FinishInsn()], cfg))
    dev.write_reg(0x08, buf.addr)
    dev.write_reg(0x04, 2)
    dev.write_reg(0x00, 1)
    assert dev.read_reg(0x00) == 0b010
    assert dev.read_reg(0x20 + 4 * 8) == 2  # gemm_reset_steps
    dev.write(buf.addr, isa.to_bytes([GemmInsn(uop_end=cfg.uop_depth + 1)], cfg))
    dev.write_reg(0x04, 1)
    dev.write_reg(0x00, 1)
    assert dev.read_reg(0x00) == 0b110
    assert (dev.read_reg(0x0C), dev.read_reg(0x10)) == (3, 0)
    with pytest.raises(DeviceError, match="no register"):
        dev.read_reg(0x200)


def test_cli_disasm_and_config(tmp_path, capsys):
    cfg = Config.preset("tiny")
    path = tmp_path / "prog.bin"
    path.write_bytes(isa.to_bytes([GemmInsn(reset=1, uop_end=2, push_next=1), FinishInsn()],
                                  cfg))
    assert main(["disasm", str(path), "--config", "tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["0", "GEMM", "reset"] and "push_next" in out[0]
    assert out[1].split() == ["1", "FINISH"]
    assert main(["config", "tiny"]) == 0
    assert Config.from_json(capsys.readouterr().out) == cfg
    path.write_bytes(b"\0" * 15)
    assert main(["disasm", str(path)]) == 2
    assert "multiple of 16 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "profile"])
def test_cli_device_kinds_come_from_the_driver_registry(command, capsys):
    assert main([command, "--help"]) == 0
    assert "{" + ",".join(BACKENDS) + "}" in capsys.readouterr().out.replace("\n", "")
    # a usage error (exit code 1), before the model file is even looked at
    assert main([command, "missing.tsr", "--input", "x.npy", "--device", "fsimm"]) == 1
    assert "invalid choice: 'fsimm'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--read-latency", "-5", r"read_latency must be an integer in \[1, 100000\] cycles, not -5"),
    ("--read-latency", "2.5", r"read_latency must be an integer, not '2.5'"),
    ("--beats-per-cycle", "2", r"beats_per_cycle must be in \(0, 1\], not 2.0"),
    ("--beats-per-cycle", "nan", r"beats_per_cycle must be in \(0, 1\], not nan"),
])
def test_cli_dram_knobs_are_usage_errors(flag, value, message, capsys):
    """Checked by the cycle model's own rules while parsing: exit 1, before any file is read."""
    assert main(["run", "missing.tsr", "--input", "x.npy", flag, value]) == 1
    assert re.search(rf"argument {flag}: {message}", capsys.readouterr().err)


def test_cli_dram_knobs_only_for_devices_that_take_them(capsys):
    assert main(["run", "missing.tsr", "--input", "x.npy", "--device", "soc-sim",
                 "--read-latency", "3"]) == 2  # before the (missing) model is read
    assert ("--read-latency does not apply to device 'soc-sim' (only to fsim, verilator)"
            in capsys.readouterr().err)
