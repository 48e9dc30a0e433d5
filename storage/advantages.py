"""Run an estimator's SQL file over rollouts + grades Parquet files. Used by the flow and the CLI."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from storage.catalog import SQL_DIR, strip_line_comments
from storage.schemas import (
    ADVANTAGES,
    REPLAY_BUFFER,
    SEGMENT_ADVANTAGES,
    TRAIN_EDGES,
    TREE_ADVANTAGES,
)
from storage.scratch_db import scratch_cursor
from tasks.algos.registry import Family, spec_of


def _run_on(views: dict[str, str | Path | pa.Table], sql_file: Path, params: dict) -> pa.Table:
    """Run one SQL file with `views` (a Parquet path or an Arrow table each) and its named parameters."""
    sql = sql_file.read_text()
    with scratch_cursor() as con:
        con.execute((SQL_DIR / "prob_mask.sql").read_text())  # the mask's macros, which the SPO files call
        for name, source in views.items():
            # A relation, so the path is an argument and never part of SQL text. register() makes a
            # temporary view, private to this cursor (create_view would be shared by every cursor).
            con.register(name, source if isinstance(source, pa.Table) else con.read_parquet(str(source)))
        return con.sql(sql, params=_bind(sql, params, sql_file.name)).to_arrow_table()


def compute_tree_advantages(estimator: str, nodes: str | Path, params: dict) -> pa.Table:
    """Node values and edge advantages (schema TREE_ADVANTAGES) from a tree_nodes file (adv_spo_tree.sql)."""
    return _run_on({"nodes": nodes}, sql_path(estimator), params).cast(TREE_ADVANTAGES)


def replay_take(pool: pa.Table, params: dict) -> tuple[pa.Table, pa.Table]:
    """Split a replay-buffer pool (schema REPLAY_BUFFER) by storage/sql/replay_take.sql.

    Returns (taken edges, schema TRAIN_EDGES; the buffer left over, schema REPLAY_BUFFER), each ordered by
    (added_iteration, node_id) so the files are byte-stable.
    """
    out = _run_on({"pool": pool.cast(REPLAY_BUFFER)}, SQL_DIR / "replay_take.sql", params)
    out = out.sort_by([("taken", "descending"), ("added_iteration", "ascending"), ("node_id", "ascending")])
    taken = out.filter(out["taken"])
    taken = taken.append_column("iteration", pa.array([params["iteration"]] * taken.num_rows, pa.int32()))
    left = out.filter(pa.compute.invert(out["taken"]))
    return taken.select(TRAIN_EDGES.names).cast(TRAIN_EDGES), left.select(REPLAY_BUFFER.names).cast(REPLAY_BUFFER)


def compute_segment_advantages(estimator: str, segments: str | Path, params: dict) -> pa.Table:
    """Segment advantages (schema SEGMENT_ADVANTAGES) from a segments file (schema SEGMENTS)."""
    return _run_on({"segments": segments}, sql_path(estimator), params).cast(SEGMENT_ADVANTAGES)


def sql_path(estimator: str) -> Path:
    """The registered estimator's SQL file (tasks/algos/registry.py); ValueError naming the known ones."""
    return SQL_DIR / spec_of(estimator).sql_file


def sql_params(sql: str) -> set[str]:
    """Named parameters ($name) a SQL text uses, ignoring `--` comments (they may mention parameters)."""
    return set(re.findall(r"\$(\w+)", strip_line_comments(sql)))


def _bind(sql: str, params: dict, name: str) -> dict:
    used = sql_params(sql)
    missing = used - set(params)
    if missing:
        raise ValueError(f"{name} needs parameters {sorted(missing)}")
    return {k: params[k] for k in used}


