"""Per-layer run figures: what ``CompiledModel.run(..., profile=True)`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tessera.config import Config

__all__ = ["LayerProfile", "Profile"]


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

    def utilisation(self, cfg: Config) -> float | None:
        """GEMM utilisation: useful MACs / (cycles x MACs per cycle), on kinds with timing."""
        if not self.cycles:
            return None
        return self.macs / (self.cycles * cfg.macs_per_gemm_step)


@dataclass
class Profile:
    device: str
    config: Config
    layers: list[LayerProfile]

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
        return out

    def table(self) -> str:
        cfg = self.config
        lines = [f"{'layer':<28} {'where':<6} {'op':<16} {'cycles':>10} {'util':>6} "
                 f"{'MMACs':>8} {'insns':>6} {'KB in':>8} {'KB out':>7} {'ms':>8}"]
        for p in self.layers:
            util = p.utilisation(cfg)
            c = p.counters
            insns = c.get("insns_retired")
            kb_in = c.get("dram_read_bytes")
            kb_out = c.get("dram_write_bytes")
            lines.append(
                f"{p.name[:28]:<28} {p.kind:<6} {p.op[:16]:<16} "
                f"{p.cycles if p.cycles is not None else '-':>10} "
                f"{f'{util:.0%}' if util is not None else '-':>6} {p.macs / 1e6:>8.2f} "
                f"{insns if insns is not None else '-':>6} "
                f"{f'{kb_in / 1024:.1f}' if kb_in is not None else '-':>8} "
                f"{f'{kb_out / 1024:.1f}' if kb_out is not None else '-':>7} "
                f"{p.wall_ms:>8.2f}")
        t = self.totals()
        util = t.get("utilisation")
        lines.append(
            f"{'total':<28} {'':<6} {'':<16} {t['cycles'] if t['cycles'] else '-':>10} "
            f"{f'{util:.0%}' if util is not None else '-':>6} "
            f"{(t['accel_macs'] + t['cpu_macs']) / 1e6:>8.2f} {'':>6} {'':>8} {'':>7} "
            f"{t['accel_wall_ms'] + t['cpu_wall_ms']:>8.2f}")
        share = t["accel_macs"] / max(t["accel_macs"] + t["cpu_macs"], 1)
        lines.append(f"accelerator share of MACs: {share:.1%}; accelerator wall "
                     f"{t['accel_wall_ms']:.1f} ms, CPU wall {t['cpu_wall_ms']:.1f} ms "
                     f"({self.device})")
        return "\n".join(lines)
