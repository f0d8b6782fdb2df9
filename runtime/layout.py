"""Host-side packing of tensors into the blocked DRAM layouts of SPEC §2, and back.

Activations ``N C H W`` are packed as ``(N/BATCH, C/BLOCK_IN, H, W, BATCH, BLOCK_IN)``, weights
``O I KH KW`` as ``(O/BLOCK_OUT, I/BLOCK_IN, KH, KW, BLOCK_OUT, BLOCK_IN)``; batch and channels
are zero-padded to whole blocks. A matrix ``A (M x K)`` is the activation ``M x K x 1 x 1`` and a
matrix ``B (K x N)`` is the weight ``N x K x 1 x 1`` (so ``B`` is stored transposed), which makes
``A @ B`` a 1x1 convolution in the same layouts. Biases are int32 accumulator elements
``(O/BLOCK_OUT, BATCH, BLOCK_OUT)``, the per-channel value replicated over the batch lanes.
"""

from __future__ import annotations

import numpy as np

from tessera.config import Config
from tessera.errors import ProgramError

__all__ = [
    "ceil_div", "pack_activation", "unpack_activation", "pack_weights", "pack_depthwise",
    "pack_matrix_a", "pack_matrix_b", "unpack_matrix", "pack_bias",
]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _int8(x: np.ndarray, what: str, ndim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ProgramError(f"{what} must have {ndim} dimensions, not shape {x.shape}")
    if x.dtype != np.int8:
        raise ProgramError(f"{what} must be int8, not {x.dtype}")
    return x


def pack_activation(x: np.ndarray, cfg: Config) -> np.ndarray:
    """``N C H W`` int8 -> ``(N/BATCH, C/BLOCK_IN, H, W, BATCH, BLOCK_IN)`` int8, zero-padded."""
    x = _int8(x, "activation", 4)
    n, c, h, w = x.shape
    b, bi = cfg.batch, cfg.block_in
    nb, cb = ceil_div(n, b), ceil_div(c, bi)
    xp = np.zeros((nb * b, cb * bi, h, w), np.int8)
    xp[:n, :c] = x
    return np.ascontiguousarray(xp.reshape(nb, b, cb, bi, h, w).transpose(0, 2, 4, 5, 1, 3))


def unpack_activation(packed: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`pack_activation`; ``shape`` is the unpadded ``N C H W``."""
    nb, cb, h, w, b, bl = packed.shape
    n, c = shape[0], shape[1]
    full = packed.transpose(0, 4, 1, 5, 2, 3).reshape(nb * b, cb * bl, h, w)
    return np.ascontiguousarray(full[:n, :c])


def pack_weights(wt: np.ndarray, cfg: Config) -> np.ndarray:
    """``O I KH KW`` int8 -> ``(O/BLOCK_OUT, I/BLOCK_IN, KH, KW, BLOCK_OUT, BLOCK_IN)`` int8."""
    wt = _int8(wt, "weights", 4)
    o, i, kh, kw = wt.shape
    bo, bi = cfg.block_out, cfg.block_in
    ob, ib = ceil_div(o, bo), ceil_div(i, bi)
    if (o, i) == (ob * bo, ib * bi):
        wp = wt  # whole blocks: no padded copy
    else:
        wp = np.zeros((ob * bo, ib * bi, kh, kw), np.int8)
        wp[:o, :i] = wt
    out = np.ascontiguousarray(wp.reshape(ob, bo, ib, bi, kh, kw).transpose(0, 2, 4, 5, 1, 3))
    return out.copy() if np.may_share_memory(out, wt) else out  # always a fresh array


def pack_depthwise(wt: np.ndarray, cfg: Config) -> np.ndarray:
    """Depthwise ``C 1 KH KW`` int8 -> channel-diagonal blocks ``(C/BLOCK, 1, KH, KW, BLOCK,
    BLOCK)``: block ``b`` holds ``diag(w[b*BLOCK:(b+1)*BLOCK, 0, kh, kw])``, so the GEMM of
    output block ``b`` over input block ``b`` computes every channel's own sum."""
    wt = _int8(wt, "depthwise weights", 4)
    c, one, kh, kw = wt.shape
    if one != 1:
        raise ProgramError(f"depthwise weights must be C x 1 x KH x KW, not shape {wt.shape}")
    if cfg.block_in != cfg.block_out:
        raise ProgramError("depthwise blocks need BLOCK_IN == BLOCK_OUT")
    bl = cfg.block_out
    cb = ceil_div(c, bl)
    flat = np.zeros((cb * bl, kh, kw), np.int8)
    flat[:c] = wt[:, 0]
    out = np.zeros((cb, 1, kh, kw, bl, bl), np.int8)
    idx = np.arange(bl)
    out[:, 0, :, :, idx, idx] = flat.reshape(cb, bl, kh, kw).transpose(1, 0, 2, 3)
    return out


def pack_matrix_a(a: np.ndarray, cfg: Config) -> np.ndarray:
    """``A (M x K)`` int8 -> ``(M/BATCH, K/BLOCK_IN, BATCH, BLOCK_IN)``."""
    a = _int8(a, "matrix A", 2)
    p = pack_activation(a[:, :, None, None], cfg)
    return p.reshape(p.shape[0], p.shape[1], cfg.batch, cfg.block_in)


def pack_matrix_b(bm: np.ndarray, cfg: Config) -> np.ndarray:
    """``B (K x N)`` int8 -> ``(N/BLOCK_OUT, K/BLOCK_IN, BLOCK_OUT, BLOCK_IN)`` (B transposed)."""
    bm = _int8(bm, "matrix B", 2)
    p = pack_weights(np.ascontiguousarray(bm.T)[:, :, None, None], cfg)
    return p.reshape(p.shape[0], p.shape[1], cfg.block_out, cfg.block_in)


def unpack_matrix(packed: np.ndarray, m: int, n: int) -> np.ndarray:
    """``(M/BATCH, N/BLOCK_OUT, BATCH, BLOCK_OUT)`` -> ``M x N``."""
    mb, nb, b, bo = packed.shape
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3).reshape(mb * b, nb * bo)[:m, :n])


def pack_bias(bias: np.ndarray, cfg: Config) -> np.ndarray:
    """Per-channel int32 bias ``(O,)`` -> accumulator elements ``(O/BLOCK_OUT, BATCH, BLOCK_OUT)``.

    Values that do not fit int32 are rejected rather than wrapped.
    """
    bias = np.asarray(bias)
    if bias.ndim != 1:
        raise ProgramError(f"bias must be one-dimensional, not shape {bias.shape}")
    if not np.issubdtype(bias.dtype, np.integer):
        raise ProgramError(f"bias must be an integer array, not {bias.dtype}")
    if bias.size and (bias.min() < -(1 << 31) or bias.max() >= 1 << 31):
        raise ProgramError("bias values must fit int32")
    bo = cfg.block_out
    ob = ceil_div(bias.size, bo)
    flat = np.zeros(ob * bo, np.int32)
    flat[:bias.size] = bias
    return np.ascontiguousarray(
        np.broadcast_to(flat.reshape(ob, 1, bo), (ob, cfg.batch, bo)))
