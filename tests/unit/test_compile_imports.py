"""A compile imports only what it uses: not the reference runtime (onnxruntime), not the RTL
(amaranth), not the plotting, sweep or cocotb stacks (their import time would count in every
compile's)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# top-level packages a compile (import, quantisation, lowering, CPU kernels) must not load
NOT_IMPORTED = ("onnxruntime", "amaranth", "matplotlib", "scipy", "dask", "distributed",
                "cocotb", "litex", "serial")


def test_compile_does_not_import_the_reference_runtime_or_the_rtl(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import tessera
        from tessera.compiler import zoo
        m = tessera.compile(zoo.small_cnn(), config="tiny", progress=False)
        assert m.plan.steps, "nothing compiled"
        loaded = sorted({{k.split(".")[0] for k in sys.modules}} & set({NOT_IMPORTED!r}))
        print("LOADED", loaded)
    """)
    env = {**os.environ, "TESSERA_CACHE": os.environ.get("TESSERA_CACHE", str(tmp_path))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "LOADED []" in res.stdout, res.stdout
