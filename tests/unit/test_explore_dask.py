"""``tessera explore --scheduler``: a sweep on a Dask distributed cluster (a scheduler and two
workers started here on loopback, killed afterwards) gives the same rows as local processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tessera.compiler.explore import explore
from tessera.errors import ExploreError

distributed = pytest.importorskip("distributed")

DETERMINISTIC = ("model", "config_json", "label", "read_latency", "beats_per_cycle", "device",
                 "cycles", "utilisation", "lut", "ff", "bram", "dsp", "fmax_mhz",
                 "accel_layers", "cpu_ops", "error")


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=log,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``tcp://127.0.0.1:PORT`` of a scheduler with two single-threaded workers."""
    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    log = open(tmp / "cluster.log", "wb")
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(sched_file)], log)]
    try:
        deadline = time.monotonic() + 90
        while not sched_file.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail(f"the Dask scheduler did not start: {(tmp / 'cluster.log')}")
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(_start(["distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"], log))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        log.close()


def test_dask_sweep_equals_the_local_sweep(cluster, tmp_path):
    grid = ["mem_bus_bits=64,128", "read_latency=8,64"]
    local = explore(["mlp"], grid, jobs=2, db=tmp_path / "local.sqlite")
    remote = explore(["mlp"], grid, scheduler=cluster, db=tmp_path / "dask.sqlite")
    assert len(local) == len(remote) == 4
    assert all(r["error"] is None and r["cycles"] > 0 for r in remote)
    key = lambda r: (r["config_json"], r["read_latency"])  # noqa: E731
    assert [[r[k] for k in DETERMINISTIC] for r in sorted(local, key=key)] == \
        [[r[k] for k in DETERMINISTIC] for r in sorted(remote, key=key)]


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(ExploreError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        explore(["mlp"], ["read_latency=8"], scheduler="tcp://127.0.0.1:9", connect_timeout=2)
