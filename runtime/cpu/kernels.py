"""CPU kernels: operators the accelerator cannot run, generated as LLVM IR and compiled for the
host.

One entry point::

    kernel = kernels.get("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]},
                         [((1, 64, 56, 56), "float32")])
    (y,) = kernel(x)                     # or kernel(x, out=[y]) to write into y
    kernel.out_specs                     # [((1, 64, 28, 28), dtype('float32'))]
    kernel.description()                 # {"op", "attrs", "in_specs"}: all a file stores
    same = CpuKernel.from_description(kernel.description())

A kernel is fully determined by its *description* (operator, JSON attributes, input shapes and
dtypes): the generators of :mod:`~tessera.runtime.cpu.nn`, ``eltwise``, ``data``, ``quant``,
``misc``, ``activ``, ``compare``, ``reduce``, ``resize``, ``convt``, ``rnn`` and ``gather``
validate it and emit specialised IR, taking raw pointers to C-contiguous arrays (numpy only
allocates and passes buffers). Machine code comes from :mod:`tessera.runtime.cpu.jit`,
cached in memory and on disk under a key of the description, :data:`GENERATOR_VERSION`, the
llvmlite version and the host target. A compiled-model file therefore carries descriptions only:
the runtime regenerates the code, so a file can never bring its own. Operators are listed by
:func:`ops` (ONNX names where ONNX defines them; semantics are ONNX's unless the generator's
docstring says otherwise).

Unsupported ops, attributes, shapes or dtypes raise :class:`~tessera.errors.KernelError` naming
the op and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tessera.errors import KernelError
from tessera.runtime.cpu import (
    activ,
    builder,
    compare,
    convt,
    data,
    eltwise,
    gather,
    misc,
    nn,
    quant,
    reduce,
    resize,
    rnn,
)
from tessera.runtime.cpu.builder import IrText, Spec
from tessera.runtime.cpu.jit import CompiledFunction, Engine, default_engine

__all__ = ["CpuKernel", "Spec", "clear_cache", "get", "ops", "GENERATOR_VERSION",
           "SUPPORTED_DTYPES", "canonical_attrs"]

# op name -> generator(op, attrs, in_specs) -> (ir_text, function name, out_specs)
Generator = Callable[[str, dict[str, Any], list[Spec]], tuple[str, str, list[Spec]]]
_GENERATORS: dict[str, Generator] = {
    **nn.GENERATORS,
    **eltwise.GENERATORS,
    **data.GENERATORS,
    **quant.GENERATORS,
    **misc.GENERATORS,
    **activ.GENERATORS,
    **compare.GENERATORS,
    **reduce.GENERATORS,
    **resize.GENERATORS,
    **convt.GENERATORS,
    **rnn.GENERATORS,
    **gather.GENERATORS,
}

assert len(_GENERATORS) == sum(len(m.GENERATORS) for m in (
    nn, eltwise, data, quant, misc, activ, compare, reduce, resize, convt, rnn, gather)), \
    "two generator modules define the same operator"

SUPPORTED_DTYPES = ("float32", "int8", "int32", "int64", "bool", "uint8")


def _generator_version() -> str:
    """A hash of the generators' source: any change to the code that writes the IR changes it,
    so cached machine code of an older generator is never reused."""
    h = hashlib.sha256()
    for mod in (builder, nn, eltwise, data, quant, misc, activ, compare, reduce, resize, convt,
                rnn, gather):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


GENERATOR_VERSION = _generator_version()


def ops() -> list[str]:
    """Names of every operator :func:`get` accepts."""
    return sorted(_GENERATORS)


def _norm_specs(op: str, specs: Sequence[Any], what: str) -> list[Spec]:
    out = []
    if isinstance(specs, (str, bytes, Mapping)):
        raise KernelError(f"{op}: {what} must be a list of (shape, dtype) pairs, not {specs!r}")
    try:
        items = list(specs)
    except TypeError:
        raise KernelError(f"{op}: {what} must be a list of (shape, dtype) pairs") from None
    for k, item in enumerate(items):
        try:
            shape, dtype = item
            if isinstance(shape, (str, bytes)):
                raise TypeError
            dims = []
            for d in shape:
                if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
                    raise TypeError
                dims.append(int(d))
            shape = tuple(dims)
            if not isinstance(dtype, (str, np.dtype)) and not (
                    isinstance(dtype, type) and issubclass(dtype, np.generic)):
                raise TypeError
            dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise KernelError(
                f"{op}: {what}[{k}] must be a (shape, dtype) pair, not {item!r}") from None
        if any(d < 0 for d in shape):
            raise KernelError(f"{op}: {what}[{k}] has a negative dimension: {shape}")
        if dtype.name not in SUPPORTED_DTYPES:
            raise KernelError(
                f"{op}: {what}[{k}] has dtype {dtype.name}; CPU kernels take "
                f"{', '.join(SUPPORTED_DTYPES)}"
            )
        out.append((shape, dtype))
    return out


def _plain(value: Any, op: str, path: str) -> Any:
    """``value`` as plain JSON data (dict, list, str, int, finite float, bool, None)."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise KernelError(f"{op}: attribute key {path}{k!r} must be a string")
            out[k] = _plain(v, op, f"{path}{k}.")
        return out
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v, op, path) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        raise KernelError(f"{op}: attribute {path.rstrip('.')} must be finite, not {value!r}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise KernelError(f"{op}: attribute {path.rstrip('.')} must be JSON data, not "
                      f"{type(value).__name__}")


