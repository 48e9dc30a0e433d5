"""Metrics files: long format, one row per (iteration, name).

The `name` column holds the namespaced name (`actor/clipfrac`, storage/metric_names.py); stages pass and
readers get the flat keys (`clipfrac`). Files written before namespaces hold flat names and read the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from storage.handles import FileRef
from storage.metric_names import flat, qualified
from storage.parquet import read_parquet, write_parquet
from storage.schemas import METRICS


def write_metrics(dest: str | Path, run_id: str, iteration: int, stage: str, values: Mapping[str, float]) -> FileRef:
    """One row per entry of `values` ({flat or namespaced name: value}), stored under qualified(name)."""
    rows = [
        {"run_id": run_id, "iteration": iteration, "stage": stage, "name": qualified(k), "value": float(v)}
        for k, v in values.items()
    ]
    return write_parquet(rows, METRICS, dest)


def read_metrics(ref: FileRef | str | Path) -> dict[str, float]:
    """{flat name: value} of one metrics file, whichever form its `name` column holds."""
    t = read_parquet(ref, METRICS)
    return dict(zip(map(flat, t["name"].to_pylist()), t["value"].to_pylist()))
