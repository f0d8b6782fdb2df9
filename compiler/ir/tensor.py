"""Tensor types of the IR: :class:`TensorInfo` (shape, dtype, quantisation scale)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.errors import CompileError

__all__ = ["TensorInfo", "DTYPES", "ACTIVATIONS", "blocked_shape"]

DTYPES = ("float32", "int8", "int32", "int64", "uint8", "bool")
ACTIVATIONS = ("none", "relu", "clip")


@dataclass(frozen=True)
class TensorInfo:
    """Static type of one tensor. ``scale`` is set on quantised (int8/int32) tensors only:
    real value = integer value * scale (symmetric, zero point 0)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise CompileError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        q = f" @{self.scale:.4g}" if self.scale is not None else ""
        return f"{self.dtype}[{','.join(map(str, self.shape))}]{q}"

def blocked_shape(shape: tuple[int, ...], block: int, batch: int) -> tuple[int, ...]:
    """The packed shape of a 4-D NCHW or 2-D NC tensor (SPEC §2)."""
    n, c = -(-shape[0] // batch), -(-shape[1] // block)
    return (n, c) + tuple(shape[2:]) + (batch, block)
