"""The native harness and the build cache, exercised against the stand-in design (standin.py).

These do not depend on the real core: they check the DRAM model (data, latency, throttling,
allocation checks, the 4 KiB rule), the AXI-Lite master, timeouts with reset, error registers,
FST tracing and the cache/lock of ``tessera.sim.verilator_build``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from standin import DST, standin_verilog

from tessera.config import Config
from tessera.driver.verilator import VerilatorDevice
from tessera.errors import DeviceError, HwError
from tessera.regs import Reg, counter_offset
from tessera.sim.verilator_build import build_harness_library, cached_build_dir

CFG = Config.preset("tiny")


@pytest.fixture(scope="module")
def verilog() -> str:
    return standin_verilog(CFG.mem_bus_bits)


def _copy(dev: VerilatorDevice, nbytes: int, seed: int = 0, dst_offset: int = 0):
    src, dst = dev.alloc(nbytes), dev.alloc(nbytes + dst_offset)
    data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    dev.write(src.addr, data)
    dev.write_reg(DST, dst.addr + dst_offset)
    stats = dev.run(src.addr, nbytes // 16)
    return data, dev.read(dst.addr + dst_offset, nbytes), stats


@pytest.mark.parametrize("latency,bpc", [(1, 1.0), (16, 1.0), (40, 0.5), (3, 0.3)])
def test_copy_through_dram_model(verilog, latency, bpc):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog, read_latency=latency,
                         beats_per_cycle=bpc) as dev:
        data, got, stats = _copy(dev, 3 * 4096 + 512, seed=latency)
        assert got == data.tobytes()
        assert stats.counters["dram_read_bytes"] == data.size
        assert stats.counters["dram_write_bytes"] == data.size
        # The stand-in is strictly sequential: each burst pays the read latency, and every data
        # beat is limited by the throttle, so cycles grow with both.
        beats = data.size // CFG.mem_bus_bytes
        assert stats.cycles >= 2 * beats / bpc * 0.9
        assert stats.cycles >= (beats // 16) * latency


def test_unaligned_destination_and_registers(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as dev:
        data, got, _ = _copy(dev, 4096, seed=3, dst_offset=8 * 37)  # bursts split at 4 KiB
        assert got == data.tobytes()
        dev.write_reg(Reg.INSN_COUNT, 0x1234)
        assert dev.read_reg(Reg.INSN_COUNT) == 0x1234
        assert dev.read_reg(Reg.CONTROL) & 0b110 == 0b010  # done, no error


def test_timeout_resets_and_device_stays_usable(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as dev:
        src = dev.alloc(4096)
        dev.write_reg(DST, 0)  # the stand-in waits forever
        t0 = time.perf_counter()
        with pytest.raises(DeviceError, match="timed out") as info:
            dev.run(src.addr, 4, timeout_cycles=5000)
        assert info.value.code is None and info.value.pc is None
        assert time.perf_counter() - t0 < 5
        assert dev.read_reg(Reg.CONTROL) == 0  # reset: not busy, not done
        data, got, _ = _copy(dev, 2048, seed=5)
        assert got == data.tobytes()


def test_dma_outside_allocation_is_reported_with_address(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as dev:
        src, dst = dev.alloc(8192), dev.alloc(4096)
        dev.write_reg(DST, dst.addr)
        with pytest.raises(DeviceError, match=rf"DMA write of bytes \[{dst.end:#x}") as info:
            dev.run(src.addr, 8192 // 16)
        assert info.value.code is None
        dev.free(dst)  # the source is now read by a burst that ends in a freed page
        other = dev.alloc(8192)
        dev.write_reg(DST, other.addr)
        dev.write(src.addr, bytes(range(256)) * 32)
        dev.run(src.addr, 8192 // 16)
        assert dev.read(other.addr, 8192) == bytes(range(256)) * 32


def test_read_outside_allocation(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as dev:
        src, dst = dev.alloc(8192), dev.alloc(8192)
        dev.free(src)
        keep = dev.alloc(4096)  # reuses the first page only
        assert keep.addr == src.addr
        dev.write_reg(DST, dst.addr)
        # The run's instruction fetch range is checked on the host first ...
        with pytest.raises(DeviceError, match="instruction fetch"):
            dev.run(keep.addr, 8192 // 16)
        # ... but a register-started run is only checked by the DRAM model.
        dev.write_reg(Reg.INSN_ADDR, keep.addr)
        dev.write_reg(Reg.INSN_COUNT, 8192 // 16)
        with pytest.raises(DeviceError, match=rf"DMA read of bytes \[{keep.end:#x}"):
            dev.write_reg(Reg.CONTROL, 1)
            for _ in range(5000):
                dev.read_reg(Reg.CONTROL)
        assert dev.read_reg(Reg.CONTROL) == 0  # the core was reset


def test_error_registers(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as dev:
        src = dev.alloc(0xDEAD * 16)
        dev.write_reg(DST, src.addr)
        with pytest.raises(DeviceError) as info:
            dev.run(src.addr, 0xDEAD)
        assert (info.value.code, info.value.pc) == (1, 7)
        assert dev.read_reg(Reg.CONTROL) & 0b110 == 0b110
        data, got, _ = _copy(dev, 1024, seed=9)
        assert got == data.tobytes()
        assert dev.read_reg(Reg.ERROR_CODE) == 0


def test_burst_across_4k_is_a_protocol_error():
    bad = standin_verilog(CFG.mem_bus_bits, cross_4k=True)
    with VerilatorDevice(CFG, 1 << 22, verilog=bad) as dev:
        src, dst = dev.alloc(8192), dev.alloc(8192)
        dev.write_reg(DST, dst.addr + 8)  # room in the destination page keeps AW legal
        with pytest.raises(DeviceError, match="crosses a 4 KiB boundary"):
            dev.run(src.addr + 64, (8192 - 64) // 16)


def test_counters_are_read_by_name(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as dev:
        _, _, stats = _copy(dev, 512)
        assert stats.counters["dram_read_bytes"] == dev.read_reg(
            counter_offset("dram_read_bytes"))
        with pytest.raises(DeviceError, match="register offset"):
            dev.read_reg(0x101)


def test_fst_trace(verilog, tmp_path):
    path = tmp_path / "run.fst"
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog, trace=path) as dev:
        data, got, _ = _copy(dev, 256)
        assert got == data.tobytes()
    assert path.exists() and path.stat().st_size > 100
    assert path.read_bytes()[:1] == b"\x00"  # FST header block type


def test_bad_options(verilog):
    with pytest.raises(DeviceError, match="read_latency"):
        VerilatorDevice(CFG, 1 << 22, verilog=verilog, read_latency=0)
    with pytest.raises(DeviceError, match="beats_per_cycle"):
        VerilatorDevice(CFG, 1 << 22, verilog=verilog, beats_per_cycle=2)
    with pytest.raises(HwError, match="module"):
        build_harness_library("module other(); endmodule", 8)


def test_cache_hit_and_lock(verilog, tmp_path):
    t0 = time.perf_counter()
    a = build_harness_library(verilog, CFG.mem_bus_bytes)
    b = build_harness_library(verilog, CFG.mem_bus_bytes)
    assert a == b and time.perf_counter() - t0 < 60
    calls = []

    def slow_build(out):
        calls.append(1)
        time.sleep(0.3)
        (out / "x").write_text("built")

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        cached_build_dir("locktest", {"n": 1}, slow_build, cache=tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert (results[0] / "x").read_text() == "built"


def test_two_devices_are_independent(verilog):
    with VerilatorDevice(CFG, 1 << 22, verilog=verilog) as d1, \
            VerilatorDevice(CFG, 1 << 22, verilog=verilog) as d2:
        x1, g1, _ = _copy(d1, 512, seed=1)
        x2, g2, _ = _copy(d2, 512, seed=2)
        assert g1 == x1.tobytes() and g2 == x2.tobytes() and g1 != g2
