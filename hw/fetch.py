"""Instruction fetch and decode (SPEC §5, §6; spec-notes §1, §6).

Fetch reads ``insn_count`` instructions from ``insn_addr`` into an instruction queue (a read is
only requested when the queue has room for all of it, so fetch never stalls the shared read
channel), decodes them in program order and routes each to a command queue: STORE to the store
module, LOAD of INP/WGT to the load module, everything else to the compute module. Dispatch
stops after the first FINISH or at the first decode error.

Decode checks, in the priority of spec-notes §6: 1 bad opcode, 2 bad memory type (incl. the UOP
shape rule), 4 illegal dependency flag for the target module, 5 bad ALU opcode, 3 LOAD/STORE
SRAM range, [ext] 6 DRAM byte range beyond 2**32. The checks are generated from the ISA tables.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.axi import read_client_signature
from tessera.hw.insn import CMD_PC_BITS, INSN_BITS, Cmd, bad_param, fields
from tessera.isa import INSN_BYTES, AluOp, MemType, Opcode, depth, elem_bytes, layout
from tessera.regs import ErrorCode

__all__ = ["Fetch", "IQ_DEPTH", "CMDQ_DEPTH"]

IQ_DEPTH = 16  # fetched, not yet decoded instructions
CMDQ_DEPTH = 8  # per-module command queue


def _log2(x: int) -> int:
    return x.bit_length() - 1


class Fetch(wiring.Component):
    """Fetch, decode and dispatch. Runs while ``run`` is high; reset it before each start.

    ``done``: dispatch is over (all ``insn_count`` dispatched, or a FINISH). ``dispatched``:
    instructions handed to the modules. ``idle``: no instruction read is outstanding. ``err``
    is a one-cycle pulse with ``err_code``/``err_pc``.
    """

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "run": In(1), "insn_addr": In(32), "insn_count": In(32),
            "rd": Out(read_client_signature(cfg.mem_bus_bits)),
            "load_cmd": Out(stream.Signature(Cmd)),
            "compute_cmd": Out(stream.Signature(Cmd)),
            "store_cmd": Out(stream.Signature(Cmd)),
            "err": Out(1), "err_code": Out(3), "err_pc": Out(CMD_PC_BITS),
            "done": Out(1), "dispatched": Out(32), "idle": Out(1),
            "stuck": Out(1), "load_queued": Out(1), "compute_queued": Out(1),
            "store_queued": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        bus = cfg.mem_bus_bits
        lbb = _log2(bus // 8)
        m.submodules.iq = iq = fifo.SyncFIFOBuffered(width=INSN_BITS, depth=IQ_DEPTH)

        # --- instruction reads ------------------------------------------------------------------
        requested = Signal(32)
        n_left = Signal(range(IQ_DEPTH + 1))
        stop = Signal()
        remaining = Signal(32)
        free = Signal(range(IQ_DEPTH + 1))
        n = Signal(range(IQ_DEPTH + 1))
        start = Signal(32)
        end = Signal(33)
        m.d.comb += [
            remaining.eq(self.insn_count - requested),
            free.eq(IQ_DEPTH - iq.level),
            n.eq(Mux(remaining < free, remaining, free)),
            start.eq(self.insn_addr + requested * INSN_BYTES),
            end.eq(start + n * INSN_BYTES + (bus // 8 - 1)),
            self.rd.req.valid.eq(self.run & ~stop & (n_left == 0) & (remaining != 0)
                                 & ((free >= IQ_DEPTH // 2) | (remaining <= free))),
            self.rd.req.payload.addr.eq(Cat(Signal(lbb), start[lbb:])),
            self.rd.req.payload.beats.eq((end >> lbb) - (start >> lbb)),
        ]
        slots = max(1, bus // INSN_BITS)
        k0 = Signal(range(slots + 1))
        first = Signal()
        with m.If(self.rd.req.valid & self.rd.req.ready):
            m.d.sync += [requested.eq(requested + n), n_left.eq(n), first.eq(1),
                         k0.eq(start[:lbb] >> _log2(INSN_BYTES) if slots > 1 else 0)]
        beat = self.rd.data.payload
        push = Signal()
        m.d.comb += iq.w_en.eq(push)
        if bus < INSN_BITS:
            bpi = INSN_BITS // bus
            sr = Signal(INSN_BITS - bus)
            cnt = Signal(range(bpi))
            m.d.comb += [self.rd.data.ready.eq(1), iq.w_data.eq(Cat(sr, beat))]
            with m.If(self.rd.data.valid):
                m.d.sync += cnt.eq(Mux(cnt == bpi - 1, 0, cnt + 1))
                with m.If(cnt == bpi - 1):
                    m.d.comb += push.eq(1)
                with m.Else():
                    m.d.sync += sr.word_select(cnt, bus).eq(beat)
        else:
            k = Signal(range(slots + 1))
            k_eff = Signal(range(slots))
            m.d.comb += [
                k_eff.eq(Mux(first, k0, k)),
                iq.w_data.eq(beat.word_select(k_eff, INSN_BITS) if slots > 1 else beat),
                self.rd.data.ready.eq((k_eff == slots - 1) | (n_left == 1)),
                push.eq(self.rd.data.valid),
            ]
            with m.If(push):
                m.d.sync += [k.eq(k_eff + 1), first.eq(0)]
        with m.If(push):
            m.d.sync += n_left.eq(n_left - 1)

        # --- decode ----------------------------------------------------------------------------
        # The checks run on the instruction as it leaves the instruction queue and are
        # registered together with it in ``ir``, so dispatch only sees registered results.
        ir = Signal(INSN_BITS)
        ir_valid = Signal()
        pc = Signal(CMD_PC_BITS)
        finish_seen = Signal()
        err_seen = Signal()
        m.d.comb += stop.eq(finish_seen | err_seen)
        d_code, d_load, d_store, d_finish = self._decode(m, iq.r_data)
        code = Signal(3)
        to_load, to_store, is_finish = Signal(), Signal(), Signal()

        # --- dispatch --------------------------------------------------------------------------
        queues = {}
        for name in ("load", "compute", "store"):
            q = fifo.SyncFIFOBuffered(width=Cmd.size, depth=CMDQ_DEPTH)
            m.submodules[f"{name}_q"] = q
            port = getattr(self, f"{name}_cmd")
            m.d.comb += [port.valid.eq(q.r_rdy), port.payload.eq(q.r_data),
                         q.r_en.eq(port.ready), q.w_data.eq(Cat(ir, pc))]
            queues[name] = q
        active = ir_valid & ~stop
        leaving = Signal()
        ready = Mux(to_load, queues["load"].w_rdy,
                    Mux(to_store, queues["store"].w_rdy, queues["compute"].w_rdy))
        with m.If(active & (code != 0)):
            m.d.comb += [self.err.eq(1), self.err_code.eq(code), self.err_pc.eq(pc)]
            m.d.sync += err_seen.eq(1)
        with m.Elif(active):
            with m.If(ready):
                m.d.comb += [
                    leaving.eq(1),
                    queues["load"].w_en.eq(to_load), queues["store"].w_en.eq(to_store),
                    queues["compute"].w_en.eq(~to_load & ~to_store),
                ]
                m.d.sync += pc.eq(pc + 1)
                with m.If(is_finish):
                    m.d.sync += finish_seen.eq(1)
        load_ir = iq.r_rdy & (~ir_valid | leaving) & ~stop & ~(leaving & is_finish)
        m.d.comb += iq.r_en.eq(load_ir)
        with m.If(load_ir):
            m.d.sync += [ir.eq(iq.r_data), ir_valid.eq(1), code.eq(d_code), to_load.eq(d_load),
                         to_store.eq(d_store), is_finish.eq(d_finish)]
        with m.Elif(leaving):
            m.d.sync += ir_valid.eq(0)
        m.d.comb += [
            self.done.eq(finish_seen | ((pc == self.insn_count) & ~err_seen)),
            self.dispatched.eq(pc),
            self.idle.eq((n_left == 0) & ~(self.rd.req.valid)),
            # nothing more will be dispatched: all of it is, or the next instruction (decoded
            # without error) waits for room in its module's command queue
            self.stuck.eq(self.done | (active & (code == 0) & ~ready)),
            *[getattr(self, f"{n}_queued").eq(q.level != 0) for n, q in queues.items()],
        ]
        return m

    def _decode(self, m: Module, word: Signal) -> tuple[Signal, Signal, Signal, Signal]:
        """(error code or 0, routes to load, routes to store, is FINISH) of ``word``."""
        cfg = self._cfg
        lay = layout(cfg)
        mf, af = fields(word, lay.mem), fields(word, lay.alu)
        op, mt = mf.opcode, mf.memory_type
        is_load, is_store = op == Opcode.LOAD, op == Opcode.STORE
        is_mem = is_load | is_store
        ys, xs = mf.y_size, mf.x_size
        pads = Cat(mf.y_pad_0, mf.y_pad_1, mf.x_pad_0, mf.x_pad_1)
        to_load = is_load & ((mt == MemType.INP) | (mt == MemType.WGT))
        to_store = is_store
        bad_op = op > max(Opcode)
        bad_mt = is_mem & (
            (mt > max(MemType)) | (is_load & (mt == MemType.OUT)) | (is_store & (mt != MemType.OUT))
            | (is_load & (mt == MemType.UOP) & ((ys != 1) | pads.any())))
        bad_dep = ((to_load & (mf.pop_prev | mf.push_prev))
                   | (to_store & (mf.pop_next | mf.push_next)))
        bad_alu = (op == Opcode.ALU) & (af.alu_opcode > max(AluOp))
        limit = Signal(17)
        elog = Signal(4)
        with m.Switch(mt):
            for t in MemType:
                with m.Case(t):
                    m.d.comb += [limit.eq(depth(cfg, t)), elog.eq(_log2(elem_bytes(cfg, t)))]
        rows, cols = Signal(17), Signal(17)
        m.d.comb += [
            rows.eq(Mux(is_store, ys, mf.y_pad_0 + ys + mf.y_pad_1)),
            cols.eq(Mux(is_store, xs, mf.x_pad_0 + xs + mf.x_pad_1)),
        ]
        span = Signal(35)
        m.d.comb += span.eq(mf.sram_base + rows * cols)
        bad_sram = is_mem & (xs != 0) & (span > limit)
        end_elems = Signal(34)
        m.d.comb += end_elems.eq(mf.dram_base + (ys - 1)[:16] * mf.x_stride + xs)
        end_bytes = Signal(48)
        m.d.comb += end_bytes.eq(end_elems << elog)
        bad_dram = is_mem & (xs != 0) & (ys != 0) & (end_bytes > (1 << 32))
        code = Signal(3)
        with m.If(bad_op):
            m.d.comb += code.eq(ErrorCode.BAD_OPCODE)
        with m.Elif(bad_mt):
            m.d.comb += code.eq(ErrorCode.BAD_MEM_TYPE)
        with m.Elif(bad_dep):
            m.d.comb += code.eq(ErrorCode.BAD_DEP_FLAG)
        with m.Elif(bad_alu):
            m.d.comb += code.eq(ErrorCode.BAD_ALU_OPCODE)
        with m.Elif(bad_sram):
            m.d.comb += code.eq(ErrorCode.SRAM_RANGE)
        with m.Elif(bad_dram):
            m.d.comb += code.eq(ErrorCode.DRAM_RANGE)
        return code, to_load, to_store, op == Opcode.FINISH
