"""The command-stream builder: micro-op cache, dependency tokens, barriers, virtual threads."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import ProgramError
from tessera.isa import AluOp, GemmInsn, MemInsn, MemType, Opcode, Uop
from tessera.runtime.accel import (
    ConvShape,
    ConvTiles,
    Epilogue,
    LayerAddrs,
    apply_epilogue,
    emit_conv2d,
    emit_dense,
)
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.deps import HappensBefore, Module, check_tokens, check_tokens_encoded
from tessera.runtime.layout import (
    pack_activation,
    pack_bias,
    pack_matrix_a,
    pack_matrix_b,
    pack_weights,
    unpack_activation,
    unpack_matrix,
)
from tessera.runtime.uop_cache import KernelBuilder, MicroKernel, UopCache

TINY = Config.preset("tiny")
L, C, S = Module.LOAD, Module.COMPUTE, Module.STORE


def _span(base: int, n: int) -> MicroKernel:
    """An ALU kernel over n accumulator rows, all n micro-ops explicit (no loop)."""
    return MicroKernel(tuple(Uop(base + i, base + i, 0) for i in range(n)))


# -- layout ---------------------------------------------------------------------------------


def test_layout_roundtrips_and_padding():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (3, 6, 5, 4), dtype=np.int8)
    p = pack_activation(x, TINY)
    assert p.shape == (3, 2, 5, 4, 1, 4)
    assert p[1, 1, 2, 3, 0, 1] == x[1, 5, 2, 3] and p[1, 1, 2, 3, 0, 2] == 0  # channel 6 pads
    assert np.array_equal(unpack_activation(p, x.shape), x)
    w = rng.integers(-128, 128, (5, 6, 3, 2), dtype=np.int8)
    pw = pack_weights(w, TINY)
    assert pw.shape == (2, 2, 3, 2, 4, 4)
    assert pw[1, 0, 2, 1, 0, 3] == w[4, 3, 2, 1] and pw[1, 0, 2, 1, 1, 3] == 0
    a = rng.integers(-128, 128, (7, 9), dtype=np.int8)
    pa = pack_matrix_a(a, TINY)
    assert pa.shape == (7, 3, 1, 4) and pa[6, 2, 0, 0] == a[6, 8]
    b = rng.integers(-128, 128, (9, 6), dtype=np.int8)
    pb = pack_matrix_b(b, TINY)
    assert pb.shape == (2, 3, 4, 4) and pb[1, 2, 1, 0] == b[8, 5]
    c = rng.integers(-128, 128, (7, 2, 1, 4), dtype=np.int8)
    assert np.array_equal(unpack_matrix(c, 7, 6), c.reshape(7, 8)[:, :6])
    bias = pack_bias(np.arange(6), Config(log_batch=1, log_block=2, log_uop_buff_size=10,
                                          log_inp_buff_size=10, log_wgt_buff_size=12,
                                          log_acc_buff_size=11))
    assert bias.shape == (2, 2, 4) and bias[1, 1, 1] == 5 and bias[1, 0, 3] == 0
    with pytest.raises(ProgramError, match="int8"):
        pack_activation(x.astype(np.int16), TINY)


# -- micro-kernels and the uop cache --------------------------------------------------------


def test_kernel_builder_loop_nest():
    kb = KernelBuilder()
    kb.loop_begin(3, dst_factor=4, src_factor=5, wgt_factor=0)
    kb.loop_begin(4, dst_factor=1, src_factor=0, wgt_factor=2)
    kb.push(0, 1, 2)
    kb.push(0, 2, 3)
    kb.loop_end()
    kb.loop_end()
    k = kb.build()
    assert (k.iter_out, k.iter_in, k.dst_factor_out, k.dst_factor_in) == (3, 4, 4, 1)
    assert (k.src_factor_out, k.wgt_factor_in, len(k.uops), k.steps) == (5, 2, 2, 24)
    one = KernelBuilder()
    one.loop_begin(7, 1, 1)
    one.push(3, 3)
    one.loop_end()
    assert (one.build().iter_out, one.build().iter_in) == (7, 1)
    bad = KernelBuilder()
    for _ in range(2):
        bad.loop_begin(2)
    with pytest.raises(ProgramError, match="at most two"):
        bad.loop_begin(2)
    bad = KernelBuilder()
    bad.loop_begin(2)
    bad.push(0)
    bad.loop_end()
    with pytest.raises(ProgramError, match="perfect"):
        bad.push(1)
    bad = KernelBuilder()
    bad.loop_begin(2)
    bad.push(0)
    with pytest.raises(ProgramError, match="open"):
        bad.build()
    with pytest.raises(ProgramError, match="at least one"):
        KernelBuilder().build()


def test_uop_cache_lru_placement():
    cache = UopCache(10)
    assert cache.lookup(b"a", 4) == (0, False)
    assert cache.lookup(b"b", 4) == (4, False)
    assert cache.lookup(b"a", 4) == (0, True)  # a is now most recently used
    assert cache.lookup(b"c", 4) == (4, False)  # evicts b, the least recently used
    assert b"a" in cache and b"b" not in cache and cache.stats.evictions == 1
    assert cache.lookup(b"d", 2) == (8, False)
    cache.invalidate()
    assert len(cache) == 0 and cache.stats.invalidations == 1
    assert cache.lookup(b"a", 4) == (0, False)
    with pytest.raises(ProgramError, match="does not fit"):
        cache.lookup(b"huge", 11)


def test_uop_cache_reuse_eviction_invalidation_on_device():
    """Kernels of 100 micro-ops in a 256-entry buffer: reuse, LRU eviction and reload, all
    producing the right accumulator values; the cache is invalidated by synchronize()."""
    rng = np.random.default_rng(1)
    dev = open_device("fsim", TINY)
    init = rng.integers(-50, 50, (120, 1, 4)).astype(np.int32)
    src = dev.alloc(init.nbytes)
    dst = dev.alloc(120 * 4)
    dev.write(src.addr, init)
    b = CommandBuilder(TINY, dev)
    kernels = {name: _span(base, 100) for name, base in (("A", 0), ("B", 10), ("C", 20))}
    adds = {"A": 1, "B": 10, "C": 100}
    b.load_2d(MemType.ACC, 0, src.addr // 16, 1, 120, 120)
    want = init.astype(np.int64).copy()
    for name in ("A", "A", "B", "C", "A"):
        b.alu(kernels[name], AluOp.ADD, adds[name])
        base = kernels[name].uops[0].dst_idx
        want[base:base + 100] += adds[name]
    st = b.uop_cache.stats
    # A miss, A hit, B miss, C miss (evicts A), A miss again (evicts B).
    assert (st.hits, st.misses, st.evictions) == (1, 4, 2)
    prog_uop_loads = [i for i in b.insns if isinstance(i, MemInsn)
                      and i.memory_type == MemType.UOP]
    assert len(prog_uop_loads) == 4
    b.dep_push(C, S)
    b.dep_pop(C, S)
    b.store_2d(0, dst.addr // 4, 1, 120, 120)
    b.synchronize()
    assert len(b.last_program.uop_words) == 3 * 100 * 4  # A stored once in DRAM, loaded twice
    got = dev.read_array(dst.addr, (120, 1, 4), np.int8)
    assert np.array_equal(got, want.astype(np.int8))
    assert st.invalidations == 1
    b.alu(kernels["A"], AluOp.ADD, 0)
    assert st.misses == 5  # not trusted across runs: loaded again
    b.synchronize()


# -- dependency tokens ------------------------------------------------------------------------


def _gemm_kernel() -> MicroKernel:
    return MicroKernel((Uop(0, 0, 0),))


def test_push_and_pop_fold_into_neighbouring_instructions():
    b = CommandBuilder(TINY)
    b.load_2d(MemType.INP, 0, 0, 1, 4, 4)
    b.dep_push(L, C)
    b.dep_pop(L, C)
    b.gemm(_gemm_kernel())
    b.dep_push(C, S)
    b.dep_pop(C, S)
    b.store_2d(0, 0, 1, 1, 1)
    assert b.stats.noops == 0 and b.stats.pushes_folded == 2 and b.stats.pops_folded == 2
    load, uop_load, gemm, store = b.insns
    assert load.push_next == 1
    assert uop_load.memory_type == MemType.UOP and uop_load.pop_prev == 1  # first compute insn
    assert gemm.push_next == 1 and gemm.pop_prev == 0
    assert store.pop_prev == 1
    check_tokens(b.insns, TINY.dep_queue_depth)


def test_noops_when_no_instruction_can_carry_the_flag():
    b = CommandBuilder(TINY)
    b.dep_push(L, C)  # nothing emitted by load yet: a sync-only LOAD
    assert b.insns[-1] == MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, y_size=0,
                                  x_size=0, push_next=1)
    b.dep_push(L, C)  # the flag is already set on the last load instruction
    assert len(b.insns) == 2 and b.stats.noops == 2
    b.dep_pop(L, C)
    b.dep_pop(L, C)  # two pops on one queue: the first goes onto an empty GEMM
    assert isinstance(b.insns[-1], GemmInsn) and b.insns[-1].pop_prev == 1
    assert b.insns[-1].uop_bgn == b.insns[-1].uop_end
    b.dep_push(S, C)  # store never ran: a sync-only STORE
    assert b.insns[-1].opcode == Opcode.STORE and b.insns[-1].x_size == 0
    b.dep_pop(S, C)
    b.dep_push(C, L)  # compute has pending pops that must precede this push: a no-op
    last = b.insns[-1]
    assert isinstance(last, GemmInsn) and last.pop_prev and last.pop_next and last.push_prev
    assert b.stats.noops == 5
    assert check_tokens(b.insns, TINY.dep_queue_depth) == {"L2C": 2, "C2L": 1, "C2S": 0,
                                                           "S2C": 1}


def test_token_misuse_is_rejected():
    b = CommandBuilder(TINY)
    with pytest.raises(ProgramError, match="no dependency queue from load to store"):
        b.dep_push(L, S)
    with pytest.raises(ProgramError, match="C2S with no token"):
        b.dep_pop(C, S)
    for _ in range(TINY.dep_queue_depth):
        b.dep_push(L, C)
    with pytest.raises(ProgramError, match="dep_queue_depth=8"):
        b.dep_push(L, C)
    # The stream checker catches what a hand-written stream gets wrong.
    too_many = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0, push_next=1)] * 9
    with pytest.raises(ProgramError, match="more than dep_queue_depth"):
        check_tokens(too_many, 8)
    with pytest.raises(ProgramError, match="pops L2C before"):
        check_tokens([GemmInsn(pop_prev=1)], 8)
    with pytest.raises(ProgramError, match="illegal on the store"):
        check_tokens([MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, push_next=1)], 8)



def _random_stream(rng, cfg: Config, n: int) -> list:
    """Records of every kind with random header flags (most streams break the token rules)."""
    from tessera.isa import AluInsn, FinishInsn

    out = []
    for _ in range(n):
        flags = {f: int(rng.random() < 0.15) for f in ("pop_prev", "pop_next", "push_prev",
                                                      "push_next")}
        kind = int(rng.integers(6))
        if kind < 3:
            mt = [MemType.INP, MemType.WGT, MemType.ACC, MemType.UOP, MemType.ACC_8BIT][
                int(rng.integers(5))]
            out.append(MemInsn(opcode=Opcode.LOAD, memory_type=mt, x_size=int(rng.integers(2)),
                               **flags))
        elif kind == 3:
            out.append(MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, **flags))
        elif kind == 4:
            out.append(GemmInsn(reset=int(rng.integers(2)), **flags))
        else:
            out.append(AluInsn(**flags))
    return out + [FinishInsn()]


@pytest.mark.parametrize("seed", range(6))
def test_token_check_and_counts_of_the_encoding_equal_the_record_walk(seed):
    """check_tokens_encoded (from the words) gives check_tokens' peaks or its exact error, and
    Program.counts() from the words equals the per-record count, keys in the same order."""
    import dataclasses
    from collections import Counter

    from tessera.isa import to_bytes
    from tessera.runtime.builder import Program, insn_kind

    rng = np.random.default_rng(seed)
    for trial in range(40):
        insns = _random_stream(rng, TINY, int(rng.integers(1, 30)))
        if trial % 2:  # a legal stream: keep only flags the modules may set, no early pop
            insns = [i for i in insns if not (i.pop_prev or i.pop_next)]
        code = to_bytes(insns, TINY)
        cfg = dataclasses.replace(TINY, dep_queue_depth=int(rng.integers(1, 4)))
        depth = cfg.dep_queue_depth
        try:
            want = check_tokens(insns, depth)
        except ProgramError as exc:
            with pytest.raises(ProgramError, match=re.escape(str(exc))):
                check_tokens_encoded(code, insns, cfg)
        else:
            assert check_tokens_encoded(code, insns, cfg) == want
        prog = Program(cfg, list(insns), b"", [], (tuple(insns), code))
        got = prog.counts()
        ref = Counter(map(insn_kind, insns))
        assert got == ref and list(got) == list(ref)


def test_a_finished_program_reuses_its_encoding_only_while_unchanged():
    import dataclasses

    from tessera.isa import to_bytes

    b = CommandBuilder(TINY)
    b.load_2d(MemType.INP, 0, 0, 1, 4, 4)
    b.dep_push(L, C)
    b.dep_pop(L, C)
    b.gemm(_gemm_kernel())
    prog = b.finish()
    assert prog.to_bytes(0) == to_bytes(prog.insns, TINY)
    prog.insns[0] = dataclasses.replace(prog.insns[0], dram_base=7)  # edited in place
    assert prog.to_bytes(0) == to_bytes(prog.insns, TINY)
    assert prog.counts() == {"uop_load": 1, "load": 1, "gemm": 1, "finish": 1}
    prog.insns.pop()
    assert prog.to_bytes(0) == to_bytes(prog.insns, TINY) and "finish" not in prog.counts()

def test_barrier_orders_store_before_later_load():
    b = CommandBuilder(TINY)
    b.load_2d(MemType.INP, 0, 0, 1, 4, 4)
    b.dep_push(L, C)
    b.dep_pop(L, C)
    b.gemm(_gemm_kernel())
    b.dep_push(C, S)
    b.dep_pop(C, S)
    store = b.store_2d(0, 64, 1, 1, 1)
    b.barrier()
    n = len(b.insns)
    b.barrier()  # nothing since the last one: no-op
    assert len(b.insns) == n
    later_load = b.load_2d(MemType.INP, 0, 64, 1, 1, 1)
    later_gemm = b.gemm(_gemm_kernel())
    later_store = b.store_2d(1, 65, 1, 1, 1)
    hb = HappensBefore(b.insns)
    assert hb.ordered(store, later_load) and hb.ordered(store, later_gemm)
    assert hb.ordered(0, later_store) and hb.ordered(0, later_gemm)
    check_tokens(b.insns, TINY.dep_queue_depth)


# -- virtual threads --------------------------------------------------------------------------


def _matmul_stream(threads: int):
    rng = np.random.default_rng(2)
    m, k, n = 8, 48, 16  # blocks: 8 x 12 x 4
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    bm = rng.integers(-128, 128, (k, n), dtype=np.int8)
    dev = open_device("fsim", TINY)
    pa, pb = pack_matrix_a(a, TINY), pack_matrix_b(bm, TINY)
    bufs = [dev.alloc(x.nbytes) for x in (pa, pb)]
    out = dev.alloc(m * n)
    for buf, x in zip(bufs, (pa, pb)):
        dev.write(buf.addr, x)
    b = CommandBuilder(TINY, dev)
    plan = ConvTiles(to=2, th=1, kc=4, double_buffer=threads == 2, tn=2)  # 3 stages per tile
    emit_dense(b, m, k, n, LayerAddrs(bufs[0].addr, bufs[1].addr, out.addr), tiles=plan)
    insns = list(b.insns)
    b.synchronize()
    got = unpack_matrix(dev.read_array(out.addr, (8, 4, 1, 4), np.int8), m, n)
    ref = np.clip(a.astype(np.int64) @ bm.astype(np.int64), -128, 127)
    assert np.array_equal(got, ref)
    gemms = [pc for pc, i in enumerate(insns) if isinstance(i, GemmInsn) and not i.reset]
    loads = [pc for pc, i in enumerate(insns)
             if isinstance(i, MemInsn) and i.opcode == Opcode.LOAD and i.memory_type == MemType.INP]
    assert len(gemms) == len(loads) == 4 * 2 * 3
    return HappensBefore(insns), gemms, loads


def test_double_buffering_overlaps_load_with_compute():
    hb, gemms, loads = _matmul_stream(threads=2)
    for u in range(len(gemms) - 1):
        # the load of step u+1 is not ordered after the GEMM of step u (nor before it)
        assert not hb.ordered(gemms[u], loads[u + 1])
        assert not hb.ordered(loads[u + 1], gemms[u])
        assert hb.ordered(loads[u], gemms[u])
        if u + 2 < len(loads):  # same half: the overwrite waits for the GEMM
            assert hb.ordered(gemms[u], loads[u + 2])


def test_single_thread_serialises_load_and_compute():
    hb, gemms, loads = _matmul_stream(threads=1)
    for u in range(len(gemms) - 1):
        assert hb.ordered(gemms[u], loads[u + 1])


# -- bad requests -----------------------------------------------------------------------------


def test_bad_requests_raise_program_error_naming_the_problem():
    b = CommandBuilder(TINY)
    with pytest.raises(ProgramError, match="INP, WGT, ACC or ACC_8BIT, not OUT"):
        b.load_2d(MemType.OUT, 0, 0, 1, 1, 1)
    with pytest.raises(ProgramError, match="exceeds the buffer depth 256"):
        b.load_2d(MemType.INP, 250, 0, 2, 4, 4)
    with pytest.raises(ProgramError, match="y_pad_1 must be in"):
        b.load_2d(MemType.INP, 0, 0, 1, 1, 1, (0, 16, 0, 0))
    with pytest.raises(ProgramError, match="32-bit address space"):
        b.load_2d(MemType.WGT, 0, (1 << 32) - 2, 1, 4, 4)
    with pytest.raises(ProgramError, match="use noop"):
        b.store_2d(0, 0, 1, 0, 1)
    with pytest.raises(ProgramError, match="OUT region .* exceeds"):
        b.store_2d(120, 0, 2, 5, 5)
    with pytest.raises(ProgramError, match="accumulator index 128"):
        b.gemm(MicroKernel((Uop(0, 0, 0),), iter_in=129, dst_factor_in=1))
    with pytest.raises(ProgramError, match="weight index"):
        b.gemm(MicroKernel((Uop(0, 0, 300),)))
    with pytest.raises(ProgramError, match="imm must fit"):
        b.alu(_span(0, 1), AluOp.ADD, 40000)
    with pytest.raises(ProgramError, match="accumulator index 5000"):
        b.gemm(MicroKernel((Uop(0, 0, 0),), iter_out=2, dst_factor_out=5000))
    with pytest.raises(ProgramError, match="needs a device"):
        b.synchronize()
    with pytest.raises(ProgramError, match="multipliers must fit int16"):
        Epilogue(1 << 15)
    with pytest.raises(ProgramError, match="shift must be an integer in"):
        Epilogue(shift=63)
    with pytest.raises(ProgramError, match="padding pt must be a non-negative integer"):
        emit_conv2d(b, ConvShape(1, 4, 8, 8, 4, 3, 3, pt=-1), LayerAddrs(0, 0, 0))
    with pytest.raises(ProgramError, match="multiple of 4 bytes"):
        emit_conv2d(b, ConvShape(1, 4, 8, 8, 4, 3, 3), LayerAddrs(2, 0, 0))
    small = Config(**{**TINY.to_dict(), "log_acc_buff_size": 5})  # two accumulator rows
    with pytest.raises(ProgramError, match="no conv2d tiling.*constants exceed"):
        emit_conv2d(CommandBuilder(small), ConvShape(1, 4, 8, 8, 4, 3, 3),
                    LayerAddrs(0, 0, 0, 0), Epilogue(np.arange(1, 5), 4))
    assert b.insns == []  # nothing half-emitted by the failed requests


# -- requantisation ---------------------------------------------------------------------------


def test_epilogue_reference_is_round_half_up_and_clip():
    rng = np.random.default_rng(3)
    acc = rng.integers(-(1 << 22), 1 << 22, 5000)
    for shift in (1, 7, 15, 16, 20, 31):
        for mul in (1, 3, -77, 511):
            for rnd in (False, True):
                rq = Epilogue(mul, shift, lo=-100, hi=90, rounding=rnd)
                x = acc * mul  # no wrap: |acc*mul| < 2**31
                want = (x + (1 << (shift - 1))) >> shift if rnd else x >> shift
                want = np.clip(want, -100, 90)
                assert np.array_equal(apply_epilogue(acc, rq), want), (shift, mul, rnd)
    assert [AluOp[s.opcode] for s in Epilogue(shift=20).alu_steps()] == [
        AluOp.SHR, AluOp.ADD, AluOp.SHR, AluOp.MIN, AluOp.MAX]


def test_factors_of_a_single_iteration_level_are_encoded_as_zero():
    # The factor of a loop level that runs once is only ever multiplied by 0, so it may exceed
    # its field on a small config; the builder encodes it as 0 instead of refusing it.
    b = CommandBuilder(TINY)
    pc = b.gemm(MicroKernel((Uop(0, 0, 0),), iter_out=1, dst_factor_out=5000, iter_in=2,
                            dst_factor_in=3))
    insn = b.insns[pc]
    assert isinstance(insn, GemmInsn)
    assert (insn.dst_factor_out, insn.dst_factor_in, insn.iter_in) == (0, 3, 2)