def compute_advantages(
    estimator: str, rollouts: str | Path, grades: str | Path, params: dict, kl: str | Path | None = None
) -> pa.Table:
    """Advantages table (schema ADVANTAGES) for `estimator` over one iteration's rollout/grade files.

    `params` are named SQL parameters (the advantage config section's fields; only those a file
    uses are bound). `kl` is an optional reference-log-prob file (schema REF_LOGPROBS) whose per-response
    `kl` is subtracted from the score times `kl_reward_coef` (KL penalty in the reward); every response
    of `grades` must have exactly one non-null `kl` there, else ValueError naming the first ones.
    Rows are in the grades file's order, whatever order DuckDB's parallel aggregates produce them in.
    """
    spec = spec_of(estimator)
    if spec.family is not Family.RESPONSE:
        raise ValueError(
            f"estimator {estimator!r} works on {' + '.join(spec.inputs)} ({spec.family.value} "
            "family), not on rollouts + grades"
        )
    params = {"kl_reward_coef": 0.0, **params}
    path = sql_path(estimator)
    sql = path.read_text()
    shared = (SQL_DIR / "scored_groups.sql").read_text()
    # The output's keys come from the grades file itself, already in its order. Read them on a second
    # thread while DuckDB computes (both release the GIL; DuckDB scans a one-row-group file on one core).
    with ThreadPoolExecutor(1) as pool, scratch_cursor() as con:
        keys_read = pool.submit(pq.read_table, grades, columns=ADVANTAGES.names[:4])
        # Only the columns the estimators need; a view costs nothing unless an estimator reads it
        # (REC reads seeds, REINFORCE++ token counts; GRPO/RLOO read the grades alone).
        # register(), not create_view(): temporary views, private to this cursor (see _run_on).
        con.register(
            "rollouts",
            con.read_parquet(str(rollouts)).project(
                "run_id, iteration, prompt_id, sample_index, seed, finish_reason, "
                "len(completion_token_ids) as num_tokens"
            ),
        )
        scores = con.read_parquet(str(grades), file_row_number=True).project("*, file_row_number as grade_row")
        if kl is None:
            con.register("grades", scores)
        else:
            con.register("grades_raw", scores)
            con.register(
                "kl_penalty", con.read_parquet(str(kl)).project("run_id, iteration, prompt_id, sample_index, kl")
            )
            check_kl_coverage(con, kl, grades)
            # DuckDB cannot bind parameters inside CREATE VIEW: register the bound query's relation instead.
            shaping = (SQL_DIR / "kl_in_reward.sql").read_text()
            con.register("grades", con.sql(shaping, params=_bind(shaping, params, "kl_in_reward.sql")))
        con.execute(shared)
        # Only the row number and the advantage leave DuckDB (the optimiser prunes the string columns).
        out = con.sql(sql, params=_bind(sql, params, path.name)).project("grade_row, advantage").fetchnumpy()
        keys = keys_read.result()
    advantage = in_grades_order(out["grade_row"], out["advantage"], keys.num_rows, path.name)
    table = keys.append_column("estimator", pa.compute.fill_null(pa.nulls(keys.num_rows, pa.string()), estimator))
    return table.append_column("advantage", pa.array(advantage, pa.float64())).cast(ADVANTAGES)


def check_kl_coverage(con, kl: str | Path, grades: str | Path) -> None:
    """Raise ValueError unless every response of view `grades_raw` has exactly one kl in view `kl_penalty`."""
    bad = con.sql((SQL_DIR / "kl_unmatched.sql").read_text()).fetchall()
    if not bad:
        return
    what = "; ".join(
        f"response (prompt_id={pid!r}, sample_index={s}) of run {run!r} iteration {it} has "
        + ("no kl" if rows == 0 else f"{rows} kl rows")
        for run, it, pid, s, rows, _ in bad
    )
    more = bad[0][-1] - len(bad)
    raise ValueError(
        f"{kl}: {what}{f' (and {more} more)' if more else ''}. A KL penalty in the reward needs "
        f"exactly one kl per response of {grades}: the ref_logprobs.parquet of the same iteration"
    )


def in_grades_order(rows: np.ndarray, values: np.ndarray, n: int, what: str) -> np.ndarray:
    """`values` scattered to their grades-file rows; every one of the n rows exactly once, or an error."""
    if np.ma.is_masked(values):
        raise RuntimeError(f"{what} returned a null advantage")
    rows = np.asarray(rows, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    if len(rows) == n and (n == 0 or (rows.min() >= 0 and rows.max() < n)):
        seen[rows] = True
    if len(rows) != n or not seen.all():
        raise RuntimeError(f"{what} returned {len(rows)} rows for {n} grades, not one per grade")
    out = np.empty(n, dtype=np.float64)
    out[rows] = values
    return out
