"""Per-layer run figures: what ``CompiledModel.run(..., profile=True)`` returns.

For every accelerator layer: the cycles the device measured (the RTL on ``verilator``, the cycle
model on ``fsim``), the cycle model's prediction (``predicted``; on fsim the same number), the
tiler's own estimate when the plan carries one, and the layer's roofline: its ``bound``, the
fewest cycles its work and DRAM traffic allow, and ``attainment`` = bound / cycles.

The roofline takes the layer's real traffic: the read channel carries the payload of its LOADs
plus 16 bytes per fetched instruction, the write channel its STOREs; the harness moves one bus
beat per credit period on each channel, in parallel, so the DRAM bound is the busier channel's
bytes over the channel's bytes per cycle. The compute bound is the layer's useful MACs over the
array's MACs per cycle (BATCH x BLOCK_IN x BLOCK_OUT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tessera.config import Config
from tessera.isa import INSN_BYTES

__all__ = ["LayerProfile", "Profile", "Roofline"]


@dataclass(frozen=True)
class Roofline:
    """One layer on the roofline: ``intensity`` (MACs per byte of the busier DRAM channel),
    ``macs_per_cycle`` attained, ``bound`` (cycles) and which roof sets it."""

    intensity: float
    macs_per_cycle: float
    bound: int
    limit: str  # "compute" or "dram"


@dataclass
class LayerProfile:
    name: str
    kind: str  # "accel" or "cpu"
    op: str
    wall_ms: float
    cycles: int | None = None
    macs: int = 0
    gemm_steps: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    predicted: int | None = None  # the cycle model's prediction
    program: tuple[bytes, int, int] | None = field(default=None, repr=False)  # code, addr, n

    def utilisation(self, cfg: Config) -> float | None:
        """GEMM utilisation: useful MACs / (cycles x MACs per cycle), on kinds with timing."""
        if not self.cycles:
            return None
        return self.macs / (self.cycles * cfg.macs_per_gemm_step)

    @property
    def estimate(self) -> int | None:
        """The tiler's cost-model estimate of the layer's cycles, if the plan carries one."""
        est = self.info.get("est_cycles")
        return int(est) if est else None

    def channel_bytes(self) -> tuple[int, int] | None:
        """Bytes on the read channel (loads and instruction fetch) and the write channel."""
        c = self.counters
        if "dram_read_bytes" not in c or "insns_retired" not in c:
            return None
        fetched = self.program[2] if self.program is not None else c["insns_retired"]
        return c["dram_read_bytes"] + INSN_BYTES * fetched, c.get("dram_write_bytes", 0)

    def roofline(self, cfg: Config, period: int = 1) -> Roofline | None:
        """The layer's roofline point for a DRAM with one beat per ``period`` cycles."""
        traffic = self.channel_bytes()
        if self.kind != "accel" or traffic is None or not self.macs:
            return None
        busiest = max(traffic)
        compute = -(-self.macs // cfg.macs_per_gemm_step)
        dram = -(-busiest * period // cfg.mem_bus_bytes)
        attained = self.macs / self.cycles if self.cycles else 0.0
        return Roofline(self.macs / max(busiest, 1), attained, max(compute, dram),
                        "compute" if compute >= dram else "dram")


@dataclass
class Profile:
    device: str
    config: Config
    layers: list[LayerProfile]
    dram: Any = None  # tessera.sim.timing.DramTiming of the device, when it has one

    @property
    def period(self) -> int:
        """Cycles per DRAM beat of each channel (the harness's token bucket)."""
        if self.dram is None:
            return 1
        from tessera.sim.timing.port import credit_period

        return credit_period(self.dram.beats_per_cycle)

    def totals(self) -> dict[str, Any]:
        acc = [p for p in self.layers if p.kind == "accel"]
        cpu = [p for p in self.layers if p.kind == "cpu"]
        cycles = [p.cycles for p in acc if p.cycles is not None]
        macs_acc = sum(p.macs for p in acc)
        out = {"accel_layers": len(acc), "cpu_ops": len(cpu),
               "accel_wall_ms": sum(p.wall_ms for p in acc),
               "cpu_wall_ms": sum(p.wall_ms for p in cpu), "accel_macs": macs_acc,
               "cpu_macs": sum(p.macs for p in cpu),
               "cycles": sum(cycles) if len(cycles) == len(acc) and acc else None}
        if out["cycles"]:
            out["utilisation"] = macs_acc / (out["cycles"] * self.config.macs_per_gemm_step)
        predicted = [p.predicted for p in acc if p.predicted is not None]
        out["predicted_cycles"] = sum(predicted) if acc and len(predicted) == len(acc) else None
        roofs = [p.roofline(self.config, self.period) for p in acc]
        if acc and all(r is not None for r in roofs):
            out["bound_cycles"] = sum(r.bound for r in roofs)
            if out["cycles"]:
                out["attainment"] = out["bound_cycles"] / out["cycles"]
        return out

    def table(self) -> str:
        cfg = self.config
        period = self.period
        lines = [f"{'layer':<28} {'where':<6} {'op':<16} {'cycles':>10} {'model':>10} "
                 f"{'tiler est':>10} {'bound':>10} {'attain':>6} {'util':>6} {'MMACs':>8} "
                 f"{'insns':>6} {'KB in':>8} {'KB out':>7} {'ms':>8}"]

        def num(v):
            return v if v is not None else "-"

        for p in self.layers:
            util = p.utilisation(cfg)
            c = p.counters
            insns = c.get("insns_retired")
            kb_in = c.get("dram_read_bytes")
            kb_out = c.get("dram_write_bytes")
            roof = p.roofline(cfg, period)
            attain = roof.bound / p.cycles if roof is not None and p.cycles else None
            lines.append(
                f"{p.name[:28]:<28} {p.kind:<6} {p.op[:16]:<16} {num(p.cycles):>10} "
                f"{num(p.predicted):>10} {num(p.estimate):>10} "
                f"{num(roof.bound if roof else None):>10} "
                f"{f'{attain:.0%}' if attain is not None else '-':>6} "
                f"{f'{util:.0%}' if util is not None else '-':>6} {p.macs / 1e6:>8.2f} "
                f"{num(insns):>6} "
                f"{f'{kb_in / 1024:.1f}' if kb_in is not None else '-':>8} "
                f"{f'{kb_out / 1024:.1f}' if kb_out is not None else '-':>7} "
                f"{p.wall_ms:>8.2f}")
        t = self.totals()
        util, attain = t.get("utilisation"), t.get("attainment")
        lines.append(
            f"{'total':<28} {'':<6} {'':<16} {num(t['cycles'] or None):>10} "
            f"{num(t['predicted_cycles']):>10} {'':>10} {num(t.get('bound_cycles')):>10} "
            f"{f'{attain:.0%}' if attain is not None else '-':>6} "
            f"{f'{util:.0%}' if util is not None else '-':>6} "
            f"{(t['accel_macs'] + t['cpu_macs']) / 1e6:>8.2f} {'':>6} {'':>8} {'':>7} "
            f"{t['accel_wall_ms'] + t['cpu_wall_ms']:>8.2f}")
        share = t["accel_macs"] / max(t["accel_macs"] + t["cpu_macs"], 1)
        lines.append(f"accelerator share of MACs: {share:.1%}; accelerator wall "
                     f"{t['accel_wall_ms']:.1f} ms, CPU wall {t['cpu_wall_ms']:.1f} ms "
                     f"({self.device}); model: the cycle model's prediction; bound: the "
                     f"roofline's fewest cycles, attain = bound / cycles")
        return "\n".join(lines)

    def write_trace(self, path) -> None:
        """Write a Chrome/Perfetto trace of the run (see :mod:`tessera.runtime.trace`)."""
        from tessera.runtime.trace import write_trace

        write_trace(self, path)

    def plot_roofline(self, path) -> None:
        """Draw the per-layer roofline (see :mod:`tessera.runtime.trace`)."""
        from tessera.runtime.trace import plot_roofline

        plot_roofline(self, path)
