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
    "ceil_div", "pack_activation", "unpack_activation", "pack_weights", "pack_grouped",
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
    if kh == kw == 1 and wp.flags.c_contiguous:
        # a block transpose of whole BLOCK_IN rows: move each row as one opaque element (numpy
        # copies them with memcpy; an int8 transpose copies element by element)
        rows = wp.reshape(ob, bo, ib * bi).view(np.dtype((np.void, bi)))
        out = np.ascontiguousarray(rows.transpose(0, 2, 1)).view(np.int8)
        out = out.reshape(ob, ib, 1, 1, bo, bi)
    else:
        out = np.ascontiguousarray(
            wp.reshape(ob, bo, ib, bi, kh, kw).transpose(0, 2, 4, 5, 1, 3))
    return out.copy() if np.may_share_memory(out, wt) else out  # always a fresh array


def pack_grouped(wt: np.ndarray, cfg: Config, groups: int, lo: list[int], span: int
                 ) -> np.ndarray:
    """Grouped ``O (I/groups) KH KW`` int8 -> ``(O/BLOCK_OUT, span, KH, KW, BLOCK_OUT,
    BLOCK_IN)``: output block ``o`` holds the weights of input blocks ``lo[o] .. lo[o] + span``
    (its window), zero wherever an input channel is not in the output channel's group (depthwise
    on equal blocks: ``span`` 1, ``lo[o] = o``, each block the diagonal of its channels)."""
    wt = _int8(wt, "grouped weights", 4)
    o, cg, kh, kw = wt.shape
    bo, bi = cfg.block_out, cfg.block_in
    ob = ceil_div(o, bo)
    if groups < 1 or o % groups or len(lo) != ob:
        raise ProgramError(f"grouped weights of {o} output channels need a group count dividing "
                           f"them and one window per output block ({ob}), not {groups} groups "
                           f"and {len(lo)} windows")
    og = o // groups
    oc = np.repeat(np.arange(o), cg)  # every (output channel, input channel of its group)
    j = np.tile(np.arange(cg), o)
    ic = oc // og * cg + j
    blk = oc // bo
    r = ic // bi - np.asarray(lo, np.int64)[blk]
    if r.size and (r.min() < 0 or r.max() >= span):
        raise ProgramError(f"grouped weights: a group's input channels leave its output "
                           f"block's window of {span} input blocks")
    out = np.zeros((ob, span, kh, kw, bo, bi), np.int8)
    out[blk, r, :, :, oc % bo, ic % bi] = wt[oc, j]
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
