"""The compute module (SPEC §4, §5): UOP/ACC/ACC_8BIT loads, GEMM and ALU, FINISH.

It owns the on-chip buffers: micro-op, input, weight, accumulator and out. The load module
writes the input and weight buffers through the ``inp_w*``/``wgt_w*`` ports; the store module
reads the out buffer through ``out_r*``. The accumulator and out buffers are split into two
banks (rows below and above ``acc_depth / 2``), each with its own ports.

Two micro-op pipelines run at one step per cycle each, four stages like this::

    S0  loop counters -> micro-op read (checks u < uop_depth)        (hw/uop_loop.py)
    S1  indices -> range checks -> accumulator / input / weight reads
    S2  operands (forwarded from S3 on an accumulator-row hit) -> dot products or ALU op
    S3  acc[a] <- result, out[a] <- low bits of each lane

- the **GEMM pipeline** runs GEMM instructions, in the module's instruction order;
- the **ALU engine** runs ALU instructions from an :data:`ALU_QUEUE_DEPTH`-entry queue, in
  order. The module hands an ALU instruction to the queue and goes on: with the [ext]
  ``deferred`` bit set (spec-notes 15) the instructions after it (GEMMs) run concurrently with
  it; without, the module waits until the engine has drained (the ALU has completed) before it
  retires the instruction. A LOAD waits for the engine to drain before it starts; FINISH, an
  instruction with ``push_next`` and an ALU instruction with any push wait before they push.
  Concurrent GEMMs and deferred ALUs must use different accumulator rows and banks (fsim
  rejects programs that do not); the GEMM pipeline has priority on a bank's ports.

The accumulator read ports are transparent for their bank's write port, and S2 forwards S3's
result, so back-to-back micro-ops of one pipeline on one accumulator row see each other's writes
(sequential semantics). Index checks are exact (spec-notes §7): the first out-of-range step
raises error 3 with the instruction's pc and nothing after it is written.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.alu import AluLanes
from tessera.hw.axi import read_client_signature
from tessera.hw.deadlock import ModuleStatusSignature
from tessera.hw.dma import RowLoader, Target
from tessera.hw.gemm import GemmArray
from tessera.hw.insn import CMD_PC_BITS, Cmd, bad_param, fields
from tessera.hw.queues import TokenSignature
from tessera.hw.uop_loop import UopLoop
from tessera.isa import MemType, Opcode, layout

__all__ = ["ComputeModule", "ALU_QUEUE_DEPTH"]

ALU_QUEUE_DEPTH = 16  # ALU instructions handed to the engine and not yet started


def _log2(x: int) -> int:
    return x.bit_length() - 1


def _gran(elem_bits: int, bus_bits: int) -> int:
    return min(elem_bits, bus_bits)


class ComputeModule(wiring.Component):
    """Executes the compute command queue; see the module docstring for the pipelines."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        if cfg.acc_depth < 2:
            raise bad_param(self, f"the accumulator needs two banks: acc_depth must be at "
                                  f"least 2, not {cfg.acc_depth}")
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
            "quiet": Out(1),
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
        depth = cfg.acc_depth
        hb = _log2(depth) - 1  # the bank bit of an accumulator / out index
        if cfg.out_depth != depth:
            raise HwError("the out buffer must have the accumulator's depth")

        # --- buffers ---------------------------------------------------------------------------
        def mem(name, width, rows):
            m.submodules[name] = mm = Memory(shape=width, depth=rows, init=[])
            return mm

        def wport(mm, width):
            g = _gran(width, bus)
            return mm.write_port(granularity=g if g < width else None)

        uop_mem = mem("uop_buf", 32, cfg.uop_depth)
        inp_mem = mem("inp_buf", e_inp, cfg.inp_depth)
        wgt_mem = mem("wgt_buf", e_wgt, cfg.wgt_depth)
        uop_w, uop_rg, uop_re = uop_mem.write_port(), uop_mem.read_port(), uop_mem.read_port()
        inp_w, inp_r = wport(inp_mem, e_inp), inp_mem.read_port()
        wgt_w, wgt_r = wport(wgt_mem, e_wgt), wgt_mem.read_port()
        acc_w, acc_ra, acc_rb, out_w, out_r = [], [], [], [], []
        for k in range(2):
            am = mem(f"acc_bank{k}", e_acc, depth // 2)
            w = wport(am, e_acc)
            acc_w.append(w)
            acc_ra.append(am.read_port(transparent_for=(w,)))
            acc_rb.append(am.read_port(transparent_for=(w,)))
            om = mem(f"out_bank{k}", e_out, depth // 2)
            out_w.append(om.write_port())
            out_r.append(om.read_port())
        m.d.comb += [
            inp_w.addr.eq(self.inp_waddr), inp_w.data.eq(self.inp_wdata),
            inp_w.en.eq(self.inp_wen),
            wgt_w.addr.eq(self.wgt_waddr), wgt_w.data.eq(self.wgt_wdata),
            wgt_w.en.eq(self.wgt_wen),
        ]
        # the store reads one bank; the bank of the last enabled read selects the data
        out_sel = Signal()
        for k in range(2):
            m.d.comb += [out_r[k].addr.eq(self.out_raddr[:hb]), out_r[k].en.eq(self.out_ren)]
        with m.If(self.out_ren):
            m.d.sync += out_sel.eq(self.out_raddr[hb])
        m.d.comb += self.out_rdata.eq(Mux(out_sel, out_r[1].data, out_r[0].data))

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
        op = gf.opcode
        is_alu, is_fin = op == Opcode.ALU, op == Opcode.FINISH
        reset = gf.reset
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
        halt = Signal()

        # --- GEMM pipeline ------------------------------------------------------------------------
        m.submodules.gemm_loop = gl = UopLoop(cfg, alu=False)
        m.submodules.gemm = gemm = GemmArray(cfg)
        start_run = Signal()
        m.d.comb += [gl.insn.eq(insn), gl.start.eq(start_run), gl.halt.eq(halt),
                     uop_rg.addr.eq(gl.uop_addr), gl.uop_data.eq(uop_rg.data)]
        a1, x1, w1 = gl.dst, gl.src, gl.wgt
        g_bad1 = Signal()
        m.d.comb += g_bad1.eq(gl.s1_valid & ~halt & (
            (a1 >= depth) | (~reset & ((x1 >= cfg.inp_depth) | (w1 >= cfg.wgt_depth)))))
        m.d.comb += [inp_r.addr.eq(x1), wgt_r.addr.eq(w1)]
        g2_valid, g3_valid = Signal(), Signal()
        g2_a, g3_a = Signal(range(depth)), Signal(range(depth))
        m.d.sync += [g2_valid.eq(gl.s1_valid & ~g_bad1 & ~halt), g2_a.eq(a1)]
        g3_acc, g3_dot, g_result = Signal(e_acc), Signal(e_acc), Signal(e_acc)
        g_acc_a = Signal(e_acc)
        m.d.comb += [
            g_acc_a.eq(Mux(g3_valid & (g3_a == g2_a), g_result,
                           Mux(g2_a[hb], acc_ra[1].data, acc_ra[0].data))),
            gemm.inp.eq(inp_r.data), gemm.wgt.eq(wgt_r.data),
        ]
        m.d.sync += [g3_valid.eq(g2_valid), g3_a.eq(g2_a), g3_acc.eq(g_acc_a),
                     g3_dot.eq(gemm.dot)]
        with m.If(~reset):
            m.d.comb += g_result.eq(Cat(*[
                (g3_acc[k * ab:(k + 1) * ab] + g3_dot[k * ab:(k + 1) * ab])[:ab]
                for k in range(lanes)]))
        with m.If(g3_valid):
            m.d.comb += [self.gemm_step.eq(~reset), self.gemm_reset_step.eq(reset)]
        g_drained = ~gl.busy & ~gl.s1_valid & ~g2_valid & ~g3_valid

        # --- ALU engine ---------------------------------------------------------------------------
        m.submodules.alu_q = aq = fifo.SyncFIFOBuffered(width=128 + CMD_PC_BITS,
                                                        depth=ALU_QUEUE_DEPTH)
        m.submodules.alu_loop = el = UopLoop(cfg, alu=True)
        m.submodules.alu = alu = AluLanes(cfg)
        e_insn = Signal(128)
        e_pc = Signal(CMD_PC_BITS)
        ef = fields(e_insn, lay.alu)
        e_run = Signal()
        e_start = Signal()
        m.d.comb += [uop_re.addr.eq(el.uop_addr), el.uop_data.eq(uop_re.data),
                     el.halt.eq(halt), el.start.eq(e_start),
                     el.insn.eq(aq.r_data[:128]), aq.w_data.eq(Cat(insn, pc))]
        ae, se = el.dst, el.src
        e_bad1 = Signal()
        m.d.comb += e_bad1.eq(el.s1_valid & ~halt & (
            (ae >= depth) | (~ef.use_imm & (se >= depth))))
        e2_valid, e3_valid = Signal(), Signal()
        e2_a, e2_s, e3_a = Signal(range(depth)), Signal(range(depth)), Signal(range(depth))
        m.d.sync += [e2_valid.eq(el.s1_valid & ~e_bad1 & ~halt), e2_a.eq(ae), e2_s.eq(se)]
        e3_alu = Signal(e_acc)
        e_a, e_b = Signal(e_acc), Signal(e_acc)
        m.d.comb += [
            e_a.eq(Mux(e3_valid & (e3_a == e2_a), e3_alu,
                       Mux(e2_a[hb], acc_ra[1].data, acc_ra[0].data))),
            e_b.eq(Mux(e3_valid & (e3_a == e2_s), e3_alu,
                       Mux(e2_s[hb], acc_rb[1].data, acc_rb[0].data))),
            alu.op.eq(ef.alu_opcode), alu.a.eq(e_a),
            alu.b.eq(Mux(ef.use_imm, _sext_rep(ef.imm, ab, lanes), e_b)),
        ]
        m.d.sync += [e3_valid.eq(e2_valid), e3_a.eq(e2_a), e3_alu.eq(alu.out)]
        m.d.comb += self.alu_step.eq(e3_valid)
        e_drained = ~el.busy & ~el.s1_valid & ~e2_valid & ~e3_valid
        # take the queue's head when idle, or when the current instruction has drained
        take = aq.r_rdy & ~halt & (~e_run | e_drained)
        m.d.comb += [aq.r_en.eq(take), e_start.eq(take)]
        with m.If(take):
            m.d.sync += [e_insn.eq(aq.r_data[:128]), e_pc.eq(aq.r_data[128:]), e_run.eq(1)]
        with m.Elif(e_run & e_drained):
            m.d.sync += e_run.eq(0)
        engine_idle = Signal()
        m.d.comb += [engine_idle.eq((aq.level == 0) & ~e_run), self.quiet.eq(engine_idle)]

        # --- accumulator and out bank ports: the GEMM pipeline first, then the engine --------
        for k in range(2):
            g_hit1, e_hit1 = gl.s1_valid & (a1[hb] == k), el.s1_valid & (ae[hb] == k)
            m.d.comb += [
                acc_ra[k].addr.eq(Mux(g_hit1 | ~e_hit1, a1[:hb], ae[:hb])),
                acc_rb[k].addr.eq(se[:hb]),
            ]
            g_w, e_w = g3_valid & (g3_a[hb] == k), e3_valid & (e3_a[hb] == k)
            res = Mux(g_w, g_result, e3_alu)
            wa = Mux(g_w, g3_a[:hb], e3_a[:hb])
            with m.If(g_w | e_w):
                m.d.comb += [acc_w[k].addr.eq(wa), acc_w[k].data.eq(res), acc_w[k].en.eq(-1),
                             out_w[k].addr.eq(wa), out_w[k].en.eq(1),
                             out_w[k].data.eq(Cat(*[res[j * ab:j * ab + ob]
                                                    for j in range(lanes)]))]
            with m.Else():
                lw = (loader.wr1_en | loader.wr2_en) & (loader.wr_addr[hb] == k).replicate(
                    len(loader.wr1_en))
                m.d.comb += [acc_w[k].addr.eq(loader.wr_addr[:hb]), acc_w[k].en.eq(lw),
                             acc_w[k].data.eq(Mux(loader.wr1_en.any(), loader.wr1_data,
                                                  loader.wr2_data))]

        # --- errors -----------------------------------------------------------------------------
        g_err, e_err = gl.bad | g_bad1, el.bad | e_bad1
        err = Signal()
        m.d.comb += err.eq(g_err | e_err)
        with m.If(err):
            m.d.sync += halt.eq(1)
        # the engine's instruction is the earlier one in program order
        m.d.comb += [self.err.eq(err), self.err_pc.eq(Mux(e_err, e_pc, pc))]

        # --- instruction sequencing ------------------------------------------------------------
        pop_ok = ((~gf.pop_prev | self.l2c.valid) & (~gf.pop_next | self.s2c.valid))
        push_ok = ((~gf.push_prev | self.c2l.ready) & (~gf.push_next | self.c2s.ready))
        any_push = gf.push_prev | gf.push_next
        drain = (is_alu & (~af.deferred | any_push)) | gf.push_next | is_fin
        drain_wait = drain & ~engine_idle
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
                    with m.Switch(op):
                        with m.Case(Opcode.LOAD):
                            m.next = "DRAIN"
                        with m.Case(Opcode.GEMM):
                            m.d.comb += start_run.eq(1)
                            m.next = "RUN"
                        with m.Case(Opcode.ALU):
                            m.next = "ENQ"
                        with m.Default():
                            m.next = "PUSH"
            with m.State("DRAIN"):  # a LOAD starts once every ALU instruction has completed
                with m.If(halt):
                    m.next = "HALT"
                with m.Elif(engine_idle):
                    m.next = "LOAD"
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
                with m.Elif(g_drained & ~start_run):
                    m.next = "PUSH"
            with m.State("ENQ"):
                with m.If(halt):
                    m.next = "HALT"
                with m.Elif(aq.w_rdy):
                    m.d.comb += aq.w_en.eq(1)
                    m.next = "PUSH"
            with m.State("PUSH"):
                with m.If(halt):
                    m.next = "HALT"
                with m.Elif(~drain_wait & push_ok):
                    m.d.comb += [self.c2l.valid.eq(gf.push_prev), self.c2s.valid.eq(gf.push_next),
                                 self.retire.eq(1)]
                    m.next = "IDLE"
            with m.State("HALT"):
                pass
        blocked = (fsm.ongoing("POP") & ~pop_ok) | (fsm.ongoing("PUSH") & ~drain_wait & ~push_ok)
        m.d.comb += [
            self.status.busy.eq(~fsm.ongoing("IDLE") | ~engine_idle),
            self.status.blocked.eq(blocked & engine_idle),
        ]
        return m


def _sext_rep(imm, width: int, lanes: int):
    """``imm`` sign-extended to ``width`` bits, repeated for every lane."""
    v = imm.as_unsigned()
    return Cat(v, v[-1].replicate(width - len(v))).replicate(lanes)
