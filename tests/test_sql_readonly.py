"""`segflow sql` cannot write, stops at --timeout, runs one statement, and skips unreadable files (issue 27).

Two layers are tested separately: the statement check (storage.catalog.check_read_only, EXPLAIN judged by
what it explains) and the locked DuckDB connection (no file access by name, configuration locked), which
must refuse every writing statement on its own, with the check switched off.
"""

import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from storage import catalog
from storage.layout import RunLayout
from storage.parquet import write_parquet
from storage.schemas import GRADES

runner = CliRunner()

SCORES = [0.0, 1.0, 0.5]


@pytest.fixture
def dirs(tmp_path):
    """(runs dir with one run's grades, an empty folder every write attempt aims at)."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    rows = [
        {
            "run_id": "r1",
            "iteration": 1,
            "prompt_id": f"p{i}",
            "sample_index": 0,
            "score": s,
            "status": "ok",
            "extracted": str(i),
        }
        for i, s in enumerate(SCORES)
    ]
    write_parquet(rows, GRADES, RunLayout(runs_dir=str(runs), run_id="r1").grades(1))
    return runs, out


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def _extension_path(name):
    """Where INSTALL would copy an extension file named `name`."""
    con = duckdb.connect()
    platform = con.execute("pragma platform").fetchone()[0]
    return Path.home() / ".duckdb" / "extensions" / f"v{duckdb.__version__}" / platform / f"{name}.duckdb_extension"


def _writes(out, runs):
    """Statements that would create a file under `out` or `runs` (or install an extension)."""
    fake = out.parent / "probe_ext.duckdb_extension"
    fake.write_bytes(b"not an extension")
    return {
        "copy": f"copy (select 42 as x) to '{out}/e.csv'",
        "copy_into_runs": f"copy (select 42 as x) to '{runs}/r1/iterations/0001/grades.parquet' (format parquet)",
        "export": f"export database '{out}/export'",
        "attach": f"attach '{out}/x.db' as x",
        "install": f"install '{fake}'",
        "load": f"load '{fake}'",
        "set": f"set temp_directory = '{out}/spill'",
        "pragma": f"pragma profiling_output = '{out}/profile.json'",
        "call": f"call enable_logging(storage = 'file', storage_path = '{out}/logs')",
        "create": "create table t as select 42 as x",
        # a SELECT by its statement type, yet it would write log files: only the locked connection stops it
        "select_enable_logging": f"select * from enable_logging(storage = 'file', storage_path = '{out}/logs2')",
    }


WRITE_CASES = [
    "copy",
    "copy_into_runs",
    "export",
    "attach",
    "install",
    "load",
    "set",
    "pragma",
    "call",
    "create",
    "select_enable_logging",
]


@pytest.mark.parametrize(
    "prefix", ["", "explain ", "explain analyze ", "explain (analyze) ", "/* c */ explain analyze "]
)
@pytest.mark.parametrize("case", WRITE_CASES)
def test_sql_command_cannot_write(dirs, case, prefix):
    runs, out = dirs
    before = _files(runs)
    res = runner.invoke(app, ["sql", prefix + _writes(out, runs)[case], "--runs-dir", str(runs)])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ")
    assert _files(out) == [] and _files(runs) == before
    assert not _extension_path("probe_ext").exists()


def test_explain_analyze_copy_is_refused_by_name(dirs):
    runs, out = dirs
    sql = f"explain analyze copy (select 42 as x) to '{out}/e.csv'"
    res = runner.invoke(app, ["sql", sql, "--runs-dir", str(runs)])
    assert res.exit_code == 2
    assert "read-only: statement 1 is EXPLAIN ANALYZE of COPY" in res.stderr
    assert not (out / "e.csv").exists()


@pytest.mark.parametrize(
    "case",
    ["copy", "copy_into_runs", "export", "attach", "install", "load", "set", "pragma", "call", "select_enable_logging"],
)
@pytest.mark.parametrize("prefix", ["", "explain analyze "])
def test_locked_connection_refuses_writes_without_the_statement_check(dirs, monkeypatch, case, prefix):
    runs, out = dirs
    monkeypatch.setattr(catalog, "check_read_only", lambda con, sql: None)
    before = _files(runs)
    sql = prefix + _writes(out, runs)[case]
    with pytest.raises(duckdb.Error):
        catalog.query(runs, sql)
    assert _files(out) == [] and _files(runs) == before


def test_locked_connection_reads_no_file_by_name(dirs):
    runs, _ = dirs
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        catalog.query(runs, f"select * from read_parquet('{runs}/r1/iterations/0001/grades.parquet')")


@pytest.mark.parametrize(
    "sql, kind",
    [
        ("copy (select 1) to 'x.csv'", "COPY"),
        ("explain copy (select 1) to 'x.csv'", "EXPLAIN of COPY"),
        ("explain analyze copy (select 1) to 'x.csv'", "EXPLAIN ANALYZE of COPY"),
        ("EXPLAIN -- why\n ANALYSE copy (select 1) to 'x.csv'", "EXPLAIN ANALYZE of COPY"),
        ("explain /* a /* nested */ comment */ analyze copy (select 1) to 'x.csv'", "EXPLAIN ANALYZE of COPY"),
        ("explain (analyze, format json) copy (select 1) to 'x.csv'", "EXPLAIN (...) of COPY"),
        ("explain analyze create table t as select 1", "EXPLAIN ANALYZE of CREATE"),
        ("explain analyze create table t as pivot (select 'a' k, 1 v) on k using sum(v)", "EXPLAIN ANALYZE of MULTI"),
        ("explain analyze insert into t values (1)", "EXPLAIN ANALYZE of INSERT"),
        ("call pragma_version()", "CALL"),
        ("pragma version", "PRAGMA"),
        ("set threads = 1", "SET"),
        ("attach 'x.db'", "ATTACH"),
        ("export database 'd'", "EXPORT"),
        ("load json", "LOAD"),
    ],
)
def test_statement_check_names_what_would_write(sql, kind):
    con = duckdb.connect()  # unlocked: the check alone must refuse, before anything runs
    with pytest.raises(
        ValueError,
        match="read-only: statement 1 is " + kind.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.") + " ",
    ):
        catalog.check_read_only(con, sql)


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("select sum(score) from grades", [(sum(SCORES),)]),
        ("from grades select count(*)", [(len(SCORES),)]),
        ("with g as (select score from grades) select max(score) from g", [(max(SCORES),)]),
        ("(select min(score) from grades)", [(min(SCORES),)]),
        (
            "select * from (pivot (select status, score from grades) on status in ('ok') using sum(score))",
            [(sum(SCORES),)],
        ),
        ("-- a comment\npivot (select status from grades) on status using count(*)", [(len(SCORES),)]),
        ("select column_name from (describe grades) order by all", sorted((n,) for n in GRADES.names)),
        ("select count from (summarize grades) where column_name = 'score'", [(len(SCORES),)]),
    ],
)
def test_reading_statements_still_work(dirs, sql, expected):
    runs, _ = dirs
    assert catalog.query(runs, sql)[1] == expected


@pytest.mark.parametrize(
    "sql",
    [
        "explain select * from grades",
        "explain analyze select sum(score) from grades",
        "explain (format json) select 1",
        "explain analyze (select 1)",
        "explain analyze pivot (select status, score from grades) on status using sum(score)",
        "summarize grades",
        "describe grades",
        "show tables",
    ],
)
def test_explain_and_describe_of_reads_still_work(dirs, sql):
    runs, _ = dirs
    res = runner.invoke(app, ["sql", sql, "--runs-dir", str(runs), "--format", "csv"])
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout.splitlines()) >= 2  # a header and at least one row


def test_sql_timeout_interrupts_the_query(dirs):
    runs, _ = dirs
    t0 = time.monotonic()
    res = runner.invoke(
        app, ["sql", "select count(*) from range(100000000000000)", "--runs-dir", str(runs), "--timeout", "0.5"]
    )
    assert res.exit_code == 2
    assert "ran longer than --timeout 0.5 s" in res.stderr and "raise --timeout" in res.stderr
    assert time.monotonic() - t0 < 30  # counting to 1e14 takes hours
    res = runner.invoke(app, ["sql", "select 1 as x", "--runs-dir", str(runs), "--timeout", "0", "--format", "csv"])
    assert res.exit_code == 0 and res.stdout.splitlines() == ["x", "1"]
    assert runner.invoke(app, ["sql", "select 1", "--runs-dir", str(runs), "--timeout", "-1"]).exit_code == 2


def test_query_timeout_raises_query_timeout(dirs):
    runs, _ = dirs
    with pytest.raises(catalog.QueryTimeout) as e:
        catalog.query(runs, "select count(*) from range(100000000000000)", timeout=0.3)
    assert e.value.seconds == 0.3


def test_sql_refuses_several_statements(dirs):
    runs, _ = dirs
    res = runner.invoke(app, ["sql", "select 1; select 2", "--runs-dir", str(runs)])
    assert res.exit_code == 2
    assert "runs one statement at a time; got 2 (statement 2 is 'select 2')" in res.stderr
    res = runner.invoke(app, ["sql", "select 1 as x;", "--runs-dir", str(runs), "--format", "csv"])
    assert res.exit_code == 0 and res.stdout.splitlines() == ["x", "1"]  # a trailing ; is one statement
    assert runner.invoke(app, ["sql", " -- nothing\n", "--runs-dir", str(runs)]).exit_code == 2


def test_unreadable_parquet_is_skipped_with_a_warning(dirs):
    runs, _ = dirs
    good = RunLayout(runs_dir=str(runs), run_id="r1").grades(1)
    truncated = RunLayout(runs_dir=str(runs), run_id="r2").grades(1)
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(good.read_bytes()[:100])  # a copy cut short: no footer
    garbage = RunLayout(runs_dir=str(runs), run_id="r2").metrics(1, "grade")
    garbage.write_bytes(b"not parquet at all")
    (runs / "r2" / "summary.json").write_text('{"run_id": "r2", "iterat')  # cut mid-write
    res = runner.invoke(
        app, ["sql", "select run_id, count(*) as n from grades group by 1", "--runs-dir", str(runs), "--format", "csv"]
    )
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == ["run_id,n", f"r1,{len(SCORES)}"]
    assert f"warning: skipped {truncated}: not a readable Parquet file" in res.stderr
    assert f"warning: skipped {garbage}: not a readable Parquet file" in res.stderr
    assert f"warning: skipped {runs / 'r2' / 'summary.json'}: not a readable run summary" in res.stderr
    assert "leaves out the 3 unreadable file(s)" in res.stderr
    res = runner.invoke(app, ["sql", "select count(*) as n from metrics", "--runs-dir", str(runs)])
    assert res.exit_code == 0 and "3 unreadable file(s) left out of this result" in res.stdout


def test_file_whose_columns_conflict_is_skipped(tmp_path):
    a, b, c = (tmp_path / f"{x}.parquet" for x in "abc")
    pq.write_table(pa.table({"k": pa.array([1], pa.int32()), "v": ["x"]}), a)
    pq.write_table(pa.table({"k": pa.array([2], pa.int64()), "w": [1.5]}), b)  # int64 and a new column: unify
    pq.write_table(pa.table({"k": ["three"]}), c)  # string where the others have integers: cannot
    skipped = []
    files, schema = catalog.readable_files([a, b, c], skipped)
    assert files == [a, b]
    assert schema == pa.schema([("k", pa.int64()), ("v", pa.string()), ("w", pa.float64())])
    assert len(skipped) == 1 and skipped[0].startswith(f"{c}: columns do not match the other files of its view")
