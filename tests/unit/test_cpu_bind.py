"""CPU operators bound to fixed buffers (the executor's path): checks at bind time, kernels
compiled lazily by the compiler and at load by the runtime, the same results through arena
views and through a device whose memory is not host-addressable."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile
from tessera.driver.fsim import FsimDevice
from tessera.errors import KernelError
from tessera.runtime.cpu import kernels as cpu_kernels
from tessera.runtime.cpu.op import CpuOp, KernelCall

F32 = np.dtype("float32")


def _chain() -> CpuOp:
    """Relu then Neg on a (2, 6) float tensor: one intermediate slot, one output."""
    relu = cpu_kernels.get("Relu", {}, [((2, 6), "float32")])
    neg = cpu_kernels.get("Neg", {}, [((12,), "float32")])
    return CpuOp("Chain", "chain", [((2, 6), F32)], [((3, 4), F32)],
                 [KernelCall(relu, (0,), (1,)), KernelCall(neg, (1,), (2,))], [2])


def test_bound_op_matches_the_checked_call_and_writes_in_place():
    op = _chain()
    x = np.random.default_rng(70).standard_normal((2, 6)).astype(np.float32)
    y = np.full(12, np.nan, np.float32)  # any shape of the right size and dtype
    bound = op.bind([x], [y])
    bound()
    np.testing.assert_array_equal(y.reshape(3, 4), op(x)[0])
    np.testing.assert_array_equal(y, -np.maximum(x.reshape(-1), 0))
    x[:] = -x  # the binding reads the buffer it was given, every call
    bound()
    np.testing.assert_array_equal(y, -np.maximum(x.reshape(-1), 0))


def test_bind_rejects_bad_buffers_up_front():
    op = _chain()
    x, y = np.zeros((2, 6), np.float32), np.zeros(12, np.float32)
    with pytest.raises(KernelError, match="'chain'.*input 0 must hold float32"):
        op.bind([np.zeros((2, 5), np.float32)], [y])
    with pytest.raises(KernelError, match="output 0 must hold float32"):
        op.bind([x], [np.zeros(12, np.int32)])
    with pytest.raises(KernelError, match="C-contiguous"):
        op.bind([np.zeros((6, 2), np.float32).T], [y])
    ro = np.zeros(12, np.float32)
    ro.flags.writeable = False
    with pytest.raises(KernelError, match="writeable"):
        op.bind([x], [ro])
    with pytest.raises(KernelError, match="binds 1 input"):
        op.bind([x, x], [y])
    relu = cpu_kernels.get("Relu", {}, [((12,), "float32")])
    inplace = CpuOp("Relu", "r", [((12,), F32)], [((12,), F32)],
                    [KernelCall(relu, (0,), (1,))], [1])
    with pytest.raises(KernelError, match="over one of its own arguments"):
        inplace.bind([y], [y])


def test_an_output_that_is_an_input_is_copied():
    op = CpuOp("Identity", "id", [((4,), F32)], [((2, 2), F32)], [], [0])
    x, y = np.arange(4, dtype=np.float32), np.zeros((2, 2), np.float32)
    op.bind([x], [y])()
    np.testing.assert_array_equal(y.reshape(-1), x)


class _RemoteFsim(FsimDevice):
    """fsim whose memory the host may only reach through read()/write() (like a board)."""

    def _host_memory(self):
        return None


def test_compile_does_not_jit_and_both_memory_paths_agree():
    cpu_kernels.clear_cache()
    proto = zoo.resnet_tiny()
    rng = np.random.default_rng(71)
    cal = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    model = tcompile(proto, config="tiny", calibration=cal)
    ops = [s.op for s in model.plan.steps if s.kind == "cpu"]
    assert ops, "the model needs CPU steps for this test"
    assert not any(k.compiled for op in ops for k in op.kernels)
    x = {"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    (viewed,) = model.run(x)
    assert all(k.compiled for op in ops for k in op.kernels)  # compiled at load
    dev = _RemoteFsim(model.config)
    try:
        assert dev.host_view(dev.alloc(16)) is None
        (remote,) = model.run(x, device=dev)
        (again,) = model.run(x, device=dev)
    finally:
        model.close()
        dev.close()
    np.testing.assert_array_equal(viewed, remote)
    np.testing.assert_array_equal(remote, again)
