"""``CompiledModel``: a plan for one accelerator config, runnable on any device kind, saveable.

``tessera.load(path)`` and :meth:`CompiledModel.run` live here, in the runtime: running a saved
model never imports the compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tessera.driver import open_device
from tessera.driver.base import Device
from tessera.errors import InputError
from tessera.runtime import artifact
from tessera.runtime.executor import Executor
from tessera.runtime.plan import Plan
from tessera.runtime.profile import Profile

__all__ = ["CompiledModel", "load", "Profile"]


class CompiledModel:
    """A model compiled for one accelerator config; runs on any device kind of that config.

    ``input_specs`` maps each graph input to its (shape, dtype); ``meta`` holds JSON facts about
    the compilation (calibration, partition, timing). ``quantized`` is the compiler's quantised
    model on a freshly compiled model (the integer reference), None after :func:`load`.
    """

    def __init__(self, plan: Plan, input_specs: dict[str, tuple[tuple[int, ...], str]],
                 meta: dict[str, Any] | None = None, quantized: Any = None):
        self.plan = plan
        self.config = plan.config
        self.input_specs = input_specs
        self.meta = meta or {}
        self.quantized = quantized
        self._executors: dict[Any, tuple[Device, Executor, bool]] = {}
        self.last_parallel = None  # the last workers > 1 run's ParallelRun
        self._harness_libraries: dict = {}  # workers > 1: build key -> harness library
        self._predicted_cycles: dict = {}  # workers > 1: fsim options -> step -> cycles

    @property
    def input_names(self) -> list[str]:
        return list(self.plan.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.plan.outputs)

    # -- running -----------------------------------------------------------------------------

    def _executor(self, device: str | Device, options: dict[str, Any]) -> Executor:
        if isinstance(device, str):
            # one device per kind AND options (other DRAM timing = another device); by repr so
            # that an unhashable option value reaches the backend's own check
            key: Any = (device, tuple(sorted((k, repr(v)) for k, v in options.items())))
        elif isinstance(device, Device):
            key = id(device)
        else:
            raise InputError(f"device must be a kind name or a Device, not {device!r}")
        if key not in self._executors:
            if isinstance(device, str):
                dev, owned = open_device(device, self.config, **options), True
            else:
                dev, owned = device, False
            try:
                ex = Executor(self.plan, dev)
            except BaseException:
                if owned:
                    dev.close()
                raise
            self._executors[key] = (dev, ex, owned)
        return self._executors[key][1]

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds as arrays of exactly the inputs' shapes and dtypes, or :class:`InputError`
        naming the input and what is wrong."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, not "
                             f"{type(feeds).__name__}")
        missing = [n for n in self.input_specs if n not in feeds]
        extra = [n for n in feeds if n not in self.input_specs]
        if missing or extra:
            raise InputError(f"feeds must name exactly the inputs {list(self.input_specs)}; "
                             f"missing {missing}, unknown {extra}")
        out = {}
        for name, (shape, dtype) in self.input_specs.items():
            arr = np.asarray(feeds[name])
            if tuple(arr.shape) != tuple(shape):
                raise InputError(f"input {name!r} must have shape {list(shape)}, not "
                                 f"{list(arr.shape)}")
            if arr.dtype != np.dtype(dtype):
                raise InputError(f"input {name!r} must be {dtype}, not {arr.dtype} (convert it "
                                 f"explicitly; Tessera does not cast feeds)")
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all() \
                    and self.meta.get("precision") != "float":
                # int8 models quantise their inputs; a float model computes with NaN and inf
                raise InputError(f"input {name!r} contains NaN or infinity")
            out[name] = arr
        return out

    def run(self, feeds: Mapping[str, np.ndarray], device: str | Device = "fsim",
            profile: bool = False, progress: bool = False, timeout_cycles: int | None = None,
            workers: int = 1, **device_options: Any):
        """Outputs in graph order; with ``profile=True`` also a per-layer :class:`Profile`.

        ``workers=N`` (N > 1, ``device="verilator"`` only) simulates the RTL in N forked
        processes at once, each running a contiguous segment of the steps from the functional
        simulator's device memory at its start, and checks every segment's result against the
        simulator's byte for byte and every layer's cycles against the cycle model; the outputs
        and per-layer cycles are those of one sequential RTL run
        (:mod:`tessera.runtime.parallel` gives the argument). ``last_parallel`` then holds the
        run's segments and phase times.
        """
        checked = self.check_feeds(feeds)
        if type(workers) is not int or workers != 1:  # checked there; None: it came to 1
            from tessera.runtime import parallel

            done = parallel.run_parallel(self, checked, workers, device, profile, progress,
                                         timeout_cycles, device_options)
            if done is not None:
                outs, prof = done
                return (outs, prof) if profile else outs
        ex = self._executor(device, device_options)
        outs, prof = ex.run(checked, profile=profile, progress=progress,
                            timeout_cycles=timeout_cycles)
        return (outs, prof) if profile else outs

    def close(self) -> None:
        for dev, ex, owned in self._executors.values():
            ex.close()
            if owned:
                dev.close()
        self._executors.clear()

    # -- reports -----------------------------------------------------------------------------

    def summary(self) -> str:
        acc = [s for s in self.plan.steps if s.kind == "accel"]
        cpu = [s for s in self.plan.steps if s.kind == "cpu"]
        macs = sum(s.info.get("macs", 0) for s in acc)
        insns = sum(s.insn_count for s in acc)
        return (f"{len(acc)} accelerator layers ({macs / 1e6:.1f} M MACs, {insns} "
                f"instructions), {len(cpu)} CPU operators, arena {self.plan.arena_size} B, "
                f"params {self.plan.params_size} B, config {self.config.summary()}")

    # -- saving ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write one self-contained file (data only: no pickle, no code); :func:`load` reads
        it back."""
        artifact.save(path, self.plan, self.input_specs, self.meta)

    @classmethod
    def load(cls, path: str | Path) -> CompiledModel:
        plan, specs, meta = artifact.load(path)
        return cls(plan, specs, meta)


def load(path: str | Path) -> CompiledModel:
    """Read a model written by :meth:`CompiledModel.save`; see :mod:`tessera.runtime.artifact`
    for what is validated."""
    return CompiledModel.load(path)
