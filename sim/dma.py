"""The functional simulator's DMA data steps: what LOADs and STOREs move, memoised per pc.

:class:`DmaSteps` is a part of :class:`~tessera.sim.fsim.FunctionalSimulator` (its base class,
split out to keep each file readable in one sitting): the row descriptors and DRAM views of
LOAD/STORE instructions, each LOAD's data step (a closure over its SRAM, mirror and DRAM
views, made once per program and pc) and each STORE's. The checks around them (races,
``dma_check`` results, counters) stay with the simulator's instruction handlers; replays
(``sim/replay.py``) call the data steps alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tessera.errors import SimError
from tessera.isa import MemType, Opcode, extract_uops

__all__ = ["DmaSteps"]

_MT_NAMES = tuple(m.name.lower() for m in MemType)


class DmaSteps:
    """LOAD/STORE descriptors and data steps (see the module docstring); the simulator supplies
    the buffers, ``prog``, ``dram``, ``dma_check`` and the out/uop bookkeeping they use."""

    # -- DMA helpers -----------------------------------------------------------------------------

    def _dma(self, pc: int) -> tuple[np.ndarray, int, int, str]:
        """(row start bytes, row length, row stride bytes, description) of LOAD/STORE ``pc``,
        memoised with the program."""
        memo = self.prog.dma_memo
        got = memo.get(pc)
        if got is None:
            f = self.prog.f
            mt = f["memory_type"][pc]
            eb = self._elem_of[mt]
            stride = f["x_stride"][pc] * eb
            starts = f["dram_base"][pc] * eb + stride * np.arange(f["y_size"][pc], dtype=np.int64)
            what = (f"{'STORE' if f['opcode'][pc] == Opcode.STORE else 'LOAD'} "
                    f"{MemType(mt).name} at instruction {pc}")
            got = memo[pc] = (starts, f["x_size"][pc] * eb, stride, what)
        return got

    def _dram_view(self, pc: int) -> np.ndarray:
        """The memoised read view of LOAD ``pc``'s DRAM rows (see :meth:`_dram_rows`)."""
        key = ~pc  # the LOAD's row descriptor is memoised under pc itself
        view = self.prog.dma_memo.get(key)
        if view is None:
            starts, length, stride, what = self._dma(pc)
            view = self.prog.dma_memo[key] = self._dram_rows(starts, length, stride, what)
        return view

    def _dram_rows(self, starts: np.ndarray, length: int, stride: int, what: str,
                   writeable: bool = False) -> np.ndarray:
        """A (rows, length) view of DRAM (rows overlap when ``stride < length``: only write
        through it when they do not)."""
        s0, n = int(starts[0]), starts.size
        if s0 + (n - 1) * stride + length > self.dram.size:
            raise SimError(f"{what}: bytes up to {s0 + (n - 1) * stride + length:#x} are beyond "
                           f"the simulator's DRAM ({self.dram.size:#x} bytes)")
        if n == 1 or stride == length:
            return self.dram[s0:s0 + length * n].reshape(n, length)
        return np.lib.stride_tricks.as_strided(self.dram[s0:], (n, length), (stride, 1),
                                               writeable=writeable)

    # -- loads ---------------------------------------------------------------------------------

    def _describe_load(self, pc: int) -> tuple:
        """Everything LOAD ``pc`` needs that depends only on its fields, memoised with the
        program (SRAM and DRAM views included: the arrays live as long as the simulator), its
        data step (:meth:`_load_step`) last; () for a LOAD that moves nothing (spec-notes 3:
        synchronisation only)."""
        f = self.prog.f
        xs = f["x_size"][pc]
        if xs == 0:
            return ()
        ys, mt = f["y_size"][pc], f["memory_type"][pc]
        starts, length, _stride, what = self._dma(pc)
        raw = self._dram_view(pc) if ys else np.zeros((0, length), np.uint8)
        buf = self._buf_of[mt]
        yp0, yp1, xp0, xp1 = (f["y_pad_0"][pc], f["y_pad_1"][pc], f["x_pad_0"][pc],
                              f["x_pad_1"][pc])
        height, width = yp0 + ys + yp1, xp0 + xs + xp1
        base = f["sram_base"][pc]
        hi = base + height * width
        region = buf[base:hi]
        if yp0 == yp1 == xp0 == xp1 == 0:
            tile, inner = None, region.reshape((ys, xs) + buf.shape[1:])
        else:
            tile = region.reshape((height, width) + buf.shape[1:])
            inner = tile[yp0:yp0 + ys, xp0:xp0 + xs]
        span = (int(starts[0]), int(starts[-1]) + length) if ys else (0, 0)
        return (ys, mt, starts, length, what, raw, base, hi, _MT_NAMES[mt], ys * length, span,
                self._load_step(mt, raw, base, hi, region, tile, inner))

    def _load_step(self, mt: int, raw: np.ndarray, base: int, hi: int, region: np.ndarray,
                   tile: np.ndarray | None, inner: np.ndarray) -> Callable[[], None]:
        """What a LOAD writes, as a function of no arguments (no checks: :meth:`_load` makes
        them first): the SRAM rows (``tile`` zeroed first when padded, ``inner`` the rows from
        DRAM), their float32 mirror and weight stamps, the micro-op fields."""
        copyto = np.copyto
        if mt == MemType.INP or mt == MemType.WGT:
            data = raw.view(np.int8).reshape(inner.shape)
            if mt == MemType.INP:
                mirror, src = self.inp_f[base:hi], region
            else:
                mirror, src = self.wgt_t[base:hi], region.transpose(0, 2, 1)
            stamps = self.wgt_stamp[base:hi] if mt == MemType.WGT else None

            def step() -> None:
                if tile is not None:
                    tile.fill(0)
                copyto(inner, data)
                copyto(mirror, src)
                if stamps is not None:
                    self._stamp += 1
                    stamps.fill(self._stamp)
            return step

        def other() -> None:
            if mt == MemType.ACC:
                self._flush_out()  # the rows' out values were computed from the old acc
                data = np.ascontiguousarray(raw).view("<i4").reshape(inner.shape)
            elif mt == MemType.ACC_8BIT:
                self._flush_out()
                data = raw.view(np.int8).astype(np.int32).reshape(inner.shape)
            else:  # UOP
                data = np.ascontiguousarray(raw).view("<u4").reshape(inner.shape)
            if tile is not None:
                tile.fill(0)
            inner[...] = data
            if mt == MemType.UOP:
                fields = extract_uops(region, self.cfg)
                for dst, src in zip(self._uop_fields, fields):
                    dst[base:hi] = src
                self._renew_uop_epoch()
                self._epoch_trace.append(self._uop_epoch)
        return other

    def _check_dma(self, pc: int, starts: np.ndarray, length: int, what: str) -> None:
        """``dma_check`` of a LOAD/STORE's rows, skipped when they passed under the same
        allocation generation (``dma_generation``) before."""
        if self.dma_check is None:
            return
        gen, ok = self._dma_gen, self.prog.dma_ok
        if gen is None or ok.get(pc) != gen:
            self.dma_check(starts, length, what)
            ok[pc] = gen

    def _store_data(self, pc: int) -> None:
        """What STORE ``pc`` (not empty) writes to DRAM (no checks: :meth:`_exec_store` makes
        them first)."""
        f = self.prog.f
        xs, ys, base = f["x_size"][pc], f["y_size"][pc], f["sram_base"][pc]
        starts, length, stride, what = self._dma(pc)
        self._flush_out()
        data = self.out[base:base + ys * xs].reshape(ys, length).view(np.uint8)
        if stride >= length:
            memo = self.prog.dma_memo
            view = memo.get(~pc)  # the STORE's write view, memoised like a LOAD's read view
            if view is None:
                view = memo[~pc] = self._dram_rows(starts, length, stride, what, writeable=True)
            view[...] = data
        else:  # overlapping rows: later rows win, in order
            self._dram_rows(starts, length, stride, what)  # range check
            for y in range(ys):
                s0 = int(starts[y])
                self.dram[s0:s0 + length] = data[y]
