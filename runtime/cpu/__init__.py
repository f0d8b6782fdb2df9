"""The CPU kernel library: generators of specialised LLVM IR for the operators the accelerator
cannot run, the LLVM JIT that compiles them for the host (:mod:`~tessera.runtime.cpu.jit`), and
:class:`~tessera.runtime.cpu.op.CpuOp`, a plan's CPU step as a sequence of kernel calls.

Kernels are identified by descriptions (op, attributes, input specs); see
:mod:`~tessera.runtime.cpu.kernels`.
"""

from tessera.runtime.cpu.kernels import CpuKernel, clear_cache, get, ops
from tessera.runtime.cpu.op import CpuOp, KernelCall

__all__ = ["CpuKernel", "CpuOp", "KernelCall", "clear_cache", "get", "ops"]
