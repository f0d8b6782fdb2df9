"""The ``verilator`` device kind: the generated RTL, Verilated, behind the Device protocol.

The core's Verilog (``tessera.hw.verilog.generate_verilog``) is compiled together with the native
harness (``sim/native/harness.cpp``: AXI4 DRAM model, AXI4-Lite master, run-until-done) into a
shared library, cached by content (``tessera.sim.verilator_build``), and driven through ctypes.
Device memory lives in the harness; host reads and writes go straight to it through a numpy view.
"""

from __future__ import annotations

import ctypes
import dataclasses
import time
from pathlib import Path

import numpy as np

from tessera.config import Config
from tessera.driver.base import DEFAULT_MEM_BYTES, Device, RunStats
from tessera.errors import DeviceError, HwError
from tessera.regs import CONTROL_START, COUNTER_BASE, COUNTERS, ERROR_TEXT, STATUS_ERROR, Reg
from tessera.sim.verilator_build import BuildOptions, build_harness_library, core_verilog

__all__ = ["VerilatorDevice", "DEFAULT_TIMEOUT_CYCLES", "load_harness", "harness_library"]

DEFAULT_TIMEOUT_CYCLES = 50_000_000
"""Cycle limit of a run when ``timeout_cycles`` is not given (minutes of simulation)."""

_STATUS_TEXT = {1: "timeout", 2: "DMA outside allocated memory", 3: "AXI protocol violation",
                4: "register access not answered"}

_LIBS: dict[Path, ctypes.CDLL] = {}


