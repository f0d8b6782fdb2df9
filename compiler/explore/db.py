"""The results database: one SQLite table ``results``, one row per (model, config, DRAM timing,
device) point.

Columns (:data:`COLUMNS`): ``model`` (a zoo name or the .onnx path as given), ``config_json``
(the point's ``Config.to_json()``; for a combination the Config rejects, the requested fields),
``label`` (a short config label), ``read_latency``, ``beats_per_cycle``, ``device`` (``fsim``:
the cycle model; ``verilator``: measured on the RTL), ``cycles``, ``utilisation`` (useful MACs /
(cycles x MACs per GEMM step)), ``lut``, ``ff``, ``bram``, ``dsp`` (Yosys ``synth_ecp5``:
LUT4, TRELLIS_FF, DP16KD, MULT18X18D), ``fmax_mhz`` (nextpnr-ecp5, out of context),
``accel_layers``, ``cpu_ops``, ``compile_seconds``, ``run_seconds`` and ``error`` (NULL for a
point that was measured completely; else what failed, prefixed by the stage: ``config:``,
``compile:``, ``run:``, ``area:``, ``fmax:``).

A point is identified by (model, config_json, read_latency, beats_per_cycle, device); the
table's primary key. :meth:`ResultsDB.done` is what makes a sweep resumable.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tessera.errors import InputError

__all__ = ["ResultsDB", "COLUMNS", "KEY"]

COLUMNS: dict[str, str] = {
    "model": "TEXT NOT NULL", "config_json": "TEXT NOT NULL", "label": "TEXT",
    "read_latency": "INTEGER NOT NULL", "beats_per_cycle": "REAL NOT NULL",
    "device": "TEXT NOT NULL", "cycles": "INTEGER", "utilisation": "REAL", "lut": "INTEGER",
    "ff": "INTEGER", "bram": "INTEGER", "dsp": "INTEGER", "fmax_mhz": "REAL",
    "accel_layers": "INTEGER", "cpu_ops": "INTEGER", "compile_seconds": "REAL",
    "run_seconds": "REAL", "error": "TEXT",
}
KEY = ("model", "config_json", "read_latency", "beats_per_cycle", "device")


class ResultsDB:
    """The ``results`` table of one SQLite file (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"results database {str(path)!r} is not a regular file")
        try:
            self.conn = sqlite3.connect(str(self.path))
            self._create()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"results database {str(path)!r} cannot be used: {exc}") from None

    def _create(self) -> None:
        cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, "
                          f"PRIMARY KEY ({', '.join(KEY)}))")
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(results)")}
        missing = [c for c in COLUMNS if c not in have]
        if missing:
            raise InputError(f"results database {str(self.path)!r} has a 'results' table "
                             f"without the column(s) {missing}; use a new file")
        self.conn.commit()

    def done(self, retry_failed: bool = False, need: tuple[str, ...] = ()) -> set[tuple]:
        """Keys of the points already in the table: failed ones too, unless ``retry_failed``;
        a point measured without one of the columns ``need`` (e.g. ``lut`` for a sweep that now
        asks for area) is not done unless it failed."""
        for col in need:
            if col not in COLUMNS:
                raise InputError(f"no results column {col!r}")
        conds = ["error IS NOT NULL" + (" AND 0" if retry_failed else "")]
        conds.append("(" + " AND ".join([f"{c} IS NOT NULL" for c in need] or ["1"])
                     + " AND error IS NULL)")
        return {tuple(r) for r in self.conn.execute(
            f"SELECT {', '.join(KEY)} FROM results WHERE {' OR '.join(conds)}")}

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Insert (or replace) ``rows`` and commit: an interrupted sweep keeps every finished
        task."""
        if not rows:
            return
        names = list(COLUMNS)
        self.conn.executemany(
            f"INSERT OR REPLACE INTO results ({', '.join(names)}) VALUES "
            f"({', '.join('?' * len(names))})",
            [tuple(r.get(n) for n in names) for r in rows])
        self.conn.commit()

    def rows(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every row (of ``model``), ordered by model, label and DRAM timing."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM results"
        args: tuple = ()
        if model is not None:
            sql += " WHERE model = ?"
            args = (model,)
        sql += " ORDER BY model, label, config_json, read_latency, beats_per_cycle, device"
        return [dict(zip(COLUMNS, r)) for r in self.conn.execute(sql, args)]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
