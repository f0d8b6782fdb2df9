"""Compile LLVM IR for the host CPU and call the result on numpy arrays.

One :class:`Engine` owns a host target machine (host CPU name and features, opt level 3) and an
optimisation pipeline from LLVM's new pass manager with loop and SLP vectorisation enabled. It
turns LLVM IR text into machine code, caching twice:

- in memory, by a hash of the IR text (a second request for the same IR returns the same
  :class:`CompiledFunction` without touching LLVM);
- on disk, the object code under ``cache_dir`` (``$TESSERA_CACHE/llvm``, else
  ``~/.cache/tessera/llvm``), keyed by the IR hash, the target and the pipeline settings, so a new
  process loads machine code instead of optimising and generating it again.

Every kernel entry point has the signature ``void name(ptr, ptr, ...)``: one pointer per input
array then one per output array, all C-contiguous. :attr:`Engine.stats` counts what happened
(``compiles`` is the number of LLVM optimise + codegen runs), which tests use to prove the caches
work.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from tessera.errors import CompileError

__all__ = ["CompiledFunction", "Engine", "EngineStats", "default_cache_dir", "default_engine"]

OPT_LEVEL = 3
# Bump when the pipeline settings or the object format we write change, so stale objects miss.
_CACHE_FORMAT = "tessera-llvm-obj-1"
_MAGIC = b"TSRLLVMO1\0"

_init_lock = threading.Lock()
_initialised = False


def _initialise_llvm() -> None:
    # llvmlite >= 0.44 initialises the core itself (llvm.initialize() now raises); the native
    # target and its assembly printer still have to be registered once per process.
    global _initialised
    with _init_lock:
        if not _initialised:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialised = True


def default_cache_dir() -> Path:
    """``$TESSERA_CACHE/llvm`` when the variable is set, else ``~/.cache/tessera/llvm``."""
    root = os.environ.get("TESSERA_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tessera"
    return base / "llvm"


@dataclass
class EngineStats:
    """What an engine has done since it was created (or since :meth:`Engine.clear_memory`)."""

    compiles: int = 0  # LLVM optimisation + code generation runs
    disk_hits: int = 0  # object code loaded from the disk cache
    memory_hits: int = 0  # requests answered from the in-memory cache


class CompiledFunction:
    """A kernel in executable memory, callable with numpy arrays (one pointer per argument)."""

    def __init__(self, name: str, n_args: int, address: int, keepalive: object, key: str):
        self.name = name
        self.n_args = n_args
        self.address = address
        self.key = key
        self._keepalive = keepalive  # the execution engine that owns the code
        proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * n_args))
        self._cfunc = proto(address)

    def __call__(self, *arrays: np.ndarray) -> None:
        """Run the kernel on C-contiguous arrays; shapes and dtypes are the caller's contract."""
        if len(arrays) != self.n_args:
            raise CompileError(
                f"kernel {self.name!r} takes {self.n_args} arrays, not {len(arrays)}"
            )
        self._cfunc(*[a.ctypes.data for a in arrays])

    def call_pointers(self, *pointers: int) -> None:
        """Run the kernel on raw addresses (no checks at all)."""
        self._cfunc(*pointers)


