"""A CPU step of a plan: a short sequence of kernel calls the executor runs as one operator.

::

    (y,) = op(*inputs)                 # inputs line up with the IR node's (None when absent)
    op.out_specs                       # [((1, 64, 28, 28), dtype('int8'))]
    saved = op.to_json()               # kernel descriptions and slot wiring; no code
    same = CpuOp.from_json(saved)      # regenerated and validated by the kernel generators
    run = op.bind(inputs, outputs)     # checked once; run() calls the kernels on those buffers

Values live in numbered *slots*: ``0 .. n_inputs - 1`` are the op's inputs, and each kernel call
writes the next free slots. A call reads its input slots reshaped to the kernel's input shapes
(same size and dtype: a view, no copy for contiguous arrays).

:meth:`CpuOp.bind` is the executor's path: given the op's input and output buffers once (views
of the device arena), it checks every shape, dtype, contiguity and overlap, compiles the
kernels, allocates the intermediate buffers and returns a :class:`BoundOp` whose call is just
the kernels' raw calls on fixed addresses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.errors import KernelError
from tessera.runtime.cpu.builder import Spec
from tessera.runtime.cpu.jit import Engine
from tessera.runtime.cpu.kernels import SUPPORTED_DTYPES, CpuKernel

__all__ = ["BoundOp", "CpuOp", "KernelCall", "FORMAT", "spec_json", "spec_from_json"]

FORMAT = "tessera-cpu-op-2"
# Bounds on what a description may ask for (a saved model is untrusted input).
MAX_KERNELS = 64
MAX_SLOTS = 256
MAX_RANK = 8
MAX_DIM = 1 << 20  # generators build per-position tables: bound the work a file can ask for
MAX_ELEMENTS = 1 << 31
MAX_BYTES = 1 << 29  # any array a loaded op allocates (the arena itself is at most this)
MAX_OP_BYTES = 1 << 30  # all the arrays one loaded op allocates together (they live to its end)


@dataclass(frozen=True)
class KernelCall:
    """One kernel call: reads slots ``inputs`` (reshaped to the kernel's input shapes) and
    writes new slots ``outputs``."""

    kernel: CpuKernel
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def spec_json(spec: Spec | None) -> list | None:
    return None if spec is None else [list(spec[0]), spec[1].name]


def spec_from_json(item: Any, what: str) -> Spec | None:
    """A (shape, dtype) pair from its JSON form, checked: ``[[dims...], dtype]`` or None."""
    if item is None:
        return None
    if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], list) \
            or not isinstance(item[1], str):
        raise KernelError(f"{what} must be [[dims...], dtype], not {item!r}"[:200])
    shape, dtype = item
    if len(shape) > MAX_RANK or any(isinstance(d, bool) or not isinstance(d, int)
                                    or not 0 <= d <= MAX_DIM for d in shape):
        raise KernelError(f"{what}: shape must be at most {MAX_RANK} integers in [0, "
                          f"{MAX_DIM}], not {shape!r}"[:200])
    if math.prod(shape) > MAX_ELEMENTS:
        raise KernelError(f"{what}: shape {shape} has more than {MAX_ELEMENTS} elements")
    if dtype not in SUPPORTED_DTYPES:
        raise KernelError(f"{what}: dtype must be one of {SUPPORTED_DTYPES}, not {dtype!r}")
    return tuple(shape), np.dtype(dtype)


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class CpuOp:
    """An IR node compiled for the CPU: ``op(*inputs) -> list of outputs``.

    ``inputs`` line up with the node's inputs; pass ``None`` for an absent optional input.
    """

    def __init__(self, op: str, name: str, in_specs: Sequence[Spec | None],
                 out_specs: Sequence[Spec], steps: Sequence[KernelCall], outputs: Sequence[int]):
        self.op = op
        self.name = name
        self.in_specs = list(in_specs)
        self.out_specs = list(out_specs)
        self.steps = list(steps)
        self.outputs = list(outputs)

    @property
    def kernels(self) -> list[CpuKernel]:
        return [s.kernel for s in self.steps]

    def __repr__(self) -> str:
        ks = " -> ".join(k.op for k in self.kernels)
        return f"CpuOp({self.name!r} {self.op}: {ks})"

    def _err(self, msg: str) -> KernelError:
        return KernelError(f"node {self.name!r} ({self.op}): {msg}")

    def __call__(self, *inputs: np.ndarray | None) -> list[np.ndarray]:
        if len(inputs) != len(self.in_specs):
            raise self._err(f"expects {len(self.in_specs)} input(s), got {len(inputs)}")
        slots: dict[int, np.ndarray] = {}
        for k, (a, spec) in enumerate(zip(inputs, self.in_specs, strict=True)):
            if spec is None:
                if a is not None:
                    raise self._err(f"input {k} is absent in the node but an array was given")
                continue
            if not isinstance(a, np.ndarray) or a.shape != spec[0] or a.dtype != spec[1]:
                got = (f"{a.dtype.name}{list(a.shape)}" if isinstance(a, np.ndarray)
                       else type(a).__name__)
                raise self._err(f"input {k} must be {spec[1].name}{list(spec[0])}, not {got}")
            slots[k] = np.ascontiguousarray(a)
        for step in self.steps:
            args = [slots[s].reshape(shape) for s, (shape, _) in
                    zip(step.inputs, step.kernel.in_specs, strict=True)]
            for s, v in zip(step.outputs, step.kernel(*args), strict=True):
                slots[s] = v
        return [slots[s].reshape(shape) for s, (shape, _) in
                zip(self.outputs, self.out_specs, strict=True)]

    def bind(self, inputs: Sequence[np.ndarray | None], outputs: Sequence[np.ndarray]
             ) -> BoundOp:
        """Fix the op to these buffers: ``inputs`` line up with :attr:`in_specs` (None where
        absent), ``outputs`` with :attr:`out_specs`; each must be C-contiguous with the spec's
        dtype and size (any shape of that size: a slot may drop unit dimensions), outputs
        writeable and overlapping no other argument of the kernel that writes them.

        Every check happens here, once; the returned :class:`BoundOp` then runs the kernels on
        exactly these buffers (intermediate results in buffers it owns) with no checks and no
        allocation. A violation raises :class:`KernelError` naming the node.
        """
        if len(inputs) != len(self.in_specs) or len(outputs) != len(self.out_specs):
            raise self._err(f"binds {len(self.in_specs)} input(s) and {len(self.out_specs)} "
                            f"output(s), not {len(inputs)} and {len(outputs)}")
        slots: dict[int, np.ndarray] = {}
        for k, (a, spec) in enumerate(zip(inputs, self.in_specs, strict=True)):
            if spec is None:
                if a is not None:
                    raise self._err(f"input {k} is absent in the node but a buffer was given")
                continue
            slots[k] = self._bound_buffer(a, spec, f"input {k}", writeable=False)
        dests = [self._bound_buffer(a, spec, f"output {k}", writeable=True)
                 for k, (a, spec) in enumerate(zip(outputs, self.out_specs, strict=True))]
        # A kernel writes an op output straight into its buffer (the first one naming that slot)
        direct: dict[int, np.ndarray] = {}
        for slot, d in zip(self.outputs, dests, strict=True):
            if slot >= len(self.in_specs):
                direct.setdefault(slot, d)
        calls: list[Callable[[], None]] = []
        for j, step in enumerate(self.steps):
            kernel = step.kernel
            args = [slots[s].reshape(shape) for s, (shape, _) in
                    zip(step.inputs, kernel.in_specs, strict=True)]
            outs = []
            for s, (shape, dtype) in zip(step.outputs, kernel.out_specs, strict=True):
                buf = direct.get(s)
                out = np.empty(shape, dtype) if buf is None else buf.reshape(shape)
                for other in args + outs:
                    if np.may_share_memory(out, other):
                        raise self._err(f"kernel {j} ({kernel.op}) would write output slot {s} "
                                        f"over one of its own arguments")
                outs.append(out)
                slots[s] = out
            fn = kernel.compile()
            calls.append(functools.partial(fn.call_pointers,
                                           *[a.ctypes.data for a in args + outs]))
        copies = []
        for slot, d in zip(self.outputs, dests, strict=True):
            src = slots[slot]
            if direct.get(slot) is not d:
                copies.append((d, src.reshape(d.shape)))
        return BoundOp(self, calls, copies, (inputs, outputs, slots))

    def _bound_buffer(self, a: object, spec: Spec, what: str, writeable: bool) -> np.ndarray:
        shape, dtype = spec
        if not isinstance(a, np.ndarray):
            raise self._err(f"{what} must be a numpy array, not {type(a).__name__}")
        if a.dtype != dtype or a.size != _size(shape):
            raise self._err(f"{what} must hold {dtype.name}{list(shape)}, not "
                            f"{a.dtype.name}{list(a.shape)}")
        if not a.flags.c_contiguous:
            raise self._err(f"{what} must be C-contiguous")
        if writeable and not a.flags.writeable:
            raise self._err(f"{what} must be writeable")
        return a.reshape(shape)

    # -- serialisation ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description: kernel descriptions and slot wiring (no code)."""
        return {
            "format": FORMAT,
            "op": self.op,
            "name": self.name,
            "in_specs": [spec_json(s) for s in self.in_specs],
            "out_specs": [spec_json(s) for s in self.out_specs],
            "kernels": [{**s.kernel.description(), "inputs": list(s.inputs),
                         "outputs": list(s.outputs)} for s in self.steps],
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_json(cls, data: Any, engine: Engine | None = None) -> CpuOp:
        """Rebuild an op saved by :meth:`to_json`: every kernel is regenerated from its
        description (so validated by its generator) and the wiring is checked; a problem raises
        :class:`KernelError` naming the field."""
        keys = {"format", "op", "name", "in_specs", "out_specs", "kernels", "outputs"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise KernelError(f"a CPU op must be an object with exactly the keys "
                              f"{sorted(keys)}")
        if data["format"] != FORMAT:
            raise KernelError(f"format must be {FORMAT!r}, not {data['format']!r}"[:200])
        op, name = data["op"], data["name"]
        if not isinstance(op, str) or not isinstance(name, str):
            raise KernelError("op and name must be strings")
        for key in ("in_specs", "out_specs", "kernels", "outputs"):
            if not isinstance(data[key], list):
                raise KernelError(f"{key} must be a list")
        if len(data["kernels"]) > MAX_KERNELS or len(data["in_specs"]) > MAX_SLOTS:
            raise KernelError(f"at most {MAX_KERNELS} kernels and {MAX_SLOTS} inputs")
        in_specs = [spec_from_json(s, f"in_specs[{k}]") for k, s in enumerate(data["in_specs"])]
        out_specs = [spec_from_json(s, f"out_specs[{k}]")
                     for k, s in enumerate(data["out_specs"])]
        if any(s is None for s in out_specs) or not out_specs:
            raise KernelError("out_specs must list at least one (shape, dtype)")
        slots: dict[int, Spec] = {k: s for k, s in enumerate(in_specs) if s is not None}
        first = len(in_specs)  # the next free slot
        total = 0  # bytes of every kernel output (all are alive until the op returns)
        steps = []
        for j, kd in enumerate(data["kernels"]):
            where = f"kernels[{j}]"
            if not isinstance(kd, Mapping) or set(kd) != {"op", "attrs", "in_specs", "inputs",
                                                          "outputs"}:
                raise KernelError(f"{where} must have exactly the keys op, attrs, in_specs, "
                                  f"inputs, outputs")
            ins, outs = kd["inputs"], kd["outputs"]
            if not isinstance(ins, list) or not isinstance(outs, list) or any(
                    isinstance(v, bool) or not isinstance(v, int) for v in ins + outs):
                raise KernelError(f"{where}: inputs and outputs must be lists of slot numbers")
            if not isinstance(kd["in_specs"], list) or len(kd["in_specs"]) != len(ins):
                raise KernelError(f"{where}: in_specs must line up with inputs")
            for k, (slot, raw) in enumerate(zip(ins, kd["in_specs"], strict=True)):
                view = spec_from_json(raw, f"{where}.in_specs[{k}]")
                have = slots.get(slot)
                if have is None:
                    raise KernelError(f"{where}.inputs[{k}]: slot {slot} is not defined before "
                                      f"it is read")
                if view[1] != have[1] or _size(view[0]) != _size(have[0]):
                    raise KernelError(f"{where}.inputs[{k}]: slot {slot} holds "
                                      f"{have[1].name}{list(have[0])}, which cannot be viewed "
                                      f"as {view[1].name}{list(view[0])}")
            try:
                kernel = CpuKernel.from_description(
                    {"op": kd["op"], "attrs": kd["attrs"], "in_specs": kd["in_specs"]}, engine)
            except KernelError as exc:
                raise KernelError(f"{where}: {exc}") from None
            want = list(range(first, first + len(kernel.out_specs)))
            first += len(want)
            if outs != want:
                raise KernelError(f"{where}.outputs must be the next free slots {want}, not "
                                  f"{outs}"[:200])
            if want and want[-1] >= MAX_SLOTS:
                raise KernelError(f"{where}: more than {MAX_SLOTS} slots")
            for s, spec in zip(want, kernel.out_specs, strict=True):
                nbytes = _size(spec[0]) * spec[1].itemsize
                if nbytes > MAX_BYTES:
                    raise KernelError(f"{where}: output {spec[1].name}{list(spec[0])} is larger "
                                      f"than {MAX_BYTES} bytes")
                total += nbytes
                if total > MAX_OP_BYTES:
                    raise KernelError(f"{where}: the op's kernel outputs need {total} bytes "
                                      f"together, more than {MAX_OP_BYTES}")
                slots[s] = spec
            steps.append(KernelCall(kernel, tuple(ins), tuple(outs)))
        outputs = data["outputs"]
        if len(outputs) != len(out_specs) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in outputs):
            raise KernelError("outputs must list one slot per out_spec")
        for k, (slot, spec) in enumerate(zip(outputs, out_specs, strict=True)):
            have = slots.get(slot)
            if have is None or have[1] != spec[1] or _size(have[0]) != _size(spec[0]):
                raise KernelError(f"outputs[{k}]: slot {slot} does not hold "
                                  f"{spec[1].name}{list(spec[0])}")
        return cls(op, name, in_specs, out_specs, steps, outputs)


class BoundOp:
    """A :class:`CpuOp` fixed to its buffers by :meth:`CpuOp.bind`: ``bound()`` runs it."""

    def __init__(self, op: CpuOp, calls: list[Callable[[], None]],
                 copies: list[tuple[np.ndarray, np.ndarray]], keepalive: object):
        self.op = op
        self.calls = calls
        self.copies = copies
        self._keepalive = keepalive  # the buffers the raw calls point into

    def __call__(self) -> None:
        for call in self.calls:
            call()
        for dst, src in self.copies:
            np.copyto(dst, src)
