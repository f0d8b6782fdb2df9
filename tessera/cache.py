"""Where Tessera keeps its on-disk caches (Verilator builds, tool shims, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path

from tessera.errors import TesseraError

__all__ = ["cache_dir"]


def cache_dir(name: str) -> Path:
    """``$TESSERA_CACHE/name`` when the variable is set, else ``~/.cache/tessera/name``; created.

    Raises :class:`TesseraError` when the directory cannot be created.
    """
    if not name or "/" in name or name in (".", ".."):
        raise TesseraError(f"cache name must be a plain directory name, not {name!r}")
    root = os.environ.get("TESSERA_CACHE")
    path = (Path(root) if root else Path.home() / ".cache" / "tessera") / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = "$TESSERA_CACHE" if root else "~/.cache/tessera"
        raise TesseraError(f"cannot create the cache directory {str(path)!r} (under {where}): "
                           f"{exc}") from None
    return path
