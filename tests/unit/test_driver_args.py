"""Host-side argument checks of the Device protocol (``driver/base.py``): every bad argument is a
DeviceError naming it, before anything touches the device; nothing is silently converted,
truncated or ignored (a negative read length used to return ``b''``)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera import isa
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.isa import FinishInsn, GemmInsn
from tessera.regs import Reg

BAD_CALLS = [
    ("read", lambda d, b: d.read(b.addr, -1), r"read length must be in \[0, \d+\), not -1"),
    ("read", lambda d, b: d.read(b.addr, 2.0), r"read length must be an integer, not 2\.0"),
    ("read", lambda d, b: d.read(b.addr, True), r"read length must be an integer, not True"),
    ("read", lambda d, b: d.read(b.addr, 1 << 40), r"read length must be in"),
    ("read", lambda d, b: d.read(float(b.addr), 4), r"read address must be an integer"),
    ("read", lambda d, b: d.read(-4096, 4), r"read address must be in \[0x0, 0x100000000\)"),
    ("read", lambda d, b: d.read(str(b.addr), 4), r"read address must be an integer"),
    ("write", lambda d, b: d.write(b.addr + 0.5, b"x"), r"write address must be an integer"),
    ("write", lambda d, b: d.write(-1, b"x"), r"write address must be in"),
    ("write", lambda d, b: d.write(b.addr, np.array([object()])), r"numeric numpy array"),
    ("alloc", lambda d, b: d.alloc(True), r"alloc size must be a positive integer, not True"),
    ("alloc", lambda d, b: d.alloc(-5), r"alloc size must be a positive integer"),
    ("alloc", lambda d, b: d.alloc(64, align=3), r"alloc align must be a positive power of two"),
    ("free", lambda d, b: d.free(float(b.addr)), r"free needs a Buffer or its address"),
    ("read_array", lambda d, b: d.read_array(b.addr, (2, -3), np.int8),
     r"shape\[1\] must be in \[0, \d+\), not -3"),
    ("read_array", lambda d, b: d.read_array(b.addr, [4], np.int8), r"shape must be a tuple"),
    ("read_array", lambda d, b: d.read_array(b.addr, (4,), object), r"fixed-size numeric"),
    ("read_array", lambda d, b: d.read_array(b.addr, (4,), "no-such-type"), r"numpy dtype"),
    ("reg", lambda d, b: d.write_reg(Reg.INSN_COUNT, 1 << 32),
     r"register value must be in \[0, 4294967296\), not 4294967296"),
    ("reg", lambda d, b: d.write_reg(Reg.INSN_COUNT, -1), r"register value must be in"),
    ("reg", lambda d, b: d.write_reg(Reg.INSN_COUNT, 3.0), r"register value must be an integer"),
    ("reg", lambda d, b: d.write_reg(0x06, 1), r"no register at offset 0x6"),
    ("reg", lambda d, b: d.read_reg(0x200), r"no register at offset 0x200"),
    ("reg", lambda d, b: d.read_reg(-4), r"no register at offset -0x4"),
    ("reg", lambda d, b: d.read_reg("0x0"), r"register offset must be an integer"),
    ("run", lambda d, b: d.run(b.addr, 1.5), r"insn_count must be an integer, not 1\.5"),
    ("run", lambda d, b: d.run(b.addr, -1), r"insn_count must be in"),
    ("run", lambda d, b: d.run(float(b.addr), 1), r"insn_addr must be an integer"),
    ("run", lambda d, b: d.run(-16, 1), r"insn_addr must be in"),
    ("run", lambda d, b: d.run(b.addr, 1, timeout_cycles=0.5), r"timeout_cycles must be an int"),
    ("run", lambda d, b: d.run(b.addr, 1, timeout_cycles=0), r"timeout_cycles must be in \[1,"),
    ("run", lambda d, b: d.run(b.addr, 1, timeout_cycles=1 << 64), r"timeout_cycles must be in"),
]


@pytest.mark.parametrize("kind, call, message", BAD_CALLS,
                         ids=[f"{k}{i}" for i, (k, _, _) in enumerate(BAD_CALLS)])
def test_bad_host_arguments_are_device_errors(kind, call, message) -> None:
    dev = open_device("fsim", "tiny", mem_bytes=1 << 20)
    buf = dev.alloc(4096)
    code = isa.to_bytes([GemmInsn(reset=1, uop_end=1), FinishInsn()], dev.config)
    dev.write(buf.addr, code)
    with pytest.raises(DeviceError, match=message):
        call(dev, buf)
    # the device is untouched and still works
    assert dev.read(buf.addr, len(code)) == code
    assert dev.run(buf.addr, 2).counters["gemm_reset_steps"] == 1


def test_numpy_integers_and_zero_lengths_are_fine() -> None:
    dev = open_device("fsim", "tiny", mem_bytes=1 << 20)
    buf = dev.alloc(64)
    dev.write(np.uint32(buf.addr), np.arange(4, dtype=np.int16))
    assert dev.read(np.int64(buf.addr), np.uint8(8)) == np.arange(4, dtype=np.int16).tobytes()
    assert dev.read(buf.addr, 0) == b""
    assert dev.read_array(buf.addr, (), np.int16) == 0
    dev.write_reg(np.int32(Reg.INSN_COUNT), np.uint32(7))
    assert dev.read_reg(Reg.INSN_COUNT) == 7
    with pytest.raises(DeviceError, match="mem_bytes must be an integer"):
        open_device("fsim", "tiny", mem_bytes=1e6)
    with pytest.raises(DeviceError, match=r"mem_bytes must be in \[1, 4294967297\)"):
        open_device("fsim", "tiny", mem_bytes=1 << 33)


@pytest.mark.parametrize("kind", ["fsim", "verilator", "soc-sim", "board"])
def test_unknown_device_options_are_named(kind) -> None:
    """An option the backend does not take is a DeviceError naming it and listing the real
    ones, before the backend is constructed (no TypeError from deep inside)."""
    with pytest.raises(DeviceError, match=rf"device kind '{kind}' has no option 'read_latncy'; "
                                          r"its options are .*\w"):
        open_device(kind, "tiny", read_latncy=30)
    with pytest.raises(DeviceError, match="unknown device kind 'fsimm'; known kinds: fsim, "
                                          "verilator, soc-sim, board"):
        open_device("fsimm", "tiny")
