"""``tessera.explore(...)``: run a design-space sweep, locally or on a Dask cluster.

The points (:mod:`~tessera.compiler.explore.space`) are grouped into one
:class:`~tessera.compiler.explore.evaluate.Task` per (model, config); the tasks run in local
processes (``concurrent.futures`` with ``jobs`` spawned workers; ``jobs=1`` runs them in this
process) or, given ``scheduler="tcp://HOST:PORT"``, on an existing Dask distributed cluster
(``dask scheduler`` / ``dask worker``; the workers need this Tessera installed). Each finished
task's rows go into the results database at once, so an interrupted sweep keeps them, and a
re-run skips every point already there. Rows depend only on the task, never on where it ran.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tessera.compiler.explore.db import ResultsDB
from tessera.compiler.explore.evaluate import DEVICES, Task, check_model, error_rows, run_task
from tessera.compiler.explore.space import Point, grid_points, parse_grid, random_points
from tessera.config import Config
from tessera.errors import ExploreError

__all__ = ["explore", "plan_tasks"]


def _points(grid: dict[str, list] | list[str] | None, random: int, seed: int,
            base: Config | None) -> list[Point]:
    if grid is None:
        grid = {}
    elif not isinstance(grid, dict):
        grid = parse_grid(list(grid))
    if random:
        return random_points(random, seed, base, grid)
    return grid_points(grid, base)


def plan_tasks(models: list[str], points: list[Point], *, area: bool, fmax: bool, device: str,
               seed: int, done: set[tuple] = frozenset(), synth_timeout: float | None = None
               ) -> tuple[list[Task], int]:
    """One task per (model, config) over the points not in ``done``; also how many points
    were skipped."""
    by_config: dict[str, list[Point]] = {}
    for p in points:
        by_config.setdefault(p.config_json, []).append(p)
    tasks, skipped = [], 0
    for model in models:
        for pts in by_config.values():
            todo = [p for p in pts if (model, *p.key, device) not in done]
            skipped += len(pts) - len(todo)
            if todo:
                tasks.append(Task(model, tuple(todo), area, fmax, device, seed, synth_timeout))
    return tasks, skipped


def _check_models(models: Iterable[str]) -> list[str]:
    if isinstance(models, str):
        models = [models]
    out = list(dict.fromkeys(models))
    if not out:
        raise ExploreError("a sweep needs at least one model")
    for m in out:
        check_model(m)  # an unknown name or a missing file fails here, before any work
    return out


def _internal(task: Task, exc: BaseException) -> list[dict[str, Any]]:
    """A task whose worker raised something that is not a Tessera error (a bug, a worker that
    died): its points are recorded as failed with what was raised, and it is reported."""
    msg = f"internal: {type(exc).__name__}: {exc}"
    print(f"tessera explore: {task.model} on {task.points[0].config_json.strip()!r}: {msg}",
          file=sys.stderr)
    return error_rows(task, msg)


def _one_blas_thread() -> None:
    """Worker-process initializer: one BLAS thread per worker, as Dask's workers run. ``jobs``
    processes that each start OpenBLAS's default of one thread per core oversubscribe the
    machine (a 2-process ResNet-18 sweep on 2 cores ran 2.2x slower)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _run_local(tasks: list[Task], jobs: int) -> Iterator[tuple[Task, list[dict]]]:
    if jobs == 1:
        for t in tasks:
            try:
                yield t, run_task(t)
            except Exception as exc:  # recorded as the task's error rows, and reported
                yield t, _internal(t, exc)
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                                initializer=_one_blas_thread) as pool:
        futures = {pool.submit(run_task, t): t for t in tasks}
        try:
            for fut in concurrent.futures.as_completed(futures):
                t = futures[fut]
                try:
                    yield t, fut.result()
                except Exception as exc:  # recorded as the task's error rows, and reported
                    yield t, _internal(t, exc)
        except BaseException:  # interrupted: drop what has not started, then re-raise
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _run_dask(tasks: list[Task], scheduler: str, timeout: float
              ) -> Iterator[tuple[Task, list[dict]]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ExploreError("--scheduler needs Dask distributed: pip install "
                           "'dask[distributed]'") from None
    if not isinstance(scheduler, str) or "://" not in scheduler:
        raise ExploreError(f"scheduler must be an address like tcp://HOST:PORT, not "
                           f"{scheduler!r}")
    try:
        client = Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ExploreError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        futures = {client.submit(run_task, t, pure=False): t for t in tasks}
        try:
            for fut in as_completed(futures):
                t = futures[fut]
                try:
                    yield t, fut.result()
                except Exception as exc:  # recorded as the task's error rows, and reported
                    yield t, _internal(t, exc)
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        client.close()


def explore(models: Iterable[str], grid: dict[str, list] | list[str] | None = None, *,
            random: int = 0, seed: int = 0, config: Config | str | None = None,
            area: bool = False, fmax: bool = False, device: str = "fsim",
            db: str | Path | None = None, plot: str | Path | None = None,
            scheduler: str | None = None, jobs: int = 1, progress: bool = False,
            retry_failed: bool = False, synth_timeout: float | None = None,
            connect_timeout: float = 10.0) -> list[dict[str, Any]]:
    """Sweep ``models`` over a design space and return the result rows of its points.

    ``grid``: ``{"log_block": [4, 5], "read_latency": [16, 64]}`` or the CLI's
    ``["log_block=4,5", ...]`` — any Config field and the DRAM knobs ``read_latency`` and
    ``beats_per_cycle``; its product is taken over ``config`` (a Config, preset name or JSON
    path; ``default`` when None). ``random=N`` draws N seeded random valid configs instead
    (``seed``), each crossed with the grid. ``area`` adds Yosys ``synth_ecp5`` LUT/FF/BRAM/DSP per
    config, ``fmax`` nextpnr-ecp5's routed Fmax (both cached by config). ``device`` is ``fsim``
    (the cycle model) or ``verilator`` (measured on the RTL). ``db`` is the SQLite file of the
    ``results`` table (points already in it are skipped; without it nothing is kept); ``plot``
    writes the Pareto front of cycles against LUTs (needs ``area`` or ``fmax``). The tasks run
    in ``jobs`` local processes, or on the Dask cluster at ``scheduler``.
    """
    from tessera.compiler.explore.plot import pareto_plot

    models = _check_models(models)
    if device not in DEVICES:
        raise ExploreError(f"device must be one of {DEVICES}, not {device!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ExploreError(f"jobs must be a positive integer, not {jobs!r}")
    if plot is not None and not (area or fmax):
        raise ExploreError("plot needs LUT counts: sweep with area=True (--area) or fmax=True")
    base = Config.resolve(config)
    points = _points(grid, random, seed, base)
    if not points:
        raise ExploreError("the design space is empty")
    store = ResultsDB(db) if db is not None else None
    try:
        need = ("lut",) * (area or fmax) + ("fmax_mhz",) * fmax
        done = store.done(retry_failed, need) if store is not None else set()
        tasks, skipped = plan_tasks(models, points, area=area, fmax=fmax, device=device,
                                    seed=seed, done=done, synth_timeout=synth_timeout)
        rows = _sweep(tasks, store, scheduler, jobs, progress, skipped, connect_timeout)
        if store is not None:
            wanted = {(m, *p.key, device) for m in models for p in points}
            rows = [r for r in store.rows() if tuple(r[k] for k in (
                "model", "config_json", "read_latency", "beats_per_cycle", "device")) in wanted]
    finally:
        if store is not None:
            store.close()
    if plot is not None:
        pareto_plot(rows, plot)
    return rows


def _sweep(tasks: list[Task], store: ResultsDB | None, scheduler: str | None, jobs: int,
           progress: bool, skipped: int, connect_timeout: float) -> list[dict[str, Any]]:
    from tqdm import tqdm

    total = sum(len(t.points) for t in tasks)
    bar = tqdm(total=total, unit="point", disable=not progress, file=sys.stderr,
               desc="explore", dynamic_ncols=True)
    if progress and skipped:
        bar.write(f"explore: {skipped} point(s) already in the database, skipped")
    rows: list[dict[str, Any]] = []
    try:
        runs = _run_dask(tasks, scheduler, connect_timeout) if scheduler else \
            _run_local(tasks, jobs)
        for _task, task_rows in runs:
            if store is not None:
                store.add(task_rows)
            rows += task_rows
            bar.update(len(task_rows))
    finally:
        bar.close()
    return rows