class Engine:
    """Host-CPU code generator with an in-memory and an on-disk cache of compiled kernels."""

    def __init__(self, cache_dir: str | Path | None = None, disk_cache: bool = True):
        _initialise_llvm()
        self.cpu = llvm.get_host_cpu_name()
        self.features = llvm.get_host_cpu_features().flatten()
        self.triple = llvm.get_process_triple()
        self._target = llvm.Target.from_triple(self.triple)
        self._tm = self._make_target_machine(jit=False)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.disk_cache = disk_cache
        self.stats = EngineStats()
        self._lock = threading.RLock()
        self._functions: dict[str, CompiledFunction] = {}

    # -- public --------------------------------------------------------------------------------

    def compile(self, ir_text: str, name: str, n_args: int) -> CompiledFunction:
        """Machine code for function ``name`` of module ``ir_text``, from a cache when possible."""
        key = self.cache_key(ir_text, name, n_args)
        with self._lock:
            fn = self._functions.get(key)
            if fn is not None:
                self.stats.memory_hits += 1
                return fn
            obj = self._read_object(key)
            if obj is not None:
                try:
                    fn = self._load(obj, name, n_args, key)
                except CompileError as exc:
                    warnings.warn(f"ignoring unusable LLVM cache entry {key}: {exc}",
                                  stacklevel=2)
                    fn = None  # rebuilt and overwritten below
                else:
                    self.stats.disk_hits += 1
            if fn is None:
                obj = self._codegen(ir_text, name, n_args)
                self.stats.compiles += 1
                self._write_object(key, obj)
                fn = self._load(obj, name, n_args, key)
            self._functions[key] = fn
            return fn

    def optimised_ir(self, ir_text: str) -> str:
        """The IR after the engine's optimisation pipeline (for inspection and debugging)."""
        return str(self._optimise(ir_text))

    def assembly(self, ir_text: str) -> str:
        """Host assembly for ``ir_text`` after optimisation (for inspection and debugging)."""
        return self._tm.emit_assembly(self._optimise(ir_text))

    def cache_key(self, ir_text: str, name: str, n_args: int) -> str:
        """Hash of everything the machine code depends on: IR, entry point, target, pipeline."""
        h = hashlib.sha256()
        for part in (_CACHE_FORMAT, llvmlite.__version__, self.triple, self.cpu, self.features,
                     str(OPT_LEVEL), name, str(n_args), ir_text):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def clear_memory(self) -> None:
        """Forget in-memory kernels (objects already handed out stay valid) and reset stats."""
        with self._lock:
            self._functions.clear()
            self.stats = EngineStats()

    # -- internals -----------------------------------------------------------------------------

    def _make_target_machine(self, jit: bool) -> llvm.TargetMachine:
        return self._target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=OPT_LEVEL, reloc="default",
            codemodel="jitdefault", jit=jit,
        )

    def _parse(self, ir_text: str) -> llvm.ModuleRef:
        try:
            mod = llvm.parse_assembly(ir_text)
            mod.verify()
        except RuntimeError as exc:
            raise CompileError(f"invalid LLVM IR: {exc}") from None
        mod.triple = self._tm.triple
        mod.data_layout = str(self._tm.target_data)
        return mod

    def _optimise(self, ir_text: str) -> llvm.ModuleRef:
        mod = self._parse(ir_text)
        pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = True
        pto.loop_interleaving = True
        pb = llvm.create_pass_builder(self._tm, pto)
        pb.getModulePassManager().run(mod, pb)
        return mod

    def _codegen(self, ir_text: str, name: str, n_args: int) -> bytes:
        mod = self._optimise(ir_text)
        try:
            fn = mod.get_function(name)
        except NameError:
            fn = None
        if fn is None or fn.is_declaration:
            raise CompileError(f"LLVM module does not define a function named {name!r}")
        n_params = len(list(fn.arguments))
        if n_params != n_args:
            raise CompileError(f"function {name!r} takes {n_params} pointers, not {n_args}")
        return self._tm.emit_object(mod)

    def _load(self, obj: bytes, name: str, n_args: int, key: str) -> CompiledFunction:
        # One MCJIT engine per object: kernels from saved models may reuse symbol names.
        tm = self._make_target_machine(jit=True)
        empty = llvm.parse_assembly("")
        empty.triple = tm.triple
        engine = llvm.create_mcjit_compiler(empty, tm)
        try:
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            engine.finalize_object()
        except RuntimeError as exc:
            raise CompileError(f"cannot load object code for {name!r}: {exc}") from None
        address = engine.get_function_address(name)
        if not address:
            raise CompileError(f"object code does not define a function named {name!r}")
        return CompiledFunction(name, n_args, address, engine, key)

    def _object_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.o"

    def _read_object(self, key: str) -> bytes | None:
        """The cached object code, or None when absent; a damaged file is reported and ignored.

        Files are ``magic + sha256(object) + object``: LLVM must never see a truncated or
        foreign object file (loading one can crash the process).
        """
        if not self.disk_cache:
            return None
        path = self._object_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(f"cannot read LLVM cache file {path}: {exc}", stacklevel=3)
            return None
        head = len(_MAGIC) + 32
        if (len(data) <= head or not data.startswith(_MAGIC)
                or hashlib.sha256(data[head:]).digest() != data[len(_MAGIC):head]):
            warnings.warn(f"ignoring damaged LLVM cache file {path}", stacklevel=3)
            return None
        return data[head:]

    def _write_object(self, key: str, obj: bytes) -> None:
        if not self.disk_cache:
            return
        path = self._object_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + hashlib.sha256(obj).digest() + obj)
            os.replace(tmp, path)
        except OSError as exc:
            # A read-only or full cache directory must not stop compilation; the kernel still
            # runs from memory, and the next process compiles again.
            warnings.warn(f"cannot write LLVM cache file {path}: {exc}", stacklevel=3)


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine, created on first use with :func:`default_cache_dir`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
        return _default

