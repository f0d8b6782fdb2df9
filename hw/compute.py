"""The compute module (SPEC §4, §5): UOP/ACC/ACC_8BIT loads, GEMM and ALU, FINISH.

It owns the on-chip buffers: micro-op, input, weight, accumulator and out. The load module
writes the input and weight buffers through the ``inp_w*``/``wgt_w*`` ports; the store module
reads the out buffer through ``out_r*``.

GEMM and ALU run a four-stage pipeline at one micro-op per cycle::

    S0  loop counters -> micro-op read (checks u < uop_depth)
    S1  indices a, x/s, w -> range checks -> acc / inp / wgt reads
    S2  operands (forwarded from S3 on an accumulator-row hit) -> GEMM dot products or ALU op
    S3  acc[a] <- result, out[a] <- low bits of each lane

The accumulator read ports are transparent for its write port, and S2 forwards S3's result, so
back-to-back micro-ops on one accumulator row see each other's writes (sequential semantics).
Index checks are exact (spec-notes §7): the first out-of-range step raises error 3 with the
instruction's pc and nothing after it is written.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.hw.alu import AluLanes
from tessera.hw.axi import read_client_signature
from tessera.hw.deadlock import ModuleStatusSignature
from tessera.hw.dma import RowLoader, Target
from tessera.hw.gemm import GemmArray
from tessera.hw.insn import CMD_PC_BITS, Cmd, bad_param, fields
from tessera.hw.queues import TokenSignature
from tessera.isa import MemType, Opcode, layout

__all__ = ["ComputeModule"]


def _log2(x: int) -> int:
    return x.bit_length() - 1


def _gran(elem_bits: int, bus_bits: int) -> int:
    return min(elem_bits, bus_bits)


class ComputeModule(wiring.Component):
    """Executes the compute command queue; see the module docstring for the pipeline."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self._cfg = cfg
        bus = cfg.mem_bus_bits
        e_inp, e_wgt = cfg.inp_elem_bytes * 8, cfg.wgt_elem_bytes * 8
        super().__init__({
            "cmd": In(stream.Signature(Cmd)),
            "rd": Out(read_client_signature(bus)),
            "l2c": In(TokenSignature),
            "s2c": In(TokenSignature),
            "c2l": Out(TokenSignature),
            "c2s": Out(TokenSignature),
            "inp_waddr": In(16), "inp_wdata": In(e_inp), "inp_wen": In(e_inp // _gran(e_inp, bus)),
            "wgt_waddr": In(16), "wgt_wdata": In(e_wgt), "wgt_wen": In(e_wgt // _gran(e_wgt, bus)),
            "out_raddr": In(16), "out_ren": In(1), "out_rdata": Out(cfg.out_elem_bytes * 8),
            "err": Out(1), "err_pc": Out(CMD_PC_BITS),
            "retire": Out(1), "gemm_step": Out(1), "gemm_reset_step": Out(1),
            "alu_step": Out(1), "waiting": Out(1), "read_bytes": Out(16),
            "status": Out(ModuleStatusSignature),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        lay = layout(cfg)
        bus = cfg.mem_bus_bits
        e_inp, e_wgt = cfg.inp_elem_bytes * 8, cfg.wgt_elem_bytes * 8
        e_acc, e_out = cfg.acc_elem_bytes * 8, cfg.out_elem_bytes * 8
        lanes, ab, ob = cfg.batch * cfg.block_out, cfg.acc_bits, cfg.inp_bits

        # --- buffers ---------------------------------------------------------------------------
        def mem(name, width, depth):
            m.submodules[name] = mm = Memory(shape=width, depth=depth, init=[])
            return mm

        uop_mem = mem("uop_buf", 32, cfg.uop_depth)
        inp_mem = mem("inp_buf", e_inp, cfg.inp_depth)
        wgt_mem = mem("wgt_buf", e_wgt, cfg.wgt_depth)
        acc_mem = mem("acc_buf", e_acc, cfg.acc_depth)
        out_mem = mem("out_buf", e_out, cfg.out_depth)

        def wport(mm, width):
            g = _gran(width, bus)
            return mm.write_port(granularity=g if g < width else None)

        uop_w, uop_r = uop_mem.write_port(), uop_mem.read_port()
        inp_w, inp_r = wport(inp_mem, e_inp), inp_mem.read_port()
        wgt_w, wgt_r = wport(wgt_mem, e_wgt), wgt_mem.read_port()
        acc_w = wport(acc_mem, e_acc)
        acc_ra = acc_mem.read_port(transparent_for=(acc_w,))
        acc_rb = acc_mem.read_port(transparent_for=(acc_w,))
        out_w, out_r = out_mem.write_port(), out_mem.read_port()
        m.d.comb += [
            inp_w.addr.eq(self.inp_waddr), inp_w.data.eq(self.inp_wdata),
            inp_w.en.eq(self.inp_wen),
            wgt_w.addr.eq(self.wgt_waddr), wgt_w.data.eq(self.wgt_wdata),
            wgt_w.en.eq(self.wgt_wen),
            out_r.addr.eq(self.out_raddr), out_r.en.eq(self.out_ren),
            self.out_rdata.eq(out_r.data),
        ]

        # --- loads of UOP (target 0), ACC (1), ACC_8BIT (2) -----------------------------------
        g_acc = _gran(e_acc, bus)
        targets = [Target(32, 32, 32), Target(e_acc, e_acc, g_acc),
                   Target(cfg.acc8_elem_bytes * 8, e_acc, g_acc, sext=True)]
        m.submodules.loader = loader = RowLoader(cfg, targets)
        wiring.connect(m, wiring.flipped(self.rd), loader.rd)
        m.d.comb += [
            uop_w.addr.eq(loader.wr_addr), uop_w.data.eq(loader.wr0_data),
            uop_w.en.eq(loader.wr0_en), self.read_bytes.eq(loader.read_bytes),
        ]

        # --- the current instruction ------------------------------------------------------------
        insn = Signal(128)
        pc = Signal(CMD_PC_BITS)
        gf, af, mf = fields(insn, lay.gemm), fields(insn, lay.alu), fields(insn, lay.mem)
        is_alu = gf.opcode == Opcode.ALU
        reset = gf.reset & ~is_alu  # the ALU ignores reset (spec-notes §5)
        use_imm = af.use_imm
        mt = mf.memory_type
        tsel = Signal(3)
        shift = Signal(4)
        with m.Switch(mt):
            with m.Case(MemType.UOP):
                m.d.comb += [tsel.eq(0), shift.eq(_log2(cfg.uop_elem_bytes))]
            with m.Case(MemType.ACC):
                m.d.comb += [tsel.eq(1), shift.eq(_log2(cfg.acc_elem_bytes))]
            with m.Default():
                m.d.comb += [tsel.eq(2), shift.eq(_log2(cfg.acc8_elem_bytes))]
        lc = loader.cmd.payload
        m.d.comb += [
            lc.target.eq(tsel), lc.sram_base.eq(mf.sram_base),
            lc.addr.eq(mf.dram_base << shift), lc.stride.eq(mf.x_stride << shift),
            lc.x_size.eq(mf.x_size), lc.y_size.eq(mf.y_size),
            lc.y_pad_0.eq(mf.y_pad_0), lc.y_pad_1.eq(mf.y_pad_1),
            lc.x_pad_0.eq(mf.x_pad_0), lc.x_pad_1.eq(mf.x_pad_1),
        ]

        # --- micro-op pipeline --------------------------------------------------------------------
        m.submodules.gemm = gemm = GemmArray(cfg)
        m.submodules.alu = alu = AluLanes(cfg)
        run = Signal()
        start_run = Signal()
        halt = Signal()
        u = Signal(len(gf.uop_end))
        i = Signal(len(gf.iter_out))
        j = Signal(len(gf.iter_in))
        od_o, od, os_o, os_, ow_o, ow = (Signal(32, name=n) for n in (
            "od_o", "od", "os_o", "os", "ow_o", "ow"))
        # loop bounds and source factors, registered when the loop starts (off the S0 path)
        sfo = Signal(max(len(af.src_factor_out), len(gf.src_factor_out)))
        sfi = Signal(max(len(af.src_factor_in), len(gf.src_factor_in)))
        u_last, j_last, i_last = Signal.like(u), Signal.like(j), Signal.like(i)

        with m.If(start_run):
            m.d.sync += [
                run.eq((gf.iter_out != 0) & (gf.iter_in != 0) & (gf.uop_end > gf.uop_bgn)),
                u.eq(gf.uop_bgn), i.eq(0), j.eq(0),
                od_o.eq(0), od.eq(0), os_o.eq(0), os_.eq(0), ow_o.eq(0), ow.eq(0),
                sfo.eq(Mux(is_alu, af.src_factor_out, gf.src_factor_out)),
                sfi.eq(Mux(is_alu, af.src_factor_in, gf.src_factor_in)),
                u_last.eq(gf.uop_end - 1), j_last.eq(gf.iter_in - 1), i_last.eq(gf.iter_out - 1),
            ]
        # S0
        s0_bad = Signal()
        s0_fire = Signal()
        m.d.comb += [
            s0_bad.eq(run & ~halt & (u >= cfg.uop_depth)),
            s0_fire.eq(run & ~halt & ~s0_bad),
            uop_r.addr.eq(u),
        ]
        s1_valid = Signal()
        s1_od, s1_os, s1_ow = Signal(32), Signal(32), Signal(32)
        m.d.sync += [s1_valid.eq(s0_fire), s1_od.eq(od), s1_os.eq(os_), s1_ow.eq(ow)]
        with m.If(s0_fire):
            with m.If(u != u_last):
                m.d.sync += u.eq(u + 1)
            with m.Else():
                m.d.sync += u.eq(gf.uop_bgn)
                with m.If(j != j_last):
                    m.d.sync += [j.eq(j + 1), od.eq(od + gf.dst_factor_in),
                                 os_.eq(os_ + sfi), ow.eq(ow + gf.wgt_factor_in)]
                with m.Else():
                    m.d.sync += j.eq(0)
                    with m.If(i == i_last):
                        m.d.sync += run.eq(0)
                    with m.Else():
                        nd, ns, nw = (od_o + gf.dst_factor_out, os_o + sfo,
                                      ow_o + gf.wgt_factor_out)
                        m.d.sync += [i.eq(i + 1), od_o.eq(nd), od.eq(nd), os_o.eq(ns),
                                     os_.eq(ns), ow_o.eq(nw), ow.eq(nw)]
        # S1
        uf = fields(uop_r.data, lay.uop)
        a1, x1, w1 = Signal(32), Signal(32), Signal(32)
        m.d.comb += [a1.eq(uf.dst_idx + s1_od), x1.eq(uf.src_idx + s1_os),
                     w1.eq(uf.wgt_idx + s1_ow)]
        s1_bad = Signal()
        m.d.comb += s1_bad.eq(s1_valid & ~halt & (
            (a1 >= cfg.acc_depth)
            | (~is_alu & ~reset & ((x1 >= cfg.inp_depth) | (w1 >= cfg.wgt_depth)))
            | (is_alu & ~use_imm & (x1 >= cfg.acc_depth))))
        m.d.comb += [acc_ra.addr.eq(a1), acc_rb.addr.eq(x1), inp_r.addr.eq(x1),
                     wgt_r.addr.eq(w1)]
        s2_valid = Signal()
        s2_a = Signal(range(cfg.acc_depth))
        s2_s = Signal(range(cfg.acc_depth))
        m.d.sync += [s2_valid.eq(s1_valid & ~s1_bad & ~halt), s2_a.eq(a1), s2_s.eq(x1)]
        # S2 (with forwarding from S3) and S3
        s3_valid = Signal()
        s3_a = Signal(range(cfg.acc_depth))
        s3_acc = Signal(e_acc)
        s3_dot = Signal(e_acc)
        s3_alu = Signal(e_acc)
        result = Signal(e_acc)
        acc_a, acc_b = Signal(e_acc), Signal(e_acc)
        m.d.comb += [
            acc_a.eq(Mux(s3_valid & (s3_a == s2_a), result, acc_ra.data)),
            acc_b.eq(Mux(s3_valid & (s3_a == s2_s), result, acc_rb.data)),
            gemm.inp.eq(inp_r.data), gemm.wgt.eq(wgt_r.data),
            alu.op.eq(af.alu_opcode), alu.a.eq(acc_a),
            alu.b.eq(Mux(use_imm, _sext_rep(af.imm, ab, lanes), acc_b)),
        ]
        m.d.sync += [s3_valid.eq(s2_valid), s3_a.eq(s2_a), s3_acc.eq(acc_a),
                     s3_dot.eq(gemm.dot), s3_alu.eq(alu.out)]
        with m.If(is_alu):
            m.d.comb += result.eq(s3_alu)
        with m.Elif(~reset):
            m.d.comb += result.eq(Cat(*[
                (s3_acc[k * ab:(k + 1) * ab] + s3_dot[k * ab:(k + 1) * ab])[:ab]
                for k in range(lanes)]))
        m.d.comb += [
            out_w.addr.eq(s3_a), out_w.en.eq(s3_valid),
            out_w.data.eq(Cat(*[result[k * ab:k * ab + ob] for k in range(lanes)])),
        ]
        with m.If(s3_valid):
            m.d.comb += [acc_w.addr.eq(s3_a), acc_w.data.eq(result), acc_w.en.eq(-1),
                         self.alu_step.eq(is_alu), self.gemm_step.eq(~is_alu & ~reset),
                         self.gemm_reset_step.eq(~is_alu & reset)]
        with m.Else():
            m.d.comb += [acc_w.addr.eq(loader.wr_addr), acc_w.en.eq(loader.wr1_en | loader.wr2_en),
                         acc_w.data.eq(Mux(loader.wr1_en.any(), loader.wr1_data, loader.wr2_data))]

        err = Signal()
        m.d.comb += err.eq(s0_bad | s1_bad)
        with m.If(err):
            m.d.sync += halt.eq(1)
        m.d.comb += [self.err.eq(err), self.err_pc.eq(pc)]
        drained = ~run & ~s1_valid & ~s2_valid & ~s3_valid

        # --- instruction sequencing ------------------------------------------------------------
        pop_ok = ((~gf.pop_prev | self.l2c.valid) & (~gf.pop_next | self.s2c.valid))
        push_ok = ((~gf.push_prev | self.c2l.ready) & (~gf.push_next | self.c2s.ready))
        m.d.comb += self.status.pc.eq(pc)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [insn.eq(self.cmd.payload.insn), pc.eq(self.cmd.payload.pc)]
                    m.next = "POP"
            with m.State("POP"):
                m.d.comb += self.waiting.eq(~pop_ok)
                with m.If(pop_ok):
                    m.d.comb += [self.l2c.ready.eq(gf.pop_prev), self.s2c.ready.eq(gf.pop_next)]
                    with m.Switch(gf.opcode):
                        with m.Case(Opcode.LOAD):
                            m.next = "LOAD"
                        with m.Case(Opcode.GEMM, Opcode.ALU):
                            m.d.comb += start_run.eq(1)
                            m.next = "RUN"
                        with m.Default():
                            m.next = "PUSH"
            with m.State("LOAD"):
                with m.If(mf.x_size == 0):
                    m.next = "PUSH"
                with m.Else():
                    m.d.comb += loader.cmd.valid.eq(1)
                    with m.If(loader.cmd.ready):
                        m.next = "LOAD_WAIT"
            with m.State("LOAD_WAIT"):
                with m.If(~loader.busy):
                    m.next = "PUSH"
            with m.State("RUN"):
                with m.If(halt | err):
                    m.next = "HALT"
                with m.Elif(drained & ~start_run):
                    m.next = "PUSH"
            with m.State("PUSH"):
                with m.If(push_ok):
                    m.d.comb += [self.c2l.valid.eq(gf.push_prev), self.c2s.valid.eq(gf.push_next),
                                 self.retire.eq(1)]
                    m.next = "IDLE"
            with m.State("HALT"):
                pass
        m.d.comb += [
            self.status.busy.eq(~fsm.ongoing("IDLE")),
            self.status.blocked.eq((fsm.ongoing("POP") & ~pop_ok)
                                   | (fsm.ongoing("PUSH") & ~push_ok)),
        ]
        return m


def _sext_rep(imm, width: int, lanes: int):
    """``imm`` sign-extended to ``width`` bits, repeated for every lane."""
    v = imm.as_unsigned()
    return Cat(v, v[-1].replicate(width - len(v))).replicate(lanes)
