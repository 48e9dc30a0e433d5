"""DuckDB catalog: every run's artifacts under a runs directory, as SQL views.

    con = open_catalog("runs")
    con.sql("select run_id, avg(score) from grades group by 1")

Views: runs, prompts, rollouts, grades, ref_logprobs, advantages, mc_rollouts, segments,
segment_advantages, tree_nodes, tree_advantages, replay_buffer, train_edges, metrics, eval_results,
eval_samples (see storage/layout.py), health (one row per finished run and health-check finding,
from summary.json; tasks/algos/health.py) and metric_names (every metric segflow writes: name,
legacy_name, description; storage/metric_names.py). `metrics` shows namespaced names (`actor/clipfrac`)
for old runs too, whose files store flat ones (storage/sql/metrics_view.sql).
A view whose files do not exist yet is empty but has the right columns, so queries never fail on a
fresh directory. The runs view also carries summary.json fields once a run has finished.

The connection cannot touch the file system: pyarrow reads the Parquet files (each view is a registered
pyarrow dataset over the files found when the catalog opens), and DuckDB itself runs with external access
off and its configuration locked, so no statement can write, attach, load or even read a file by name.
A file whose Parquet footer cannot be read (truncated, garbage) or whose columns cannot be unified with
the other files of its view is left out and named, instead of failing every query.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from storage.layout import TABLE_GLOBS
from storage.metric_names import ALL_METRICS, PLACEHOLDER
from storage.schemas import ALL, HEALTH, SUMMARY

SQL_DIR = Path(__file__).parent / "sql"
log = logging.getLogger(__name__)

# Set when the connection opens and locked there: no file access by name (COPY, EXPORT, ATTACH, INSTALL,
# read_csv('/etc/...') all fail), no extension loading, no SET afterwards.
LOCKED = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}


METRIC_NAME_COLUMNS = ("name", "legacy_name", "description", "legacy_regex", "name_replacement")


class QueryTimeout(TimeoutError):
    """The query ran longer than its timeout and was interrupted."""

    def __init__(self, seconds: float):
        super().__init__(f"query interrupted after {seconds:g} s")
        self.seconds = seconds


def open_catalog(runs_dir: str | Path, skipped: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A locked in-memory connection with every view. Each file left out is appended to `skipped` as
    '<path>: <why>' (logged as a warning when no list is given)."""
    runs_dir = Path(runs_dir)
    left_out: list[str] = []
    con = duckdb.connect(":memory:", config=LOCKED)
    # Views are built from registered arrow objects (paths are never formatted into SQL text).
    for name, pattern in TABLE_GLOBS.items():
        files, schema = readable_files(sorted(runs_dir.glob(pattern)), left_out)
        if files:
            con.register(f"{name}_raw", pads.dataset([str(f) for f in files], schema=schema, format="parquet"))
        else:
            con.register(f"{name}_raw", pa.table({f.name: pa.array([], f.type) for f in ALL[name]}))
    summaries, health = summary_tables(sorted(runs_dir.glob("*/summary.json")), left_out)
    con.register("summaries", summaries)
    con.execute(
        "create view runs as select r.*, s.iterations_completed, s.initial_eval_accuracy, "
        "s.final_eval_accuracy, s.wall_seconds from runs_raw r left join summaries s using (run_id)"
    )
    con.register("metric_names_raw", metric_names_table())
    con.execute("create view metric_names as select name, legacy_name, description from metric_names_raw")
    con.execute((SQL_DIR / "metrics_view.sql").read_text())
    for name in TABLE_GLOBS:
        if name not in ("runs", "metrics"):
            con.execute(f"create view {name} as select * from {name}_raw")
    con.register("health_raw", health)
    con.execute("create view health as select * from health_raw")
    if skipped is None:
        for why in left_out:
            log.warning("catalog: skipped %s", why)
    else:
        skipped += left_out
    return con


def metric_names_table() -> pa.Table:
    """storage/metric_names.py ALL_METRICS as (name, legacy_name, description; the `metric_names` view) plus,
    for a family of metrics (`buffer_age_<k>`), legacy_regex and name_replacement (`replay/buffer_age_\\1`),
    which storage/sql/metrics_view.sql maps an old run's flat names with."""
    return pa.table(
        {
            "name": [m.name for m in ALL_METRICS],
            "legacy_name": [m.legacy for m in ALL_METRICS],
            "description": [m.description for m in ALL_METRICS],
            "legacy_regex": [m.legacy_regex if m.is_family else None for m in ALL_METRICS],
            "name_replacement": [m.name.replace(PLACEHOLDER, "\\1") if m.is_family else None for m in ALL_METRICS],
        },
        schema=pa.schema([(c, pa.string()) for c in METRIC_NAME_COLUMNS]),
    )


