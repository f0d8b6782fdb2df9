"""The compiler: ONNX frontend, graph IR, passes (one flat pipeline), quantisation, and lowering
to the runtime's plan. ``tessera.compile`` is :func:`tessera.compiler.api.compile`."""
