"""One ``tessera explore`` sweep run three ways in one go: in one process, in N local worker
processes, and on a Dask distributed cluster of N single-threaded workers started here on
loopback (and killed afterwards). Prints the wall time of each beside the one-process time and
checks that the three give the same rows.

    python bench/explore_sweep.py --models resnet18 --config ulx3s \\
        --grid log_block=3,4 --grid mem_bus_bits=64,128 --grid read_latency=16,64 --area

Area/Fmax figures come from the cache (``$TESSERA_CACHE/explore-hw``) when the sweep ran before
with ``--area``; otherwise the first way pays for the syntheses and the others reuse them.
Each way writes its own fresh results database in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tessera.compiler.explore import explore

SAME = ("model", "config_json", "read_latency", "beats_per_cycle", "device", "cycles",
        "utilisation", "lut", "ff", "bram", "dsp", "fmax_mhz", "error")


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=log,
                            start_new_session=True)


def _cluster(tmp: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    sched = tmp / "scheduler.json"
    log = open(tmp / "cluster.log", "wb")
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(sched)], log)]
    deadline = time.monotonic() + 120
    while not sched.exists():
        if time.monotonic() > deadline or procs[0].poll() is not None:
            raise SystemExit(f"the Dask scheduler did not start (log: {tmp / 'cluster.log'})")
        time.sleep(0.2)
    address = json.loads(sched.read_text())["address"]
    for _ in range(workers):
        procs.append(_start(["distributed.cli.dask_worker", address, "--nthreads", "1",
                             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"], log))
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet_tiny")
    ap.add_argument("--grid", action="append", default=[])
    ap.add_argument("--config", default="default")
    ap.add_argument("--area", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-one", action="store_true", help="leave out the one-process run")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    opts = dict(config=args.config, area=args.area)
    times: dict[str, float] = {}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tessera-explore-bench-") as tmp:
        tmp = Path(tmp)
        ways = [] if args.skip_one else [("1 process", dict(jobs=1))]
        ways.append((f"{args.workers} local processes", dict(jobs=args.workers)))
        for name, extra in ways:
            t0 = time.perf_counter()
            results[name] = explore(models, args.grid, db=tmp / f"{len(times)}.sqlite",
                                    **opts, **extra)
            times[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        address, procs = _cluster(tmp, args.workers)
        started = time.perf_counter() - t0
        try:
            name = f"Dask, {args.workers} workers"
            t0 = time.perf_counter()
            results[name] = explore(models, args.grid, db=tmp / "dask.sqlite",
                                    scheduler=address, **opts)
            times[name] = time.perf_counter() - t0
        finally:
            _stop(procs)
    key = lambda r: (r["model"], r["config_json"], r["read_latency"], r["beats_per_cycle"])  # noqa: E731
    rows = {n: [[r[k] for k in SAME] for r in sorted(v, key=key)] for n, v in results.items()}
    ref_name = next(iter(rows))
    same = all(v == rows[ref_name] for v in rows.values())
    n = len(results[ref_name])
    print(f"sweep: {','.join(models)} on {args.config}, grid {' '.join(args.grid)}"
          f"{' --area' if args.area else ''}: {n} points")
    base = times.get("1 process")
    for name, t in times.items():
        ratio = f"  ({base / t:.2f}x the one-process speed)" if base else ""
        print(f"  {name:<22} {t:8.1f} s{ratio}")
    print(f"  (cluster start-up, not counted: {started:.1f} s)")
    print(f"rows identical across the {len(times)} ways: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
