"""Cycle model of the RTL (see docs/cycle-model.md)."""
