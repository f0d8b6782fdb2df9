"""The compiler's graph IR: one small, typed, immutable-ish graph every pass speaks.

A :class:`Graph` is a list of named inputs, named outputs, nodes in topological order, constants
(numpy arrays) and a :class:`TensorInfo` (shape, dtype and, for quantised tensors, a scale) for
every tensor. Tensors are named by strings; an absent optional input is ``""``. Nodes are frozen;
passes build new graphs with :meth:`Graph.replace` instead of mutating one while iterating.

Shape inference lives next to each op's attribute defaults in :data:`OPS` (:mod:`.ops` and the
op families :mod:`.ops_math`, :mod:`.ops_nn`, :mod:`.ops_shape`, :mod:`.ops_rnn`);
:func:`infer` builds the tensor table of a graph and :meth:`Graph.verify` checks structure and
shapes (:mod:`.graph`).
"""

# The op families register their specs in OPS on import.
from tessera.compiler.ir import ops_math, ops_nn, ops_rnn, ops_shape  # noqa: F401
from tessera.compiler.ir.graph import Graph, GraphBuilder, MemoryPlan, Node, infer
from tessera.compiler.ir.ops import OPS, OpSpec, broadcast_shape, conv_out_size, pool_out_size
from tessera.compiler.ir.tensor import ACTIVATIONS, DTYPES, TensorInfo, blocked_shape

__all__ = [
    "TensorInfo", "Node", "Graph", "OpSpec", "OPS", "DTYPES", "ACTIVATIONS", "infer",
    "conv_out_size", "pool_out_size", "broadcast_shape", "GraphBuilder", "MemoryPlan",
    "blocked_shape",
]
