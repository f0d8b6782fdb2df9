"""Verilog generation and the ``tessera hw`` CLI."""

from __future__ import annotations

import argparse
import re

import pytest

from tessera.config import Config
from tessera.errors import ConfigError, HwError
from tessera.hw import cli
from tessera.hw.synth import parse_stat
from tessera.hw.verilog import generate_verilog

PORTS = (
    "clk rst irq m_axi_awid m_axi_awaddr m_axi_awlen m_axi_awsize m_axi_awburst m_axi_awvalid "
    "m_axi_awready m_axi_wdata m_axi_wstrb m_axi_wlast m_axi_wvalid m_axi_wready m_axi_bid "
    "m_axi_bresp m_axi_bvalid m_axi_bready m_axi_arid m_axi_araddr m_axi_arlen m_axi_arsize "
    "m_axi_arburst m_axi_arvalid m_axi_arready m_axi_rid m_axi_rdata m_axi_rresp m_axi_rlast "
    "m_axi_rvalid m_axi_rready s_axil_awaddr s_axil_awprot s_axil_awvalid s_axil_awready "
    "s_axil_wdata s_axil_wstrb s_axil_wvalid s_axil_wready s_axil_bresp s_axil_bvalid "
    "s_axil_bready s_axil_araddr s_axil_arprot s_axil_arvalid s_axil_arready s_axil_rdata "
    "s_axil_rresp s_axil_rvalid s_axil_rready"
).split()


def _top_ports(text: str) -> dict[str, int]:
    top = text[text.index("module tessera_core("):]
    top = top[:top.index("endmodule")]
    ports = {}
    for m in re.finditer(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", top, re.M):
        ports[m.group(3)] = int(m.group(2) or 0) + 1
    return ports


def test_cli_writes_verilog_with_the_port_contract(tmp_path) -> None:
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["hw", "verilog", "--config", "tiny", "-o", str(tmp_path)])
    assert args.func(args) == 0
    ports = _top_ports((tmp_path / "tessera_core.v").read_text())
    assert sorted(ports) == sorted(PORTS)
    bus = Config.preset("tiny").mem_bus_bits
    assert ports["m_axi_rdata"] == bus and ports["m_axi_wstrb"] == bus // 8
    assert ports["m_axi_araddr"] == 32 and ports["s_axil_araddr"] == 8
    assert Config.from_json(tmp_path / "config.json") == Config.preset("tiny")


def test_bad_config_is_rejected() -> None:
    with pytest.raises(HwError, match="cfg must be a Config"):
        generate_verilog("tiny")
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["hw", "verilog", "--config", "nope", "-o", "/tmp/x"])
    with pytest.raises(ConfigError):
        args.func(args)


def test_parse_stat_both_yosys_formats() -> None:
    old = "Printing statistics.\n     LUT4                         1234\n     DP16KD  7\n"
    new = "Printing statistics.\n      1234   LUT4\n        12 1.5  MULT18X18D\n"
    assert parse_stat(old)["LUT4"] == 1234 and parse_stat(old)["DP16KD"] == 7
    assert parse_stat(new)["LUT4"] == 1234 and parse_stat(new)["MULT18X18D"] == 12
