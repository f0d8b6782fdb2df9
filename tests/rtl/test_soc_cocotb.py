"""The host link and the DRAM path of the board SoC under cocotb (tb_soc_link.py): the real UART
PHY at the board's baud rate, LiteDRAM with its SDRAM model, and a stand-in core."""

from __future__ import annotations

from pathlib import Path

from standin import standin_verilog

from tessera.config import Config
from tessera.hw.boards.board import get_board
from tessera.hw.boards.build import sim_verilog
from tessera.sim.cocotb_runner import run_cocotb

HERE = Path(__file__).parent


def test_cocotb_soc_link_and_dram_path(tmp_path):
    cfg = Config.preset("ulx3s")
    board = get_board("ulx3s")
    verilog = sim_verilog(cfg, board, uart=True, core_verilog=standin_verilog(cfg.mem_bus_bits))
    run_cocotb(verilog, "sim", "tb_soc_link", work_dir=tmp_path,
               extra_env={"TESSERA_BAUD": str(board.baud),
                          "TESSERA_SYS_NS": f"{1e9 / board.sys_clk_hz:g}",
                          "PYTHONPATH": str(HERE)})
