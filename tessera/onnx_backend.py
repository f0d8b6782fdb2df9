"""``tessera.onnx_backend``: Tessera as an ONNX backend (``onnx.backend.base.Backend``).

A facade over :mod:`tessera.compiler.onnx_backend` (the compiler is imported with it)::

    import tessera.onnx_backend as backend
    outputs = backend.run_model(model, [x])
"""

from tessera.compiler.onnx_backend import (
    INTEGER_OPS,
    TesseraBackend,
    TesseraRep,
    prepare,
    run_model,
    run_node,
    supports_device,
)

__all__ = ["TesseraBackend", "TesseraRep", "prepare", "run_model", "run_node",
           "supports_device", "INTEGER_OPS"]
