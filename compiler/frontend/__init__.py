"""ONNX -> IR."""

from tessera.compiler.frontend.importer import SUPPORTED_ONNX_OPS, import_onnx, load_model

__all__ = ["import_onnx", "load_model", "SUPPORTED_ONNX_OPS"]
