"""Board SoCs: the core, a DRAM controller and a host link, and their bitstream builds."""
