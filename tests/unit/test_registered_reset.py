"""The Verilator build's registered-reset wrapper (sim/verilator_build.py)."""

from __future__ import annotations

import re

from tessera.sim.verilator_build import registered_reset

CORE = """module tessera_core(clk, rst, a, y);
  input clk;
  wire clk;
  input rst;
  wire rst;
  input [7:0] a;
  wire [7:0] a;
  output [7:0] y;
  reg [7:0] y = 8'h00;
  always @(posedge clk)
    y <= rst ? 8'h00 : a;
endmodule

module \\tessera_core.sub (clk, rst);
  input clk;
  input rst;
endmodule
"""


def test_wrapper_has_the_ports_and_registers_rst() -> None:
    out = registered_reset(CORE, "tessera_core")
    # the original module is kept under a new name, the rest of the text untouched
    assert "module tessera_core__core(clk, rst, a, y);" in out
    assert "module \\tessera_core.sub (clk, rst);" in out
    top = out[out.index("\nmodule tessera_core(clk, rst, a, y);"):]
    decls = re.findall(r"^(?:input|output)\b[^;]*;", top, re.M)
    assert decls == ["input clk;", "input rst;", "input [7:0] a;", "output [7:0] y;"]
    assert "always @(posedge clk) rst_q <= rst;" in top
    assert "tessera_core__core core (.*, .rst(rst_q));" in top
    assert out.count("module tessera_core(") == 1


def test_other_verilog_is_left_alone() -> None:
    ansi = "module tessera_core(input clk);\n  this is not verilog;\nendmodule\n"
    assert registered_reset(ansi, "tessera_core") == ansi
    no_rst = CORE.replace("  input rst;\n", "")
    assert registered_reset(no_rst, "tessera_core") == no_rst
    assert registered_reset(CORE, "other_top") == CORE
