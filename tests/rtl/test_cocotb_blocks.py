"""Per-block cocotb testbenches (tb_blocks.py): the GEMM array and a token queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.config import Config
from tessera.sim.cocotb_blocks import block_verilog
from tessera.sim.cocotb_runner import run_cocotb

HERE = Path(__file__).parent


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_cocotb_gemm_array(preset, tmp_path):
    from tessera.hw.gemm import GemmArray

    cfg = Config.preset(preset)
    run_cocotb(block_verilog(GemmArray(cfg), "gemm_array"), "gemm_array", "tb_blocks",
               testcase="gemm_array_matches_reference",
               work_dir=tmp_path, extra_env={"TESSERA_CONFIG": json.dumps(cfg.to_dict()),
                                             "PYTHONPATH": str(HERE)})


def test_cocotb_token_queue(tmp_path):
    from tessera.hw.queues import TokenQueue

    depth = Config.preset("default").dep_queue_depth
    run_cocotb(block_verilog(TokenQueue(depth), "token_queue"), "token_queue", "tb_blocks",
               testcase="token_queue_matches_model", work_dir=tmp_path,
               extra_env={"TESSERA_DEPTH": str(depth), "TESSERA_CONFIG": "{}",
                          "PYTHONPATH": str(HERE)})