def load_harness(path: Path) -> ctypes.CDLL:
    """Load a harness library built by :func:`build_harness_library` and declare its C API."""
    path = Path(path)
    if path in _LIBS:
        return _LIBS[path]
    lib = ctypes.CDLL(str(path))
    vp, u8p, u32p, u64p = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8),
                           ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint64))
    u32, u64, c_int = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    sigs = {
        "th_create": ([u64, ctypes.c_char_p], vp),
        "th_destroy": ([vp], None),
        "th_mem": ([vp], u8p),
        "th_mem_size": ([vp], u64),
        "th_cycle": ([vp], u64),
        "th_bus_bytes": ([], u32),
        "th_one_eval": ([], c_int),
        "th_has_trace": ([], c_int),
        "th_set_dram": ([vp, u32, ctypes.c_double], None),
        "th_clear_ranges": ([vp], None),
        "th_add_range": ([vp, u64, u64], None),
        "th_reset": ([vp], None),
        "th_reg_write": ([vp, u32, u32], c_int),
        "th_reg_read": ([vp, u32, u32p], c_int),
        "th_run": ([vp, u32, u32, u64, u64p], c_int),
        "th_message": ([vp], ctypes.c_char_p),
        "th_flush_trace": ([vp], None),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    _LIBS[path] = lib
    return lib


class VerilatorDevice(Device):
    """The RTL core, cycle-accurate, with a DRAM model.

    ``read_latency`` is the DRAM's cycles from a read request to its first data beat;
    ``beats_per_cycle`` (0 < x <= 1) throttles each data channel's bandwidth. ``trace`` names an
    FST file that receives a waveform of everything the device does (a separate, slower build).
    ``build_dir`` overrides the build cache directory and ``build_options`` the Verilator and
    C++ options (:class:`~tessera.sim.verilator_build.BuildOptions`; ``trace`` is set from
    ``trace``, and a traced build is never profile-guided). A profile-guided build
    (``pgo=True``) is trained on :mod:`tessera.driver.verilator_pgo`'s workload. ``verilog``
    replaces the generated core (tests use it to run the harness against a stand-in design with
    the same ports); ``library`` uses an already built harness library instead of building one
    (the PGO training run does).
    """

    kind = "verilator"

    def __init__(self, config: Config, mem_bytes: int = DEFAULT_MEM_BYTES, *,
                 read_latency: int = 16, beats_per_cycle: float = 1.0,
                 trace: str | Path | None = None, build_dir: str | Path | None = None,
                 build_options: BuildOptions | None = None, verilog: str | None = None,
                 library: str | Path | None = None):
        super().__init__(config, mem_bytes)
        if isinstance(read_latency, bool) or not isinstance(read_latency, int) or not (
                1 <= read_latency <= 100_000):
            raise DeviceError(f"read_latency must be an integer in [1, 100000] cycles, not "
                              f"{read_latency!r}")
        if isinstance(beats_per_cycle, bool) or not isinstance(beats_per_cycle, (int, float)) \
                or not 0 < beats_per_cycle <= 1:
            raise DeviceError(f"beats_per_cycle must be in (0, 1], not {beats_per_cycle!r}")
        if build_options is not None and not isinstance(build_options, BuildOptions):
            raise DeviceError(f"build_options must be a BuildOptions, not {build_options!r}")
        if library is not None:
            lib_path = Path(library)
            if not lib_path.is_file():
                raise DeviceError(f"library must be a built harness library, not {library!r} "
                                  f"(no such file)")
        else:
            lib_path = self._build(config, trace, build_dir, build_options, verilog)
        self._lib = load_harness(lib_path)
        if self._lib.th_bus_bytes() != config.mem_bus_bytes:
            raise DeviceError(f"harness library {lib_path} was built for a "
                              f"{self._lib.th_bus_bytes()}-byte bus, not {config.mem_bus_bytes}")
        trace_arg = str(Path(trace).resolve()).encode() if trace is not None else None
        self._h = self._lib.th_create(self.mem_bytes, trace_arg)
        if not self._h:
            raise DeviceError(f"cannot allocate {self.mem_bytes} bytes of device memory")
        self.trace = trace
        self.read_latency, self.beats_per_cycle = read_latency, float(beats_per_cycle)
        self._lib.th_set_dram(self._h, read_latency, self.beats_per_cycle)
        size = self._lib.th_mem_size(self._h)
        ptr = self._lib.th_mem(self._h)
        self._mem = np.ctypeslib.as_array(ptr, shape=(size,))
        self.last_error: DeviceError | None = None

    @staticmethod
    def _build(config: Config, trace, build_dir, build_options: BuildOptions | None,
               verilog: str | None) -> Path:
        return harness_library(config, trace=trace, build_dir=build_dir,
                               build_options=build_options, verilog=verilog)

    # -- memory -------------------------------------------------------------------------------

    def _mem_write(self, addr: int, data: bytes | np.ndarray) -> None:
        src = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
        self._mem[addr:addr + src.size] = src

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        return self._mem[addr:addr + nbytes].tobytes()

    def _host_memory(self) -> np.ndarray | None:
        return self._mem


    # -- registers ----------------------------------------------------------------------------

    def _check_status(self, status: int, what: str) -> None:
        if status:
            msg = self._lib.th_message(self._h).decode(errors="replace")
            raise DeviceError(f"{what}: {_STATUS_TEXT.get(status, status)}: {msg}")

    def _write_reg(self, offset: int, value: int) -> None:
        if offset == Reg.CONTROL and value & CONTROL_START:
            self._set_ranges()
        st = self._lib.th_reg_write(self._h, offset, value)
        self._check_status(st, f"write of register {offset:#x}")

    def _read_reg(self, offset: int) -> int:
        out = ctypes.c_uint32()
        st = self._lib.th_reg_read(self._h, offset, ctypes.byref(out))
        self._check_status(st, f"read of register {offset:#x}")
        return out.value

    # -- runs ---------------------------------------------------------------------------------

    def _set_ranges(self) -> None:
        self._lib.th_clear_ranges(self._h)
        for buf in self.allocator.blocks():
            self._lib.th_add_range(self._h, buf.addr, buf.end)

    def _run(self, insn_addr: int, insn_count: int, timeout_cycles: int | None) -> RunStats:
        limit = DEFAULT_TIMEOUT_CYCLES if timeout_cycles is None else int(timeout_cycles)
        self._set_ranges()
        cycles = ctypes.c_uint64()
        t0 = time.perf_counter()
        st = self._lib.th_run(self._h, insn_addr, insn_count, limit, ctypes.byref(cycles))
        wall = time.perf_counter() - t0
        if self.trace is not None:
            self._lib.th_flush_trace(self._h)
        if st:
            msg = self._lib.th_message(self._h).decode(errors="replace")
            if st == 1:
                text = (f"run of {insn_count} instructions at {insn_addr:#x} timed out after "
                        f"{cycles.value} cycles; the core was reset ({msg})")
            else:
                text = (f"run of {insn_count} instructions at {insn_addr:#x} stopped: "
                        f"{_STATUS_TEXT.get(st, st)}: {msg}; the core was reset")
            self.last_error = DeviceError(text)
            raise self.last_error
        status = self.read_reg(Reg.CONTROL)
        counters = self._read_counters()
        cyc = self.read_reg(Reg.CYCLES_LO) | (self.read_reg(Reg.CYCLES_HI) << 32)
        if status & STATUS_ERROR:
            code, pc = self.read_reg(Reg.ERROR_CODE), self.read_reg(Reg.ERROR_PC)
            what = ERROR_TEXT.get(code, "unknown error code")
            self.last_error = DeviceError(
                f"device error {code} ({what}) at instruction {pc} (run of {insn_count} "
                f"instructions at {insn_addr:#x})", code=code, pc=pc)
            raise self.last_error
        return RunStats(cycles=cyc, counters=counters, wall_seconds=wall)

    def _read_counters(self) -> dict[str, int]:
        return {name: self.read_reg(COUNTER_BASE + 4 * i)
                for i, (name, _, _) in enumerate(COUNTERS)}

    @property
    def cycle(self) -> int:
        """Cycles simulated since the device was created (including register accesses)."""
        return int(self._lib.th_cycle(self._h))

    def close(self) -> None:
        if not self._closed and getattr(self, "_h", None):
            self._mem = None
            self._lib.th_destroy(self._h)
            self._h = None
        super().close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass


def harness_library(config: Config, *, trace: str | Path | None = None,
                    build_dir: str | Path | None = None,
                    build_options: BuildOptions | None = None,
                    verilog: str | None = None) -> Path:
    """The harness library a :class:`VerilatorDevice` with these arguments runs (built, or
    taken from the cache); its path can be given to other devices as ``library=``."""
    from tessera.driver.verilator_pgo import training

    if build_options is not None and not isinstance(build_options, BuildOptions):
        raise DeviceError(f"build_options must be a BuildOptions, not {build_options!r}")
    options = build_options or BuildOptions()
    options = dataclasses.replace(options, trace=trace is not None,
                                  pgo=options.pgo and trace is None)
    try:
        return build_harness_library(
            _core_verilog(config) if verilog is None else verilog, config.mem_bus_bytes,
            options=options, cache=Path(build_dir) if build_dir is not None else None,
            training=training(config) if options.pgo else None)
    except HwError as exc:
        raise DeviceError(f"cannot build the Verilator model: {exc}") from exc


def _core_verilog(config: Config) -> str:
    try:
        return core_verilog(config)
    except ImportError as exc:
        raise DeviceError(f"the RTL generator tessera.hw.verilog is not available: {exc}") \
            from exc
    except HwError as exc:
        raise DeviceError(f"cannot generate the core's Verilog: {exc}") from exc
