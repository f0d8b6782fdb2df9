"""The board SoC in co-simulation (``soc-sim``): the same SoC Verilog as the ULX3S bitstream with
LiteDRAM's SDRAM model behind the real controller, driven over the host link by the same
host-driver code as a board. Random programs and a compiled model equal fsim bit for bit;
device errors, timeouts and injected link faults are recovered from."""

from __future__ import annotations

import numpy as np
import pytest
from rtlutil import free_all, memory_diff, run

import tessera
from tessera import isa
from tessera.compiler import zoo
from tessera.config import Config
from tessera.driver import open_device
from tessera.driver.link import FaultyPort
from tessera.errors import DeviceError
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode
from tessera.sim.progen import random_program

CFG = Config.preset("ulx3s")


@pytest.fixture(scope="module")
def soc():
    dev = open_device("soc-sim", CFG)
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def fsim(soc):
    with open_device("fsim", CFG, mem_bytes=soc.mem_bytes) as dev:
        yield dev


def _same_as_fsim(soc, fsim, seed: int, rounds: int) -> None:
    progs = [random_program(CFG, np.random.default_rng(seed), rounds=rounds) for _ in range(2)]
    progs[0].place(soc)
    progs[1].place(fsim)
    got = run(soc, progs[0].insn_addr, progs[0].insn_count, 2_000_000)
    want = run(fsim, progs[1].insn_addr, progs[1].insn_count, 2_000_000)
    where = f"seed={seed} rounds={rounds}"
    assert want.error is None, f"progen made a bad program ({where}): {want.error}"
    assert got.error is None, f"soc-sim failed where fsim succeeded ({where}): {got.error}"
    diff = memory_diff(soc, fsim)
    assert not diff, f"DRAM differs ({where}):\n" + "\n".join(diff)
    assert got.counters == want.counters, f"counters differ ({where})"
    free_all(soc)
    free_all(fsim)


def test_soc_reports_what_it_is(soc):
    info = soc.info
    assert info.dram_bytes == soc.mem_bytes == 32 << 20
    assert info.core_clk_hz == CFG.clock_mhz * 1e6
    assert soc.read_reg(0x04) == soc.read_reg(0x04)
    with pytest.raises(DeviceError, match="register offset|no register"):
        soc.read_reg(0x100)


@pytest.mark.parametrize("seed", range(4))
def test_soc_random_programs_equal_fsim(soc, fsim, seed):
    _same_as_fsim(soc, fsim, 700 + seed, rounds=2 + seed)


def test_soc_unaligned_host_copies(soc):
    buf = soc.alloc(8192)
    rng = np.random.default_rng(3)
    ref = bytearray(rng.bytes(8192))
    soc.write(buf.addr, bytes(ref))
    for _ in range(8):
        lo = int(rng.integers(0, 8000))
        n = int(rng.integers(1, 8192 - lo))
        chunk = rng.bytes(n)
        soc.write(buf.addr + lo, chunk)
        ref[lo:lo + n] = chunk
        a = int(rng.integers(0, 8191))
        b = int(rng.integers(a + 1, 8193))
        assert soc.read(buf.addr + a, b - a) == bytes(ref[a:b])
    assert soc.read(buf.addr, 8192) == bytes(ref)
    soc.free(buf)


def test_soc_device_errors_propagate_and_device_recovers(soc, fsim):
    prog = soc.alloc(4096)
    bad = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0),
           MemInsn(opcode=Opcode.LOAD, memory_type=MemType.OUT, x_size=1, y_size=1),  # error 2
           FinishInsn()]
    fprog = fsim.alloc(4096)
    for dev, addr in ((soc, prog.addr), (fsim, fprog.addr)):
        dev.write(addr, isa.to_bytes(bad, CFG))
        with pytest.raises(DeviceError) as err:
            dev.run(addr, len(bad))
        assert (err.value.code, err.value.pc) == (2, 1), dev.kind
    fsim.free(fprog)
    # A run far longer than its cycle limit: timed out, the core is reset through the link.
    long = [GemmInsn(reset=1, uop_end=1, iter_out=8000, iter_in=8000), FinishInsn()]
    soc.write(prog.addr, isa.to_bytes(long, CFG))
    with pytest.raises(DeviceError, match="timed out") as err:
        soc.run(prog.addr, len(long), timeout_cycles=20_000)
    assert err.value.code is None
    soc.free(prog)
    _same_as_fsim(soc, fsim, 800, rounds=3)


def test_soc_recovers_from_link_faults(soc, fsim):
    """Dropped and corrupted bytes in both directions: every request is retried until it gets
    through, writes are not repeated, and the results are still fsim's."""
    clean, link = soc.port, soc.link
    faulty = FaultyPort(clean, drop=1e-4, corrupt=1e-4, seed=11)
    link.port, saved = faulty, (link.timeout, link.stats)
    link.timeout, link.retries = 0.5, 30
    try:
        for seed in (900, 901):
            _same_as_fsim(soc, fsim, seed, rounds=3)
        # Bulk copies both ways, so that every kind of fault hits both directions.
        buf = soc.alloc(1 << 15)
        data = np.random.default_rng(5).bytes(1 << 15)
        soc.write(buf.addr, data)
        for _ in range(2):
            assert soc.read(buf.addr, 1 << 15) == data
        soc.free(buf)
    finally:
        link.port, link.timeout, link.retries = clean, saved[0], 8
    for direction in ("out", "in"):
        assert faulty.dropped[direction] > 0 and faulty.corrupted[direction] > 0, direction
    assert link.stats.resends > 0 and link.stats.naks > 0 and link.stats.bad_frames > 0


def test_soc_compiled_model_equals_fsim():
    """A compiled residual net on the co-simulated SoC, through the public API."""
    proto = zoo.resnet_tiny()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(21)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    model = tessera.compile(proto, config=CFG, calibration=cal)
    want = model.run(x, device="fsim")
    got, prof = model.run(x, device="soc-sim", profile=True)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    assert prof.totals()["cycles"] > 0
    model.close()


def test_soc_dma_outside_allocated_memory_is_refused(soc):
    """As on every kind (spec-notes 10): no byte moves, DeviceError names the instruction."""
    prog, data = soc.alloc(4096), soc.alloc(4096)
    stray = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0),
             MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, dram_base=data.addr // 8,
                     y_size=2, x_size=4, x_stride=1000),  # second row beyond `data`
             FinishInsn()]
    soc.write(prog.addr, isa.to_bytes(stray, CFG))
    with pytest.raises(DeviceError, match="LOAD INP at instruction 1") as err:
        soc.run(prog.addr, len(stray))
    assert err.value.code is None
    soc.free(prog)
    soc.free(data)


@pytest.mark.slow
def test_soc_with_a_separate_core_clock_equals_fsim():
    """The core in its own clock domain (AXI4 and AXI4-Lite crossings), as when the core
    closes timing faster than the SDRAM side: a second SoC build, hence slow."""
    import dataclasses

    from tessera.hw.boards.ulx3s import ULX3S

    board = dataclasses.replace(ULX3S, core_clk_hz=40e6)
    with open_device("soc-sim", CFG, board=board) as soc, \
            open_device("fsim", CFG, mem_bytes=32 << 20) as fsim:
        assert soc.info.core_clk_hz == 40_000_000
        for seed in range(4):
            _same_as_fsim(soc, fsim, 1000 + seed, rounds=4)
