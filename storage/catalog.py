"""DuckDB catalog: every run's artifacts under a runs directory, as SQL views.

    con = open_catalog("runs")
    con.sql("select run_id, avg(score) from grades group by 1")

Views: runs, prompts, rollouts, grades, ref_logprobs, advantages, mc_rollouts, segments,
segment_advantages, tree_nodes, tree_advantages, replay_buffer, train_edges, metrics, eval_results,
eval_samples (see storage/layout.py), and health (one row per finished run and health-check finding,
from summary.json; tasks/algos/health.py).
A view whose files do not exist yet is empty but has the right columns, so queries never fail on a
fresh directory. The runs view also carries summary.json fields once a run has finished.
"""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa

from storage.layout import TABLE_GLOBS
from storage.schemas import ALL, HEALTH, SUMMARY

SQL_DIR = Path(__file__).parent / "sql"


READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")  # `segflow sql` runs nothing else (no COPY, CREATE, SET, ...)


def open_catalog(runs_dir: str | Path) -> duckdb.DuckDBPyConnection:
    runs_dir = Path(runs_dir)
    con = duckdb.connect(":memory:")
    # Views are built from relations (paths are arguments, never formatted into SQL text).
    for name, pattern in TABLE_GLOBS.items():
        if any(runs_dir.glob(pattern)):
            con.read_parquet(str(runs_dir / pattern), union_by_name=True).create_view(f"{name}_raw")
        else:
            con.register(f"{name}_raw", pa.table({f.name: pa.array([], f.type) for f in ALL[name]}))
    summaries, health = summary_tables(sorted(runs_dir.glob("*/summary.json")))
    con.register("summaries", summaries)
    con.execute(
        "create view runs as select r.*, s.iterations_completed, s.initial_eval_accuracy, "
        "s.final_eval_accuracy, s.wall_seconds from runs_raw r left join summaries s using (run_id)"
    )
    for name in TABLE_GLOBS:
        if name != "runs":
            con.execute(f"create view {name} as select * from {name}_raw")
    con.register("health_raw", health)
    con.execute("create view health as select * from health_raw")
    return con


def summary_tables(paths: list[Path]) -> tuple[pa.Table, pa.Table]:
    """Each finished run's summary.json, read once: (SUMMARY rows for the runs view, HEALTH rows: one per
    health-check finding; summaries written before the health checks existed have none)."""
    rows, findings = [], []
    for path in paths:
        s = json.loads(path.read_text())
        rows.append({f.name: s.get(f.name) for f in SUMMARY})
        findings += [{"run_id": s["run_id"], "finding": code, **e} for code, e in (s.get("health") or {}).items()]
    return pa.Table.from_pylist(rows, schema=SUMMARY), pa.Table.from_pylist(findings, schema=HEALTH)


def strip_line_comments(sql: str) -> str:
    """`sql` without its `--` comments. A `--` inside a string literal is cut too: callers look only at
    `$parameters` of our own SQL files or at a statement's first keyword."""
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _is_pivot(statement: str) -> bool:
    """Does the statement itself start with PIVOT (after comments and opening parentheses)?"""
    return strip_line_comments(statement).lstrip(" \t\n(").lower().startswith("pivot")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ValueError unless every statement of `sql` only reads (SELECT, EXPLAIN, PIVOT)."""
    for i, st in enumerate(con.extract_statements(sql), 1):
        kind = str(st.type).rsplit(".", 1)[-1]
        # DuckDB plans a PIVOT as MULTI (it first collects the pivot values); so is `create table t as
        # pivot ...`, hence the check on the statement's own first keyword.
        if kind == "MULTI" and _is_pivot(st.query):
            continue
        if kind not in READ_ONLY_STATEMENTS:
            raise ValueError(f"segflow sql is read-only: statement {i} is {kind} ({sql.strip()[:60]!r}); "
                             f"allowed: {', '.join(READ_ONLY_STATEMENTS)}, PIVOT")


def query(runs_dir: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run read-only SQL over the catalog. Returns (column names, rows)."""
    con = open_catalog(runs_dir)
    try:
        check_read_only(con, sql)
        rel = con.sql(sql)
        if rel is None:  # a statement without a result set
            return [], []
        return list(rel.columns), rel.fetchall()
    finally:
        con.close()
