"""DuckDB catalog: every run's artifacts under a runs directory, as SQL views.

    con = open_catalog("runs")
    con.sql("select run_id, avg(score) from grades group by 1")

Views: runs, prompts, rollouts, grades, ref_logprobs, advantages, mc_rollouts, segments,
segment_advantages, tree_nodes, tree_advantages, replay_buffer, train_edges, metrics, eval_results,
eval_samples (see storage/layout.py).
A view whose files do not exist yet is empty but has the right columns, so queries never fail on a
fresh directory. The runs view also carries summary.json fields once a run has finished.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from storage.layout import TABLE_GLOBS
from storage.schemas import ALL

SQL_DIR = Path(__file__).parent / "sql"


def quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def open_catalog(runs_dir: str | Path) -> duckdb.DuckDBPyConnection:
    runs_dir = Path(runs_dir)
    con = duckdb.connect(":memory:")
    for name, pattern in TABLE_GLOBS.items():
        if any(runs_dir.glob(pattern)):
            source = f"read_parquet({quote(str(runs_dir / pattern))}, union_by_name=true)"
        else:
            con.register(f"_empty_{name}", pa.table({f.name: pa.array([], f.type) for f in ALL[name]}))
            source = f"_empty_{name}"
        con.execute(f"create view {name}_raw as select * from {source}")
    summaries = sorted(runs_dir.glob("*/summary.json"))
    if summaries:
        files = ", ".join(quote(str(p)) for p in summaries)
        con.execute(
            "create view summaries as select run_id, iterations_completed, initial_eval_accuracy, "
            f"final_eval_accuracy, wall_seconds from read_json([{files}], union_by_name=true)"
        )
    else:
        con.execute(
            "create view summaries as select null::varchar run_id, null::int iterations_completed, "
            "null::double initial_eval_accuracy, null::double final_eval_accuracy, "
            "null::double wall_seconds where false"
        )
    con.execute(
        "create view runs as select r.*, s.iterations_completed, s.initial_eval_accuracy, "
        "s.final_eval_accuracy, s.wall_seconds from runs_raw r left join summaries s using (run_id)"
    )
    for name in TABLE_GLOBS:
        if name != "runs":
            con.execute(f"create view {name} as select * from {name}_raw")
    return con


def query(runs_dir: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    con = open_catalog(runs_dir)
    try:
        rel = con.sql(sql)
        if rel is None:  # a statement without a result set
            return [], []
        return list(rel.columns), rel.fetchall()
    finally:
        con.close()
