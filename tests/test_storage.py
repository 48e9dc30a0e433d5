import json

import pyarrow as pa
import pytest

from storage.catalog import open_catalog, query
from storage.handles import FileRef, atomic_dir, atomic_path
from storage.layout import TABLE_GLOBS, RunLayout
from storage.metrics import read_metrics, write_metrics
from storage.parquet import SchemaMismatch, read_parquet, write_parquet
from storage.schemas import ALL, GRADES, METRICS


def _grade_rows(run="r1", it=1, n=3):
    return [
        {
            "run_id": run,
            "iteration": it,
            "prompt_id": f"p{i}",
            "sample_index": 0,
            "score": float(i % 2),
            "status": "ok" if i % 2 else "wrong",
            "extracted": str(i),
        }
        for i in range(n)
    ]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "a" / "x.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_atomic_dir_replaces_whole_directory(tmp_path):
    dest = tmp_path / "ckpt"
    with atomic_dir(dest) as d:
        (d / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(dest) as d:
            (d / "b.txt").write_text("2")
            raise ValueError("boom")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]
    with atomic_dir(dest) as d:
        (d / "c.txt").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in dest.iterdir()) == ["c.txt"]


def test_fileref_detects_change_and_deletion(tmp_path):
    ref = write_parquet(_grade_rows(), GRADES, tmp_path / "g.parquet")
    assert ref.is_valid()
    write_parquet(_grade_rows(n=4), GRADES, tmp_path / "g.parquet")
    assert not ref.is_valid()
    (tmp_path / "g.parquet").unlink()
    assert not ref.is_valid()


def test_directory_digest_covers_names_and_bytes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"abc")
    a = FileRef.of(tmp_path / "d")
    (tmp_path / "d" / "w.bin").write_bytes(b"abd")
    assert FileRef.of(tmp_path / "d").sha256 != a.sha256


