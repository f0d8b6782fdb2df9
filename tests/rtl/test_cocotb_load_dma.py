"""Per-block cocotb test of the load DMA (tb_load_dma.py): 2-D strided, zero-padded LOADs of
INP and WGT served by cocotbext-axi's AxiRam, checked element by element against SPEC §4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from load_dma_wrapper import LoadDmaWrapper

from tessera.config import Config
from tessera.sim.cocotb_blocks import block_verilog
from tessera.sim.cocotb_runner import run_cocotb

HERE = Path(__file__).parent

pytestmark = pytest.mark.rtl


@pytest.mark.parametrize("seed", [1, 2])
def test_cocotb_load_dma(seed, tmp_path):
    cfg = Config.preset("tiny")
    run_cocotb(block_verilog(LoadDmaWrapper(cfg), "load_dma"), "load_dma", "tb_load_dma",
               testcase="load_dma_matches_spec", work_dir=tmp_path,
               extra_env={"TESSERA_CONFIG": json.dumps(cfg.to_dict()),
                          "TESSERA_SEED": str(seed), "PYTHONPATH": str(HERE)})
