"""Imports point one way: compiler -> runtime -> driver -> sim -> hw -> tessera core.

Every ``import tessera.X``, ``from tessera import X`` and relative import in a layer's source (at
module level or inside a function) must name the same or a lower layer; the ``tessera`` facade
(``__init__``, ``cli``) is exempt. There are no exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = {"tessera": 0, "hw": 1, "sim": 2, "driver": 3, "runtime": 4, "compiler": 5}
FACADE = {"tessera/__init__.py", "tessera/__main__.py", "tessera/cli.py",
          "tessera/onnx_backend.py"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tessera":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "tessera"


def _package(layer: str, path: Path, level: int) -> str:
    """The absolute package a relative import of ``level`` dots in ``path`` starts from."""
    parts = ["tessera"] + ([] if layer == "tessera" else [layer])
    parts += list(path.relative_to(ROOT / layer).parent.parts)
    return ".".join(parts[:len(parts) - (level - 1)])


def test_no_layer_imports_a_higher_one():
    bad = []
    for layer, rank in RANK.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in FACADE:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    base = _package(layer, path, node.level) if node.level else ""
                    module = ".".join(p for p in (base, node.module or "") if p)
                    names = [module] + [f"{module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    target = _layer(name)
                    if target and RANK[target] > rank :
                        bad.append(f"{rel}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)
