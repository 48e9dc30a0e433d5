"""Run an estimator's SQL file over rollouts + grades Parquet files. Used by the flow and the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

from storage.catalog import SQL_DIR, quote
from storage.schemas import ADVANTAGES


def sql_path(estimator: str) -> Path:
    path = SQL_DIR / f"adv_{estimator}.sql"  # house rule 2: the config name is the file name
    if not path.exists():
        known = sorted(p.stem.removeprefix("adv_") for p in SQL_DIR.glob("adv_*.sql"))
        raise ValueError(f"estimator {estimator!r} has no SQL file; known: {', '.join(known)}")
    return path


def compute_advantages(estimator: str, rollouts: str | Path, grades: str | Path, params: dict) -> pa.Table:
    """Advantages table (schema ADVANTAGES) for `estimator` over one set of rollout/grade files.

    `params` are the estimator's named SQL parameters (e.g. eps); only those the file uses are bound.
    """
    sql = sql_path(estimator).read_text()
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())  # comments may mention params
    used = set(re.findall(r"\$(\w+)", code))
    missing = used - set(params)
    if missing:
        raise ValueError(f"{sql_path(estimator).name} needs parameters {sorted(missing)}")
    con = duckdb.connect(":memory:")
    try:
        # Only the columns the estimators need: list columns of token ids stay on disk.
        con.execute(
            "create view rollouts as select run_id, iteration, prompt_id, sample_index, finish_reason "
            f"from read_parquet({quote(str(rollouts))})"
        )
        con.execute(f"create view grades as select * from read_parquet({quote(str(grades))})")
        con.execute((SQL_DIR / "scored_groups.sql").read_text())
        table = con.sql(sql, params={k: params[k] for k in used}).to_arrow_table()
    finally:
        con.close()
    return table.cast(ADVANTAGES)