def canonical_attrs(op: str, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``attrs`` as plain JSON data (lists for tuples/arrays, Python numbers)."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise KernelError(f"{op}: attributes must be a dict, not {type(attrs).__name__}")
    return _plain(attrs, op, "")


def _describe(op: str, attrs: dict[str, Any], specs: list[Spec]) -> str:
    return json.dumps({"op": op, "attrs": attrs,
                       "in_specs": [[list(s), d.name] for s, d in specs],
                       "generator": GENERATOR_VERSION},
                      sort_keys=True, separators=(",", ":"), allow_nan=False)


class CpuKernel:
    """A compiled kernel: ``kernel(*inputs, out=None) -> list of outputs``.

    Built by :func:`get` (or :meth:`from_description`); ``ir`` is the generated IR text (str,
    or an :class:`~tessera.runtime.cpu.builder.IrText` rendered when ``ir`` is first read: the
    engine needs the text only to compile a kernel its caches do not hold).
    """

    def __init__(self, op: str, attrs: dict[str, Any], in_specs: list[Spec],
                 ir_text: str | IrText, name: str, out_specs: Sequence[Spec],
                 fn: CompiledFunction | None, engine: Engine | None = None,
                 key: str | None = None):
        self.op = op
        self.attrs = attrs
        self.in_specs = in_specs
        self.out_specs = _norm_specs(op, out_specs, "out_specs")
        if not isinstance(ir_text, (str, IrText)):
            raise KernelError(f"{op}: ir_text must be a str or IrText, not "
                              f"{type(ir_text).__name__}")
        self._ir = ir_text
        self.name = name
        self._fn = fn
        self._engine = engine
        self._key = key  # the description the engine caches the machine code under
        if fn is None and (engine is None or key is None):
            raise KernelError(f"{op}: a kernel without machine code needs an engine and a key")

    @property
    def ir(self) -> str:
        """The kernel's LLVM IR text."""
        text = self._ir
        if not isinstance(text, str):
            text = self._ir = str(text)
        return text

    @property
    def compiled(self) -> bool:
        """Whether the machine code exists yet (a kernel from ``get(..., lazy=True)`` is
        generated and validated, but compiled on first use)."""
        return self._fn is not None

    def compile(self) -> CompiledFunction:
        """The machine code, compiled (or loaded from the engine's caches) on first use."""
        fn = self._fn
        if fn is None:
            assert self._engine is not None and self._key is not None
            fn = self._engine.compile(self._ir, self.name,
                                      len(self.in_specs) + len(self.out_specs),
                                      description=self._key)
            self._fn = fn
        return fn

    def description(self) -> dict[str, Any]:
        """What identifies this kernel: op, attributes and input specs (JSON data)."""
        return {"op": self.op, "attrs": self.attrs,
                "in_specs": [[list(s), d.name] for s, d in self.in_specs]}

    @classmethod
    def from_description(cls, desc: Mapping[str, Any], engine: Engine | None = None
                         ) -> CpuKernel:
        """The kernel a :meth:`description` names, regenerated (and validated) by its
        generator."""
        if not isinstance(desc, Mapping) or set(desc) != {"op", "attrs", "in_specs"}:
            raise KernelError(f"a kernel description must have exactly the keys op, attrs and "
                              f"in_specs, not {desc!r}"[:300])
        return get(desc["op"], desc["attrs"], desc["in_specs"], engine=engine)

    def __repr__(self) -> str:
        def fmt(specs: list[Spec]) -> str:
            return ", ".join(f"{d.name}{list(s)}" for s, d in specs)
        return f"CpuKernel({self.op}: ({fmt(self.in_specs)}) -> ({fmt(self.out_specs)}))"

    def _check(self, arrays: Sequence[Any], specs: list[Spec], what: str) -> list[np.ndarray]:
        if len(arrays) != len(specs):
            raise KernelError(f"{self.op}: expects {len(specs)} {what}(s), got {len(arrays)}")
        checked = []
        for k, (a, (shape, dtype)) in enumerate(zip(arrays, specs, strict=True)):
            if not isinstance(a, np.ndarray):
                raise KernelError(f"{self.op}: {what} {k} must be a numpy array, not "
                                  f"{type(a).__name__}")
            if a.shape != shape or a.dtype != dtype:
                raise KernelError(
                    f"{self.op}: {what} {k} must be {dtype.name}{list(shape)}, "
                    f"not {a.dtype.name}{list(a.shape)}"
                )
            checked.append(a)
        return checked

    def __call__(self, *inputs: np.ndarray,
                 out: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        ins = [np.ascontiguousarray(a) for a in self._check(inputs, self.in_specs, "input")]
        if out is None:
            outs = [np.empty(shape, dtype) for shape, dtype in self.out_specs]
        else:
            outs = self._check(list(out), self.out_specs, "output")
            for k, o in enumerate(outs):
                if not o.flags.c_contiguous or not o.flags.writeable:
                    raise KernelError(f"{self.op}: output {k} must be a writeable "
                                      "C-contiguous array")
                if any(np.may_share_memory(o, a) for a in ins) or any(
                        np.may_share_memory(o, p) for p in outs[:k]):
                    raise KernelError(f"{self.op}: output {k} overlaps another argument")
        self.compile()(*ins, *outs)
        return outs


_cache: dict[tuple[str, int], CpuKernel] = {}
_cache_lock = threading.Lock()


def get(op: str, attrs: Mapping[str, Any] | None, in_specs: Sequence[Any],
        engine: Engine | None = None, lazy: bool = False) -> CpuKernel:
    """The kernel for ``op`` with ``attrs`` on inputs ``in_specs`` (list of (shape, dtype)).

    Kernels are cached in memory by (description, engine); their machine code is cached by the
    engine (in memory and on disk) by the description's key. With ``lazy`` the IR is generated
    and validated now but compiled on the kernel's first use (the compiler plans CPU steps this
    way: the runtime compiles them when a model is laid out on a device).
    """
    if not isinstance(op, str) or op not in _GENERATORS:
        raise KernelError(f"{op!r}: no CPU kernel for this operator (known: {', '.join(ops())})"
                          [:400])
    clean = canonical_attrs(op, attrs)
    specs = _norm_specs(op, in_specs, "in_specs")
    engine = engine or default_engine()
    desc = _describe(op, clean, specs)
    key = (desc, id(engine))
    with _cache_lock:
        kernel = _cache.get(key)
    if kernel is None:
        ir_text, name, out_specs = _GENERATORS[op](op, dict(clean), specs)
        kernel = CpuKernel(op, clean, specs, ir_text, name, out_specs, None, engine, desc)
        with _cache_lock:
            kernel = _cache.setdefault(key, kernel)
    if not lazy:
        kernel.compile()
    return kernel


def clear_cache() -> None:
    """Forget the kernels :func:`get` has handed out (engines keep their own caches)."""
    with _cache_lock:
        _cache.clear()