def readable_files(paths: list[Path], skipped: list[str]) -> tuple[list[Path], pa.Schema | None]:
    """The files among `paths` whose Parquet footer reads, and their unified schema (a column missing from
    some files is null there; int32 and int64 unify to int64). Only footers are read (~60 µs a file).
    Files left out are appended to `skipped` as '<path>: <why>'."""
    files, schemas = [], []
    for path in paths:
        try:
            schemas.append(pq.read_schema(path))
        except (OSError, pa.ArrowException) as e:  # truncated, not Parquet, unreadable (permissions)
            skipped.append(f"{path}: not a readable Parquet file ({_first_line(e)})")
            continue
        files.append(path)
    if not files:
        return [], None
    try:
        return files, pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    # A column whose type differs between files: keep the files that agree with the earlier ones.
    kept, schema = [], None
    for path, s in zip(files, schemas):
        try:
            schema = s if schema is None else pa.unify_schemas([schema, s], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
            skipped.append(f"{path}: columns do not match the other files of its view ({_first_line(e)})")
            continue
        kept.append(path)
    return kept, schema


def summary_tables(paths: list[Path], skipped: list[str] | None = None) -> tuple[pa.Table, pa.Table]:
    """Each finished run's summary.json, read once: (SUMMARY rows for the runs view, HEALTH rows: one per
    health-check finding; summaries written before the health checks existed have none). An unreadable
    summary is left out and appended to `skipped` (raised when no list is given)."""
    rows, findings = [], []
    for path in paths:
        try:
            row, found = _summary_rows(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException) as e:
            if skipped is None:
                raise
            skipped.append(f"{path}: not a readable run summary ({_first_line(e)})")
            continue
        rows.append(row)
        findings += found
    return pa.Table.from_pylist(rows, schema=SUMMARY), pa.Table.from_pylist(findings, schema=HEALTH)


def _summary_rows(path: Path) -> tuple[dict, list[dict]]:
    """One summary.json as (its SUMMARY row, its HEALTH rows), type-checked here so that one bad summary
    cannot fail the table of all of them."""
    s = json.loads(path.read_text())
    row = {f.name: s.get(f.name) for f in SUMMARY}
    found = [{"run_id": s["run_id"], "finding": code, **e} for code, e in (s.get("health") or {}).items()]
    pa.Table.from_pylist([row], schema=SUMMARY)
    pa.Table.from_pylist(found, schema=HEALTH)
    return row, found


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def strip_line_comments(sql: str) -> str:
    """`sql` without its `--` comments. A `--` inside a string literal is cut too: callers look only at
    `$parameters` of our own SQL files."""
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


# --- read-only check ---------------------------------------------------------------------------------


def _skip_noise(text: str, i: int = 0) -> int:
    """Index of the first character at or after `i` that is not whitespace or a comment (`-- ...` or
    `/* ... */`, which DuckDB nests)."""
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < len(text) and depth:
                depth += text.startswith("/*", i) - text.startswith("*/", i)
                i += 2 if text.startswith(("/*", "*/"), i) else 1
        else:
            return i
    return i


def _word_at(text: str, i: int, *words: str) -> int | None:
    """The index after `text[i:]`'s leading keyword when it is one of `words` (case-insensitive)."""
    m = re.match(r"[A-Za-z_]+", text[i:])
    return i + m.end() if m and m.group().lower() in words else None


def _group_end(text: str, i: int) -> int | None:
    """The index after the parenthesised group opening at `text[i]` (quotes and comments respected)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            end = text.find(c, i + 1)  # a doubled quote inside reads as two strings: same extent
            if end < 0:
                return None
            i = end + 1
            continue
        j = _skip_noise(text, i)
        if j != i:
            i = j
            continue
        depth += (c == "(") - (c == ")")
        i += 1
        if depth == 0:
            return i
    return None


def _one_statement(con: duckdb.DuckDBPyConnection, text: str) -> tuple[str, str] | None:
    """(statement text, statement type) when `text` parses as exactly one statement, else None."""
    try:
        found = con.extract_statements(text)
    except duckdb.Error:
        return None
    return (found[0].query, str(found[0].type).rsplit(".", 1)[-1]) if len(found) == 1 else None


def _explained(con: duckdb.DuckDBPyConnection, text: str) -> tuple[str, tuple[str, str] | None] | None:
    """For `EXPLAIN [ANALYZE] [(options)] <statement>`: ('EXPLAIN' or 'EXPLAIN ANALYZE', the inner
    statement as (text, type), or None when it cannot be parsed). None when `text` is not an EXPLAIN."""
    i = _word_at(text, _skip_noise(text), "explain")
    if i is None:
        return None
    i = _skip_noise(text, i)
    analyze = _word_at(text, i, "analyze", "analyse")
    head = "EXPLAIN ANALYZE" if analyze else "EXPLAIN"
    i = _skip_noise(text, analyze or i)
    inner = _one_statement(con, text[i:])
    if inner is None and text.startswith("(", i) and (end := _group_end(text, i)):  # EXPLAIN (options) ...
        head = "EXPLAIN (...)" if not analyze else head
        inner = _one_statement(con, text[end:])
    return head, inner


def _is_pivot(text: str) -> bool:
    """Does the statement itself start with PIVOT (after comments and opening parentheses)?"""
    i = _skip_noise(text)
    while text.startswith("(", i):
        i = _skip_noise(text, i + 1)
    return _word_at(text, i, "pivot") is not None


def _writes(con: duckdb.DuckDBPyConnection, text: str, kind: str) -> str | None:
    """None when the statement can only read; else what it is, e.g. 'COPY' or 'EXPLAIN ANALYZE of COPY'.
    EXPLAIN ANALYZE runs its statement, so an EXPLAIN is judged by the statement it explains."""
    explained = _explained(con, text)
    if explained is not None:
        head, inner = explained
        if inner is None:
            return f"{head} of a statement segflow cannot parse"
        bad = _writes(con, *inner)
        return bad and f"{head} of {bad}"
    # DuckDB plans a PIVOT as MULTI (it first collects the pivot values); so is `create table t as
    # pivot ...`, hence the check on the statement's own first keyword.
    if kind == "SELECT" or (kind == "MULTI" and _is_pivot(text)):
        return None
    return kind


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ValueError unless every statement of `sql` only reads: SELECT (with WITH, FROM-first, VALUES,
    SUMMARIZE, DESCRIBE, SHOW), PIVOT, and EXPLAIN [ANALYZE] of one of those."""
    for i, st in enumerate(con.extract_statements(sql), 1):
        bad = _writes(con, st.query, str(st.type).rsplit(".", 1)[-1])
        if bad:
            raise ValueError(
                f"segflow sql is read-only: statement {i} is {bad} ({st.query.strip()[:60]!r}); "
                "allowed: SELECT, PIVOT, and EXPLAIN [ANALYZE] of those"
            )


def check_one_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ValueError unless `sql` is exactly one statement (a trailing `;` is fine)."""
    found = con.extract_statements(sql)
    if not found:
        raise ValueError(f"no SQL statement in {sql.strip()[:60]!r}")
    if len(found) > 1:
        raise ValueError(
            f"segflow sql runs one statement at a time; got {len(found)} (statement 2 is "
            f"{found[1].query.strip()[:60]!r}): run them one by one"
        )


# --- running a query ---------------------------------------------------------------------------------


def query(
    runs_dir: str | Path, sql: str, *, timeout: float | None = None, skipped: list[str] | None = None
) -> tuple[list[str], list[tuple]]:
    """Run one read-only SQL statement over the catalog. Returns (column names, rows).

    timeout: seconds the statement may run (after the catalog opens); None or 0 = no limit. Past it the
    connection is interrupted and QueryTimeout raised. skipped: see open_catalog. ValueError for a
    statement that would write or for several statements; duckdb.Error for a SQL error."""
    con = open_catalog(runs_dir, skipped)
    timer = threading.Timer(timeout, con.interrupt) if timeout else None
    try:
        check_read_only(con, sql)
        check_one_statement(con, sql)
        if timer:
            timer.start()
        cur = con.execute(sql)
        if cur.description is None:  # a statement without a result set
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except duckdb.InterruptException:
        raise QueryTimeout(timeout or 0) from None
    finally:
        if timer:
            timer.cancel()
        con.close()