def test_digest_memo_keeps_the_recently_used_half_when_full(tmp_path, monkeypatch):
    import os

    from storage import handles

    monkeypatch.setenv("SEGFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(handles, "MEMO_MIN_BYTES", 4)
    monkeypatch.setattr(handles, "MEMO_MAX_ENTRIES", 4)
    memo = tmp_path / "cache" / "digests"
    files, entries = [], []
    for i in range(4):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(b"x" * (10 + i))
        before = set(memo.iterdir()) if memo.exists() else set()
        handles.digest(files[-1])
        entries += list(set(memo.iterdir()) - before)  # the one new entry
        os.utime(entries[-1], ns=(i * 10**9, i * 10**9))  # distinct ages, f0's the oldest
    oldest = entries[0]
    handles.digest(files[0])  # a hit: f0's entry becomes the most recently used
    assert oldest.exists() and oldest.stat().st_mtime_ns > 3 * 10**9
    (tmp_path / "f4.bin").write_bytes(b"y" * 20)
    handles.digest(tmp_path / "f4.bin")  # the 5th entry: prune to the 2 most recently used
    survivors = set(memo.iterdir())
    assert len(survivors) == 2 and oldest in survivors


def test_large_digests_are_remembered_by_stat_and_recomputed_after_any_rewrite(tmp_path, monkeypatch):
    import hashlib
    import os

    from storage import handles

    monkeypatch.setenv("SEGFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(handles, "MEMO_MIN_BYTES", 4)
    ckpt = tmp_path / "ckpt"
    with atomic_dir(ckpt) as d:
        (d / "model.bin").write_bytes(b"weights-1")
    first = handles.digest(ckpt)
    assert first == handles._sha256(ckpt.resolve(), handles._files(ckpt.resolve()))
    assert len(list((tmp_path / "cache" / "digests").iterdir())) == 1
    hashed = []
    monkeypatch.setattr(handles, "_sha256", lambda p, files: hashed.append(p) or "recomputed")
    assert handles.digest(ckpt) == first and hashed == []  # unchanged: the memo answers
    # Rewritten the way segflow writes (atomic rename: new inode), same size: hashed again.
    with atomic_dir(ckpt) as d:
        (d / "model.bin").write_bytes(b"weights-2")
    assert handles.digest(ckpt) == "recomputed" and len(hashed) == 1
    # Edited in place, same size: the new mtime gives it away.
    f = tmp_path / "big.bin"
    f.write_bytes(b"0123456789")
    monkeypatch.undo()
    monkeypatch.setenv("SEGFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(handles, "MEMO_MIN_BYTES", 4)
    before = handles.digest(f)
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.write(b"X")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert handles.digest(f) == hashlib.sha256(b"X123456789").hexdigest() != before
    # Small files are always hashed: no memo entry for them.
    entries = len(list((tmp_path / "cache" / "digests").iterdir()))
    (tmp_path / "s.txt").write_text("ab")
    handles.digest(tmp_path / "s.txt")
    assert len(list((tmp_path / "cache" / "digests").iterdir())) == entries


def test_schema_mismatch_names_the_columns(tmp_path):
    rows = _grade_rows()
    for r in rows:
        r.pop("status")
        r["stauts"] = "ok"
    with pytest.raises(SchemaMismatch, match=r"missing columns \['status'\].*unexpected columns \['stauts'\]"):
        write_parquet(rows, GRADES, tmp_path / "g.parquet")
    assert not (tmp_path / "g.parquet").exists()


def test_schema_mismatch_on_wrong_type(tmp_path):
    t = pa.table({f.name: (pa.array(["high"]) if f.name == "score" else pa.array([None], f.type)) for f in GRADES})
    with pytest.raises(SchemaMismatch, match="column 'score' is string, expected double"):
        write_parquet(t, GRADES, tmp_path / "g.parquet")


def test_read_checks_schema(tmp_path):
    ref = write_parquet(_grade_rows(), GRADES, tmp_path / "g.parquet")
    assert read_parquet(ref, GRADES).num_rows == 3
    with pytest.raises(SchemaMismatch):
        read_parquet(ref, METRICS)


def test_catalog_views_exist_on_empty_dir(tmp_path):
    con = open_catalog(tmp_path)
    for name in TABLE_GLOBS:
        cols = [c[0] for c in con.execute(f"describe {name}").fetchall()]
        assert set(ALL[name].names) <= set(cols), name
        assert con.execute(f"select count(*) from {name}").fetchone()[0] == 0


def test_catalog_unions_runs(tmp_path):
    for run in ("r1", "r2"):
        lay = RunLayout(runs_dir=str(tmp_path), run_id=run)
        write_parquet(_grade_rows(run), GRADES, lay.grades(1))
        write_metrics(lay.metrics(1, "grade"), run, 1, "grade", {"reward_mean": 0.5 if run == "r1" else 0.25})
        write_metrics(lay.eval_metrics(0), run, 0, "eval", {"eval_accuracy": 0.1})
    cols, rows = query(tmp_path, "select run_id, count(*) from grades group by 1 order by 1")
    assert rows == [("r1", 3), ("r2", 3)]
    _, rows = query(tmp_path, "select run_id, value from metrics where name='reward/mean' order by 1")
    assert rows == [("r1", 0.5), ("r2", 0.25)]
    _, rows = query(tmp_path, "select count(*) from metrics where stage='eval'")
    assert rows == [(2,)]


def test_health_view_lists_findings_of_finished_runs(tmp_path):
    assert query(tmp_path, "select count(*) from health")[1] == [(0,)]
    found = {"truncated": {"first_message": "84% of responses hit rollout.max_tokens=8", "iterations": [1, 2]}}
    for run, health in (("r1", found), ("r2", {}), ("old", None)):  # "old": a summary from before health checks
        (tmp_path / run).mkdir()
        summary = {
            "run_id": run,
            "iterations_completed": 2,
            "initial_eval_accuracy": 0.1,
            "final_eval_accuracy": 0.2,
            "wall_seconds": 9.0,
            **({} if health is None else {"health": health}),
        }
        (tmp_path / run / "summary.json").write_text(json.dumps(summary))
    cols, rows = query(tmp_path, "select run_id, finding, first_message, iterations from health")
    assert cols == ["run_id", "finding", "first_message", "iterations"]
    assert rows == [("r1", "truncated", "84% of responses hit rollout.max_tokens=8", [1, 2])]


def test_metrics_round_trip(tmp_path):
    ref = write_metrics(tmp_path / "metrics-x.parquet", "r", 3, "x", {"a": 1, "b": 2.5})
    assert read_metrics(ref) == {"a": 1.0, "b": 2.5}


def test_sql_cli_formats(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    lay = RunLayout(runs_dir=str(tmp_path), run_id="r1")
    write_parquet(_grade_rows(), GRADES, lay.grades(1))
    runner = CliRunner()
    res = runner.invoke(
        app, ["sql", "select prompt_id, score from grades order by 1", "--runs-dir", str(tmp_path), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == [
        {"prompt_id": "p0", "score": 0.0},
        {"prompt_id": "p1", "score": 1.0},
        {"prompt_id": "p2", "score": 0.0},
    ]
    res = runner.invoke(
        app, ["sql", "select prompt_id from grades order by 1", "--runs-dir", str(tmp_path), "--format", "csv"]
    )
    assert res.output.splitlines() == ["prompt_id", "p0", "p1", "p2"]
    res = runner.invoke(app, ["sql", "select * from nope", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "nope" in res.output


def test_sweep_temporaries_removes_what_a_killed_writer_left(tmp_path):
    from storage.handles import atomic_write_text, sweep_temporaries

    atomic_write_text(tmp_path / "a" / "grades.parquet", "kept")
    (tmp_path / "a" / ".grades.parquet.x1y2.tmp").write_text("half")
    (tmp_path / "ck" / ".0003.abc.tmp").mkdir(parents=True)
    (tmp_path / "ck" / ".0003.abc.tmp" / "model.safetensors").write_text("half")
    (tmp_path / "ck" / ".0002.old").mkdir()
    (tmp_path / ".lock").write_text("")
    assert sweep_temporaries(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".lock", "grades.parquet"]


def test_sql_is_read_only(tmp_path):
    from storage.catalog import query

    assert query(tmp_path, "select count(*) from rollouts") == (["count_star()"], [(0,)])
    wide = "pivot (select 'a' k, 1 v union all select 'b', 2) on k using sum(v)"
    assert query(tmp_path, wide) == (["a", "b"], [(1, 2)])  # PIVOT reads only, though DuckDB plans it as MULTI
    assert query(tmp_path, f"-- wide\n({wide})")[1] == [(1, 2)]
    for bad in (
        "copy (select 1) to '/tmp/x.csv'",
        "create table t as select 1",
        "set threads = 1",
        "select 1; drop view rollouts",
        "install httpfs",
        f"create table t as {wide}",
        f"{wide}; copy (select 1) to '/tmp/x.csv'",
    ):
        with pytest.raises(ValueError, match="read-only"):
            query(tmp_path, bad)
