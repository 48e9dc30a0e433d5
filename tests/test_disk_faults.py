"""Artifacts follow the umask; a full disk, a read-only runs directory and a failed hash check are said plainly
(issue 27, items 5 and 6)."""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.notify import describe
from storage import disk
from storage.disk import DiskFullError, RunsDirNotWritable, check_writable, mount_point
from storage.handles import FileRef, atomic_dir, atomic_path, atomic_write_text
from storage.parquet import write_parquet

ROOT = Path(__file__).resolve().parents[1]

SCHEMA = pa.schema([("x", pa.int64())])


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _tmpfs(where: Path, *options: str):
    """A fresh tmpfs at `where` (root only, and only where mounting is allowed), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# --- item 5: the umask --------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_artifacts_and_checkpoint_dirs_follow_the_umask(tmp_path, mask):
    files, dirs = 0o666 & ~mask, 0o777 & ~mask  # what open() and mkdir() would create
    with _umask(mask):
        parquet = write_parquet([{"x": 1}], SCHEMA, tmp_path / "a.parquet")
        text = atomic_write_text(tmp_path / "summary.json", "{}")
        with atomic_dir(tmp_path / "checkpoint") as tmp:
            (tmp / "model.safetensors").write_bytes(b"w")
            (tmp / "adapter").mkdir()
            (tmp / "adapter" / "adapter.bin").write_bytes(b"a")
        rewritten = write_parquet([{"x": 2}], SCHEMA, tmp_path / "a.parquet")  # over an existing artifact
    assert _mode(Path(parquet.path)) == files and _mode(Path(text.path)) == files
    assert _mode(Path(rewritten.path)) == files
    ckpt = tmp_path / "checkpoint"
    assert _mode(ckpt) == dirs and _mode(ckpt / "adapter") == dirs
    assert _mode(ckpt / "model.safetensors") == files and _mode(ckpt / "adapter" / "adapter.bin") == files
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_run_lock_file_follows_the_umask_so_a_team_member_can_take_it(tmp_path, mask):
    from storage.run_lock import LOCK_FILE_NAME, run_lock

    with _umask(mask), run_lock(tmp_path / "run"):
        pass
    assert _mode(tmp_path / "run" / LOCK_FILE_NAME) == 0o666 & ~mask  # group-writable under umask 002


# --- item 6: a full disk ------------------------------------------------------------------------------


def test_full_disk_in_a_write_raises_disk_full_naming_mount_and_artifact(tmp_path):
    dest = tmp_path / "grades.parquet"
    write_parquet([{"x": 1}], SCHEMA, dest)
    before = dest.read_bytes()
    with pytest.raises(DiskFullError) as info:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value) == (
        f"no space left on {mount_point(tmp_path)} while writing {dest}; free space and rerun the same command"
    )
    assert info.value.errno == errno.ENOSPC and isinstance(info.value.__cause__, OSError)
    assert dest.read_bytes() == before and _leftovers(tmp_path) == []  # old artifact intact, temp file gone


def test_full_disk_from_pyarrow_becomes_disk_full(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def full(*a, **k):  # what pyarrow raises on ENOSPC (seen on a 1 MB tmpfs)
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(DiskFullError, match=r"while writing .*rollouts\.parquet; free space and rerun"):
        write_parquet([{"x": 1}], SCHEMA, tmp_path / "rollouts.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("free, converted", [(0, True), (10 << 30, False)])
def test_torch_short_write_is_disk_full_only_when_the_disk_is_full(tmp_path, monkeypatch, free, converted):
    """torch.save reports ENOSPC only as an 'unexpected pos' RuntimeError; free space decides."""
    monkeypatch.setattr(disk, "free_bytes", lambda path: free)
    dest = tmp_path / "iter-1" / "checkpoint"
    with pytest.raises(RuntimeError if not converted else DiskFullError) as info:
        with atomic_dir(dest) as tmp:
            (tmp / "optimizer.pt").write_bytes(b"x" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 856064 vs 855956")
    assert isinstance(info.value, DiskFullError) == converted
    if converted:
        assert f"while writing {dest};" in str(info.value)
    assert list((tmp_path / "iter-1").iterdir()) == []


def test_a_bug_on_a_nearly_full_disk_is_not_called_disk_full(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 0)
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "a.json"):
            raise KeyError("prompt_id")


def test_torch_save_on_a_full_tmpfs_is_disk_full_and_leaves_nothing(tmp_path):
    import torch

    with _tmpfs(tmp_path / "small", "size=1m") as mnt:
        keep = atomic_write_text(mnt / "config.yaml", "a: 1\n")
        dest = mnt / "iter-1" / "checkpoint"
        with pytest.raises(DiskFullError) as info:
            with atomic_dir(dest) as tmp:
                torch.save({"optimizer": torch.zeros(600_000)}, tmp / "optimizer.pt")  # 2.4 MB
        assert str(info.value) == f"no space left on {mnt} while writing {dest}; free space and rerun the same command"
        assert list((mnt / "iter-1").iterdir()) == [] and keep.is_valid()
        # torch's failed zip writer holds its (deleted) temporary open until the exception is collected; a
        # run exits there, a test goes on.
        del info
        gc.collect()
        with pytest.raises(DiskFullError, match=r"while writing .*big\.parquet"):
            noise = np.random.default_rng(0).integers(0, 2**62, 400_000)  # 3.2 MB that no codec shrinks
            write_parquet(pa.table({"x": pa.array(noise, pa.int64())}), SCHEMA, mnt / "big.parquet")
        assert sorted(p.name for p in mnt.iterdir()) == ["config.yaml", "iter-1"]
        # The disk grew (here: the partial files are gone): the same write succeeds.
        assert write_parquet([{"x": 1}], SCHEMA, mnt / "big.parquet").is_valid()


def test_disk_full_survives_pickling():
    """Prefect pickles a failed task's exception; OSError's default reduce would call __init__(28, text)."""
    e = DiskFullError("no space left on /data while writing x; free space and rerun the same command", "x")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is DiskFullError and str(back) == str(e) and back.errno == errno.ENOSPC and back.path == "x"


def test_failure_notification_says_the_disk_is_full(tmp_path):
    msg = f"no space left on / while writing {tmp_path}/c; free space and rerun the same command"
    assert describe(DiskFullError(msg, "c"), str(tmp_path)) == msg
    # ENOSPC from outside our writers (Prefect persisting a result) names its file.
    res = tmp_path / ".prefect-results" / "abc"
    assert describe(OSError(errno.ENOSPC, "No space left on device", str(res)), str(tmp_path)) == (
        f"no space left on {mount_point(res)} while writing {res}; free space and rerun the same command"
    )
    assert describe(ValueError("bad row"), str(tmp_path)) == "ValueError: bad row"


def test_run_ends_with_the_disk_full_line(tmp_path, monkeypatch):
    import flows.rl_train

    msg = f"no space left on / while writing {tmp_path}/x/checkpoint; free space and rerun the same command"

    def full(cfg, runs_dir):
        raise DiskFullError(msg, "x")

    monkeypatch.setattr(flows.rl_train, "rl_train", full)
    res = CliRunner().invoke(app, ["run", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == f"error: {msg}"


def test_any_command_ends_with_the_disk_full_line(tmp_path):
    """`segflow grade --out` on a full disk: the console script prints one error line and exits 2."""
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"response": "#### 3", "reference": "3"}\n')
    script = (
        "import sys, flows.cli, storage.handles\n"
        "from storage.disk import DiskFullError\n"
        "def full(path, text):\n"
        "    raise DiskFullError(f'no space left on / while writing {path}; free space and rerun the same command', "
        "str(path))\n"
        "storage.handles.atomic_write_text = full\n"
        f"sys.argv = ['segflow', 'grade', '--task', 'arith', '--input', {str(inp)!r}, "
        f"'--out', {str(tmp_path / 'o.jsonl')!r}]\n"
        "flows.cli.main()\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: no space left on / while writing {tmp_path / 'o.jsonl'}; free space and rerun the same command"
    )
    assert "Traceback" not in res.stderr


# --- item 6: a runs directory that cannot be written --------------------------------------------------


def test_check_writable_creates_the_runs_dir_and_leaves_no_probe(tmp_path):
    runs = tmp_path / "a" / "runs"
    check_writable(runs)
    assert runs.is_dir() and list(runs.iterdir()) == []


def test_read_only_mount_is_not_writable(tmp_path):
    with _tmpfs(tmp_path / "ro", "ro", "size=1m") as mnt:
        for runs in (mnt, mnt / "runs"):  # the directory itself, and a missing one under a read-only parent
            with pytest.raises(RunsDirNotWritable) as info:
                check_writable(runs)
            assert str(info.value) == f"runs directory {runs} is not writable (Read-only file system)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_chmod_555_runs_dir_is_not_writable(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        for d in (runs, runs / "sub"):
            with pytest.raises(RunsDirNotWritable, match=rf"runs directory {d} is not writable \(Permission denied\)"):
                check_writable(d)
    finally:
        runs.chmod(0o755)


def test_run_with_an_unwritable_runs_dir_fails_before_any_work(tmp_path, monkeypatch):
    """/proc/1 refuses new files even to root: the check, not the permission bits, decides."""
    import flows.rl_train

    monkeypatch.setattr(flows.rl_train, "rl_train", lambda *a: pytest.fail("the flow started"))
    runs = Path("/proc/1/segflow-runs")
    res = CliRunner().invoke(app, ["run", "--runs-dir", str(runs)])
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith(f"error: runs directory {runs} is not writable (")


# --- item 6: a failed hash check says which artifact and why --------------------------------------------


class _State:
    def __init__(self, out):
        self.out, self.name = out, "Cached"

    def result(self):
        return self.out


class _FakeTask:
    """The slice of a Prefect task `ensure` uses: a cached state, and a refresh that rewrites the file."""

    name = "grade"

    def __init__(self, cached, path: Path):
        self.cached, self.path, self.refreshed = cached, path, 0

    def __call__(self, *args, return_state=False, **kwargs):
        return _State(self.cached)

    def with_options(self, refresh_cache):
        assert refresh_cache

        def rerun(*args, **kwargs):
            self.refreshed += 1
            return atomic_write_text(self.path, "fresh")

        return rerun


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_rerun_logs_which_artifact_failed_its_hash_check_and_why(tmp_path, caplog, damage):
    from tasks.common import ensure

    path = tmp_path / "grades.parquet"
    cached = atomic_write_text(path, "original")
    if damage == "missing":
        path.unlink()
        why = "missing"
    else:
        path.write_text("tampered")
        why = (
            f"changed (expected sha256 {hashlib.sha256(b'original').hexdigest()[:12]}, "
            f"found {hashlib.sha256(b'tampered').hexdigest()[:12]})"
        )
    task = _FakeTask(cached, path)
    with caplog.at_level(logging.WARNING, logger="segflow.cache"):
        out, hit = ensure(task)
    assert task.refreshed == 1 and not hit and out.is_valid()
    assert [r.getMessage() for r in caplog.records if r.name == "segflow.cache"] == [
        f"grade runs again: its artifact {path} is {why}"
    ]


def test_valid_cached_artifact_logs_nothing(tmp_path, caplog):
    from tasks.common import ensure

    path = tmp_path / "grades.parquet"
    task = _FakeTask(atomic_write_text(path, "original"), path)
    with caplog.at_level(logging.WARNING, logger="segflow.cache"):
        out, hit = ensure(task)
    assert hit and task.refreshed == 0 and not [r for r in caplog.records if r.name == "segflow.cache"]


def test_file_ref_mismatch_is_none_for_an_intact_file(tmp_path):
    (tmp_path / "a").write_text("x")
    ref = FileRef.of(tmp_path / "a")
    assert ref.sha256 == hashlib.sha256(b"x").hexdigest() and ref.mismatch() is None and ref.is_valid()
