"""Numpy reference semantics of the IR op families (merged into
:data:`tessera.compiler.reference.KERNELS`). Each kernel takes the node and its input arrays
(None for an absent optional input) and returns the list of outputs; float math is computed in
float64 where that is simpler and cast back to the input dtype."""

from tessera.compiler.refops import math, nn, rnn, shape

KERNELS = {**math.KERNELS, **nn.KERNELS, **shape.KERNELS, **rnn.KERNELS}

__all__ = ["KERNELS"]
