"""Co-simulation of the board SoC: its Verilator build and the TCP serial harness."""
