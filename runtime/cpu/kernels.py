"""CPU kernels: operators the accelerator cannot run, compiled for the host through LLVM.

One entry point::

    kernel = cpu_kernels.get("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]},
                             [((1, 64, 56, 56), "float32")])
    (y,) = kernel(x)                     # or kernel(x, out=[y]) to write into y
    kernel.out_specs                     # [((1, 64, 28, 28), dtype('float32'))]
    kernel.ir                            # LLVM IR text, for saving compiled models
    same = CpuKernel.from_ir(kernel.ir, kernel.name, kernel.in_specs, kernel.out_specs)

Each kernel is specialised to its input shapes, dtypes and attributes, and takes raw pointers to
C-contiguous arrays; numpy only allocates and passes buffers. Machine code comes from
:mod:`tessera.compiler.llvm_jit` and is cached in memory and on disk. Operators (ONNX names where
ONNX defines them; semantics are ONNX's unless the generator's docstring says otherwise):

- nn: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Softmax, Conv (grouped and
  depthwise);
- elementwise: Add, Sub, Mul, Div, Max, Min, Relu, Clip, Sigmoid, Tanh, Exp, AddRequant (int8);
- quantisation: QuantizeLinear, DequantizeLinear;
- data movement: Reshape, Flatten, Transpose, Concat, Slice, PackNCHW, UnpackNCHW.

Unsupported ops, attributes, shapes or dtypes raise :class:`~tessera.errors.CompileError` naming
the op and the problem.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tessera.compiler import (
    cpu_kernels_data,
    cpu_kernels_eltwise,
    cpu_kernels_misc,
    cpu_kernels_nn,
    cpu_kernels_quant,
)
from tessera.compiler.cpu_kernels_ir import Spec
from tessera.compiler.llvm_jit import CompiledFunction, Engine, default_engine
from tessera.errors import CompileError

__all__ = ["CpuKernel", "Spec", "clear_cache", "get", "ops"]

# op name -> generator(op, attrs, in_specs) -> (ir_text, function name, out_specs)
Generator = Callable[[str, dict[str, Any], list[Spec]], tuple[str, str, list[Spec]]]
_GENERATORS: dict[str, Generator] = {
    **cpu_kernels_nn.GENERATORS,
    **cpu_kernels_eltwise.GENERATORS,
    **cpu_kernels_data.GENERATORS,
    **cpu_kernels_quant.GENERATORS,
    **cpu_kernels_misc.GENERATORS,
}

_SUPPORTED_DTYPES = ("float32", "int8", "int32")


def ops() -> list[str]:
    """Names of every operator :func:`get` accepts."""
    return sorted(_GENERATORS)


def _norm_specs(op: str, specs: Sequence[Any], what: str) -> list[Spec]:
    out = []
    try:
        items = list(specs)
    except TypeError:
        raise CompileError(f"{op}: {what} must be a list of (shape, dtype) pairs") from None
    for k, item in enumerate(items):
        try:
            shape, dtype = item
            shape = tuple(int(d) for d in shape)
            dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise CompileError(
                f"{op}: {what}[{k}] must be a (shape, dtype) pair, not {item!r}"
            ) from None
        if any(d < 0 for d in shape):
            raise CompileError(f"{op}: {what}[{k}] has a negative dimension: {shape}")
        if dtype.name not in _SUPPORTED_DTYPES:
            raise CompileError(
                f"{op}: {what}[{k}] has dtype {dtype.name}; CPU kernels take "
                f"{', '.join(_SUPPORTED_DTYPES)}"
            )
        out.append((shape, dtype))
    return out


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


class CpuKernel:
    """A compiled kernel: ``kernel(*inputs, out=None) -> list of outputs``."""

    def __init__(self, name: str, ir_text: str, in_specs: Sequence[Spec],
                 out_specs: Sequence[Spec], engine: Engine | None = None, op: str | None = None):
        self.name = name
        self.op = op or name
        self.ir = ir_text
        self.in_specs = _norm_specs(self.op, in_specs, "in_specs")
        self.out_specs = _norm_specs(self.op, out_specs, "out_specs")
        self._fn: CompiledFunction = (engine or default_engine()).compile(
            ir_text, name, len(self.in_specs) + len(self.out_specs))

    @classmethod
    def from_ir(cls, ir_text: str, name: str, in_specs: Sequence[Spec],
                out_specs: Sequence[Spec], engine: Engine | None = None) -> CpuKernel:
        """Rebuild a kernel from saved IR text (compiled, or loaded from the object cache)."""
        return cls(name, ir_text, in_specs, out_specs, engine)

    def __repr__(self) -> str:
        def fmt(specs: list[Spec]) -> str:
            return ", ".join(f"{d.name}{list(s)}" for s, d in specs)
        return f"CpuKernel({self.op}: ({fmt(self.in_specs)}) -> ({fmt(self.out_specs)}))"

    def _check(self, arrays: Sequence[Any], specs: list[Spec], what: str) -> list[np.ndarray]:
        if len(arrays) != len(specs):
            raise CompileError(f"{self.op}: expects {len(specs)} {what}(s), got {len(arrays)}")
        checked = []
        for k, (a, (shape, dtype)) in enumerate(zip(arrays, specs, strict=True)):
            if not isinstance(a, np.ndarray):
                raise CompileError(f"{self.op}: {what} {k} must be a numpy array, not "
                                   f"{type(a).__name__}")
            if a.shape != shape or a.dtype != dtype:
                raise CompileError(
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
                    raise CompileError(f"{self.op}: output {k} must be a writeable "
                                       "C-contiguous array")
                if any(np.may_share_memory(o, a) for a in ins) or any(
                        np.may_share_memory(o, p) for p in outs[:k]):
                    raise CompileError(f"{self.op}: output {k} overlaps another argument")
        self._fn(*ins, *outs)
        return outs


_cache: dict[tuple, CpuKernel] = {}
_cache_lock = threading.Lock()


def get(op: str, attrs: dict[str, Any] | None, in_specs: Sequence[Spec],
        engine: Engine | None = None) -> CpuKernel:
    """The kernel for ``op`` with ``attrs`` on inputs ``in_specs`` (list of (shape, dtype)).

    Kernels are cached by (op, attrs, in_specs, engine) in memory; their machine code is cached
    by the engine (by IR hash, in memory and on disk).
    """
    if op not in _GENERATORS:
        raise CompileError(f"{op}: no CPU kernel for this operator (known: {', '.join(ops())})")
    attrs = dict(attrs or {})
    specs = _norm_specs(op, in_specs, "in_specs")
    engine = engine or default_engine()
    key = (op, _freeze(attrs), tuple((s, d.name) for s, d in specs), id(engine))
    with _cache_lock:
        kernel = _cache.get(key)
    if kernel is not None:
        return kernel
    ir_text, name, out_specs = _GENERATORS[op](op, attrs, specs)
    kernel = CpuKernel(name, ir_text, specs, out_specs, engine, op=op)
    with _cache_lock:
        _cache.setdefault(key, kernel)
    return kernel


def clear_cache() -> None:
    """Forget the kernels :func:`get` has handed out (engines keep their own caches)."""
    with _cache_lock:
        _cache.clear()
