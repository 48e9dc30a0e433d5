"""Metrics files: long format, one row per (iteration, name)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from storage.handles import FileRef
from storage.parquet import read_parquet, write_parquet
from storage.schemas import METRICS


def write_metrics(dest: str | Path, run_id: str, iteration: int, stage: str, values: Mapping[str, float]) -> FileRef:
    rows = [
        {"run_id": run_id, "iteration": iteration, "stage": stage, "name": k, "value": float(v)}
        for k, v in values.items()
    ]
    return write_parquet(rows, METRICS, dest)


def read_metrics(ref: FileRef | str | Path) -> dict[str, float]:
    t = read_parquet(ref, METRICS)
    return dict(zip(t["name"].to_pylist(), t["value"].to_pylist()))
