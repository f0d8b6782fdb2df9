"""Full-core cocotb testbench (tb_core.py) on Verilator, tiny config."""

from __future__ import annotations

import json
from pathlib import Path

from tessera.config import Config
from tessera.sim.cocotb_runner import run_cocotb
from tessera.sim.verilator_build import core_verilog

HERE = Path(__file__).parent


def test_cocotb_core_tiny(tmp_path):
    cfg = Config.preset("tiny")
    run_cocotb(core_verilog(cfg), "tessera_core", "tb_core", work_dir=tmp_path,
               extra_env={"TESSERA_CONFIG": json.dumps(cfg.to_dict()),
                          "TESSERA_SEEDS": "11,12,13",
                          "PYTHONPATH": str(HERE)})
