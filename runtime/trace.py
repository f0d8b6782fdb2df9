"""Seeing a run: a Chrome/Perfetto trace of the accelerator's modules and a per-layer roofline.

:func:`write_trace` writes the JSON trace-event format (``chrome://tracing``, ui.perfetto.dev).
One process, the accelerator; threads ``layers`` (one slice per step, accelerator and CPU),
``load``, ``compute`` and ``store`` (the modules' busy and stalled intervals) and ``host``
(CPU operators). Every slice is named by its ONNX node (the layer's name), then what the module
did: ``Conv3: GEMM``, ``Conv3: wait L2C`` (blocked popping a token), ``Conv3: push wait C2S``
(blocked pushing one), ``Conv3: DRAM wait`` (a load before its first data beat). Steps are laid
end to end: accelerator time is cycles at the config's ``clock_mhz``, CPU operators take their
measured wall time.

On ``fsim`` the intervals are the cycle model's, instruction by instruction. The RTL only has
counters, so on ``verilator`` each layer shows per module the durations its counters give
(load and store busy cycles; compute GEMM, ALU and token-wait cycles) one after another from the
layer's start: their lengths are measured, their order within the layer is not.

:func:`plot_roofline` draws the roofline of the accelerator layers with matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tessera.errors import DeviceError, InputError

__all__ = ["trace_events", "write_trace", "plot_roofline"]

_TIDS = {"layers": 0, "load": 1, "compute": 2, "store": 3, "host": 4}
_STATE = {"exec": "{what}", "dram": "DRAM wait", "pop": "wait {what}", "push": "push wait {what}"}


def _model_intervals(profile, layer) -> list:
    from tessera.sim import timing

    code, insn_addr, insn_count = layer.program
    prog = timing.decode_stream(code, profile.config)
    pred = timing.predict(prog, profile.config, profile.dram, insn_addr=insn_addr,
                          insn_count=insn_count, trace=True)
    if pred.insns is None:
        return []
    return timing.intervals(pred.insns)


def _counter_intervals(layer) -> list[tuple[str, str, int]]:
    c = layer.counters
    out = [("load", "busy", c.get("load_busy_cycles", 0)),
           ("store", "busy", c.get("store_busy_cycles", 0)),
           ("compute", "GEMM", c.get("gemm_steps", 0) + c.get("gemm_reset_steps", 0)),
           ("compute", "ALU", c.get("alu_steps", 0)),
           ("compute", "wait tokens", c.get("compute_wait_cycles", 0))]
    return [r for r in out if r[2] > 0]


def trace_events(profile) -> dict[str, Any]:
    """The run as a trace-event JSON object."""
    cfg = profile.config
    us_per_cycle = 1.0 / cfg.clock_mhz
    model = profile.device == "fsim"
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": 0, "name": "process_name",
         "args": {"name": f"Tessera {cfg.summary()} on {profile.device}"}}]
    for name, tid in _TIDS.items():
        events.append({"ph": "M", "pid": 0, "tid": tid, "name": "thread_name",
                       "args": {"name": name}})
        events.append({"ph": "M", "pid": 0, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": tid}})

    def slice_(tid: int, name: str, cat: str, ts: float, dur: float, **args: Any) -> None:
        events.append({"ph": "X", "pid": 0, "tid": tid, "name": name, "cat": cat,
                       "ts": round(ts, 4), "dur": round(max(dur, 0.0), 4), "args": args})

    t = 0.0
    for layer in profile.layers:
        if layer.kind != "accel":
            dur = layer.wall_ms * 1e3
            slice_(_TIDS["layers"], layer.name, "cpu", t, dur, op=layer.op, macs=layer.macs)
            slice_(_TIDS["host"], f"{layer.name}: {layer.op}", "cpu", t, dur)
            t += dur
            continue
        if layer.cycles is None:
            raise DeviceError(f"layer {layer.name!r} has no cycle count; a trace needs a device "
                              f"with timing")
        dur = layer.cycles * us_per_cycle
        util = layer.utilisation(cfg)
        slice_(_TIDS["layers"], layer.name, "accel", t, dur, op=layer.op, cycles=layer.cycles,
               macs=layer.macs, utilisation=round(util, 4) if util is not None else None)
        if model and layer.program is not None:
            for iv in _model_intervals(profile, layer):
                label = _STATE[iv.state].format(what=iv.what)
                slice_(_TIDS[iv.module], f"{layer.name}: {label}", iv.state,
                       t + iv.start * us_per_cycle, (iv.end - iv.start) * us_per_cycle,
                       pc=iv.pc, cycles=iv.end - iv.start)
        else:
            starts = {"load": t, "compute": t, "store": t}
            for module, what, cycles in _counter_intervals(layer):
                slice_(_TIDS[module], f"{layer.name}: {what}", "counter", starts[module],
                       cycles * us_per_cycle, cycles=cycles,
                       note="duration from the RTL's counters; order within the layer unknown")
                starts[module] += cycles * us_per_cycle
        t += dur
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"config": cfg.to_dict(), "device": profile.device,
                          "source": "cycle model" if model else "RTL counters"}}


def write_trace(profile, path: str | Path) -> None:
    """Write :func:`trace_events` of ``profile`` to ``path`` (JSON)."""
    data = trace_events(profile)
    try:
        Path(path).write_text(json.dumps(data, separators=(",", ":")))
    except OSError as exc:
        raise InputError(f"cannot write the trace to {str(path)!r}: {exc}") from None


def plot_roofline(profile, path: str | Path) -> None:
    """Draw the per-layer roofline to ``path`` (an image format matplotlib knows).

    x: arithmetic intensity, MACs per byte of the busier DRAM channel; y: MACs per cycle
    attained; the compute roof (BATCH x BLOCK_IN x BLOCK_OUT) and the bandwidth roof (the bus
    bytes one channel moves per cycle at the device's DRAM timing); one labelled point per
    accelerator layer.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = profile.config
    period = profile.period
    points = [(p.name, p.roofline(cfg, period)) for p in profile.layers if p.kind == "accel"]
    points = [(n, r) for n, r in points if r is not None and r.macs_per_cycle > 0]
    if not points:
        raise DeviceError("the roofline needs accelerator layers with cycles and DRAM counters")
    peak = cfg.macs_per_gemm_step
    bandwidth = cfg.mem_bus_bytes / period
    xs = [r.intensity for _, r in points]
    lo, hi = min(xs + [peak / bandwidth]) / 4, max(xs + [peak / bandwidth]) * 4
    fig, ax = plt.subplots(figsize=(9, 6))
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak, bandwidth * x) for x in grid], color="black", lw=1.5,
            label=f"roof: {peak} MACs/cycle, {bandwidth:g} bytes/cycle per channel")
    for limit, color in (("dram", "tab:red"), ("compute", "tab:blue")):
        sel = [r for _, r in points if r.limit == limit]
        if sel:
            ax.scatter([r.intensity for r in sel], [r.macs_per_cycle for r in sel], c=color,
                       zorder=3, label=f"{limit}-bound layers")
    for name, r in points:
        ax.annotate(name, (r.intensity, r.macs_per_cycle), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per byte of the busier DRAM channel)")
    ax.set_ylabel("MACs per cycle")
    ax.set_title(f"Per-layer roofline on {profile.device}: {cfg.summary()}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write the roofline plot to {str(path)!r}: {exc}") from None
    finally:
        plt.close(fig)
