"""The accelerator core: fetch, load, compute and store modules, token queues, AXI master and
AXI4-Lite register file (SPEC §5, §6).

Port contract (the Verilog top ``tessera_core``): ``clk``, ``rst`` (synchronous, active high),
the AXI4 master ``m_axi_*`` (``mem_bus_bits`` data, 32-bit addresses, 4-bit IDs, always 0), the
AXI4-Lite slave ``s_axil_*`` (8-bit addresses, 32-bit data) and ``irq`` (high while CONTROL.done
or CONTROL.error is set).

Every start resets the modules, the command queues and the token queues (spec-notes §2); the
buffers keep their contents. On an error the modules are held in reset (they stop dispatching
and abandon their work at once) while the AXI master completes the transactions already issued;
the run then ends with done and error set. A token deadlock (every module with work left blocked
on a token queue, nothing in flight, nothing left to dispatch) is error 7 (``hw/deadlock.py``).
"""

from __future__ import annotations

from amaranth import Module, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.axi import AxiMaster, axi4_master_members
from tessera.hw.compute import ComputeModule
from tessera.hw.deadlock import DeadlockDetector
from tessera.hw.fetch import Fetch
from tessera.hw.insn import bad_param
from tessera.hw.load import LoadModule
from tessera.hw.queues import TokenQueue
from tessera.hw.regfile import RegFile, axil_slave_members
from tessera.hw.store import StoreModule
from tessera.regs import COUNTERS, ErrorCode

__all__ = ["TesseraCore", "TOP_NAME"]

TOP_NAME = "tessera_core"


class TesseraCore(wiring.Component):
    """The whole accelerator for one :class:`~tessera.config.Config`."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise bad_param(self, f"cfg must be a Config, not {cfg!r}")
        self.cfg = cfg
        members = {**axi4_master_members("m_axi", cfg.mem_bus_bits),
                   **axil_slave_members("s_axil"), "irq": Out(1)}
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.cfg
        m.submodules.regs = regs = RegFile(cfg)
        m.submodules.axi = axi = AxiMaster(cfg, n_readers=3)  # fetch, compute, load

        # --- ports ----------------------------------------------------------------------------
        for name, member in axi4_master_members("m_axi", cfg.mem_bus_bits).items():
            outer, inner = getattr(self, name), getattr(axi, name)
            m.d.comb += (outer.eq(inner) if member.flow == wiring.Out else inner.eq(outer))
        for name, member in axil_slave_members("s_axil").items():
            outer, inner = getattr(self, name), getattr(regs, name)
            m.d.comb += (outer.eq(inner) if member.flow == wiring.Out else inner.eq(outer))
        m.d.comb += self.irq.eq(regs.irq)

        # --- modules, reset at every start and held in reset after an error -----------------------
        clear = Signal()
        m.d.comb += [clear.eq(regs.start | regs.kill), axi.abort.eq(regs.kill)]

        def add(name, block):
            m.submodules[name] = ResetInserter({"sync": clear})(block)
            return block

        fetch = add("fetch", Fetch(cfg))
        load = add("load", LoadModule(cfg))
        compute = add("compute", ComputeModule(cfg))
        store = add("store", StoreModule(cfg))
        q = {n: add(f"q_{n}", TokenQueue(cfg.dep_queue_depth)) for n in ("l2c", "c2l", "c2s",
                                                                          "s2c")}
        wiring.connect(m, fetch.rd, axi.rd0)
        wiring.connect(m, compute.rd, axi.rd1)
        wiring.connect(m, load.rd, axi.rd2)
        wiring.connect(m, store.wr, axi.wr)
        wiring.connect(m, fetch.load_cmd, load.cmd)
        wiring.connect(m, fetch.compute_cmd, compute.cmd)
        wiring.connect(m, fetch.store_cmd, store.cmd)
        wiring.connect(m, load.l2c, q["l2c"].push)
        wiring.connect(m, q["l2c"].pop, compute.l2c)
        wiring.connect(m, compute.c2l, q["c2l"].push)
        wiring.connect(m, q["c2l"].pop, load.c2l)
        wiring.connect(m, compute.c2s, q["c2s"].push)
        wiring.connect(m, q["c2s"].pop, store.c2s)
        wiring.connect(m, store.s2c, q["s2c"].push)
        wiring.connect(m, q["s2c"].pop, compute.s2c)
        m.d.comb += [
            compute.inp_waddr.eq(load.inp_waddr), compute.inp_wdata.eq(load.inp_wdata),
            compute.inp_wen.eq(load.inp_wen),
            compute.wgt_waddr.eq(load.wgt_waddr), compute.wgt_wdata.eq(load.wgt_wdata),
            compute.wgt_wen.eq(load.wgt_wen),
            compute.out_raddr.eq(store.out_raddr), compute.out_ren.eq(store.out_ren),
            store.out_rdata.eq(compute.out_rdata),
            fetch.run.eq(regs.busy & ~regs.kill),
            fetch.insn_addr.eq(regs.insn_addr), fetch.insn_count.eq(regs.insn_count),
        ]

        # --- token-deadlock detection (SPEC §6 v1.1) ----------------------------------------------
        dl = add("deadlock", DeadlockDetector(("load", "compute", "store")))
        for name, block in (("load", load), ("compute", compute), ("store", store)):
            port = getattr(dl, name)
            m.d.comb += [port.busy.eq(block.status.busy | getattr(fetch, f"{name}_queued")),
                         port.blocked.eq(block.status.blocked), port.pc.eq(block.status.pc)]
        m.d.comb += [dl.fetch_stuck.eq(fetch.stuck), dl.quiet.eq(fetch.idle & axi.idle)]

        # --- errors and completion ---------------------------------------------------------------
        with m.If(compute.err):
            m.d.comb += [regs.err.eq(1), regs.err_code.eq(ErrorCode.SRAM_RANGE),
                         regs.err_pc.eq(compute.err_pc)]
        with m.Elif(fetch.err):
            m.d.comb += [regs.err.eq(1), regs.err_code.eq(fetch.err_code),
                         regs.err_pc.eq(fetch.err_pc)]
        with m.Elif(dl.err):
            m.d.comb += [regs.err.eq(1), regs.err_code.eq(ErrorCode.TOKEN_DEADLOCK),
                         regs.err_pc.eq(dl.err_pc)]
        retired = Signal(32)
        retiring = load.retire + compute.retire + store.retire
        with m.If(regs.start):
            m.d.sync += retired.eq(0)
        with m.Else():
            m.d.sync += retired.eq(retired + retiring)
        m.d.comb += [
            regs.finished.eq(fetch.done & fetch.idle & (fetch.dispatched == retired) & axi.idle
                             & compute.quiet),
            regs.quiesced.eq(axi.idle),
        ]

        # --- event counters (regs.COUNTERS order) -----------------------------------------------
        events = {
            "gemm_steps": compute.gemm_step,
            "alu_steps": compute.alu_step,
            "load_busy_cycles": load.busy,
            "store_busy_cycles": store.busy,
            "compute_wait_cycles": compute.waiting,
            "dram_read_bytes": load.read_bytes + compute.read_bytes,
            "dram_write_bytes": store.write_bytes,
            "insns_retired": retiring,
            "gemm_reset_steps": compute.gemm_reset_step,
            "load_insns": load.retire,
            "compute_insns": compute.retire,
            "store_insns": store.retire,
        }
        for name, _, _ in COUNTERS:
            if name not in events:
                raise HwError(f"counter {name!r} of tessera.regs.COUNTERS has no RTL event source")
            m.d.comb += getattr(regs, f"ev_{name}").eq(events[name])
        return m
