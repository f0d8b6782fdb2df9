"""A saved model loads and runs with the compiler unimportable (the runtime owns plan, artifact,
model, executor and kernel libraries), through the API and through ``tessera run``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

import tessera
from tessera.cli import SUBCOMMAND_MODULES, build_parser
from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile

BLOCK_COMPILER = textwrap.dedent("""
    import importlib.abc, sys

    class NoCompiler(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tessera.compiler" or name.startswith("tessera.compiler."):
                raise ModuleNotFoundError(f"blocked: {name}", name="tessera.compiler")
            return None

    sys.meta_path.insert(0, NoCompiler())
""")


def _run(code: str, env_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESSERA_CACHE": os.environ.get("TESSERA_CACHE", str(env_dir))}
    return subprocess.run([sys.executable, "-c", BLOCK_COMPILER + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_load_and_run_without_the_compiler(tmp_path):
    proto = zoo.small_cnn()
    name = proto.graph.input[0].name
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(40)
    cal = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    x = rng.standard_normal(shape).astype(np.float32)
    model = tcompile(proto, config="tiny", calibration=cal)
    want = model.run({name: x})
    model.save(tmp_path / "m.tsr")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", want[0])
    res = _run(f"""
        import numpy as np, sys, tessera
        try:
            import tessera.compiler
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("the import hook does not block the compiler")
        m = tessera.load({str(tmp_path / "m.tsr")!r})
        (y,) = m.run({{{name!r}: np.load({str(tmp_path / "x.npy")!r})}})
        assert np.array_equal(y, np.load({str(tmp_path / "want.npy")!r})), "outputs differ"
        assert not [k for k in sys.modules if k.startswith("tessera.compiler")]
        from tessera.cli import main
        assert main(["run", {str(tmp_path / "m.tsr")!r}, "--input",
                     {str(tmp_path / "x.npy")!r}]) == 0
        assert main(["profile", {str(tmp_path / "m.tsr")!r}, "--input",
                     {str(tmp_path / "x.npy")!r}]) == 0
        assert not [k for k in sys.modules if k.startswith("tessera.compiler")]
        print("RUNTIME-ONLY OK")
    """, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RUNTIME-ONLY OK" in res.stdout
    assert "accelerator share of MACs" in res.stdout  # the profile table printed


def test_cli_modules_register_exactly_the_commands_they_own():
    for module, commands in SUBCOMMAND_MODULES.items():
        parser = build_parser(commands[0])
        sub = next(a for a in parser._actions if a.dest == "command")
        assert set(sub.choices) == set(commands) | {"disasm", "config"}, module
    assert tessera.load.__doc__ and "compiler is" in tessera.load.__doc__
