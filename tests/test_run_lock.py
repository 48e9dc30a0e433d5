"""storage.run_lock: one writer per run directory, checked with real processes and real flock."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.run_lock import LOCK_FILE_NAME, RunLockedError, run_lock

REPO = Path(__file__).resolve().parents[1]

# Child: take the lock, announce readiness on stdout, then sleep until killed.
_HOLDER = textwrap.dedent("""
    import sys, time
    from storage.run_lock import run_lock
    with run_lock(sys.argv[1]) as info:
        print("READY", info.pid, flush=True)
        time.sleep(60)
""")


def _start_holder(run_dir: Path) -> subprocess.Popen:
    """Start a child python (the venv's, as running this test) that holds the lock; wait until it does."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"lock holder did not start: stdout={line!r} stderr={err!r}")
    assert int(line.split()[1]) == proc.pid
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=5)


def test_acquire_release_acquire(tmp_path):
    run_dir = tmp_path / "runs" / "abc"  # missing parents are created
    with run_lock(run_dir) as info:
        assert run_dir.is_dir()
        assert info.pid == os.getpid() and info.host and info.started.endswith("Z")
        record = json.loads((run_dir / LOCK_FILE_NAME).read_text())
        assert record == {"pid": info.pid, "host": info.host, "started": info.started}
    assert (run_dir / LOCK_FILE_NAME).exists()  # kept on release (no unlink race)
    assert (run_dir / LOCK_FILE_NAME).read_text() == ""  # record cleared
    with run_lock(run_dir) as again:
        assert again.took_over_from is None


def test_other_process_holding_lock_refuses_at_once(tmp_path):
    run_dir = tmp_path / "runs" / "abc"
    proc = _start_holder(run_dir)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunLockedError) as exc_info, run_lock(run_dir):
            pytest.fail("acquired a lock held by another process")
        assert time.monotonic() - t0 < 1.0  # fails at once, never waits for the holder
        msg = str(exc_info.value)
        assert f"locked by pid {proc.pid} on host " in msg
        assert str(run_dir) in msg and " since " in msg and "wait for it or stop it" in msg
        assert exc_info.value.holder_pid == proc.pid
    finally:
        _kill(proc)


def test_sigkilled_holder_is_taken_over(tmp_path, caplog):
    run_dir = tmp_path / "runs" / "abc"
    proc = _start_holder(run_dir)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs: the record stays, the kernel drops the flock
        proc.wait(timeout=5)
        assert json.loads((run_dir / LOCK_FILE_NAME).read_text())["pid"] == proc.pid
        with caplog.at_level(logging.WARNING, logger="storage.run_lock"), run_lock(run_dir) as info:
            assert info.took_over_from == proc.pid
            assert info.pid == os.getpid()
            assert json.loads((run_dir / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()
        assert f"took over from dead pid {proc.pid}" in caplog.text
    finally:
        _kill(proc)


def test_clean_release_is_not_a_takeover(tmp_path, caplog):
    run_dir = tmp_path / "abc"
    with run_lock(run_dir):
        pass
    with caplog.at_level(logging.WARNING, logger="storage.run_lock"), run_lock(run_dir) as info:
        assert info.took_over_from is None
    assert "took over" not in caplog.text


def test_corrupted_lock_file_does_not_break_acquisition(tmp_path):
    run_dir = tmp_path / "abc"
    run_dir.mkdir()
    (run_dir / LOCK_FILE_NAME).write_bytes(b'\x00\xff{"pid": garbage')
    with run_lock(run_dir) as info:
        assert info.took_over_from is None
        assert json.loads((run_dir / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()
    # A JSON record without a usable pid is treated the same way.
    (run_dir / LOCK_FILE_NAME).write_text('{"pid": "x"}')
    with run_lock(run_dir) as info:
        assert info.took_over_from is None


def test_same_process_second_acquisition_conflicts(tmp_path):
    run_dir = tmp_path / "abc"
    with run_lock(run_dir) as info:
        # Nested run_lock on the same directory (also through a different spelling of the path).
        for spelling in (run_dir, tmp_path / "." / "abc"):
            with pytest.raises(RunLockedError, match=f"locked by pid {info.pid} .*this process"), run_lock(spelling):
                pytest.fail("run_lock is re-entrant")
        # The kernel agrees on its own: flock belongs to the open file description, so a second
        # open() + flock() of the same file in the same process conflicts (Linux).
        fd = os.open(run_dir / LOCK_FILE_NAME, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    # Released: both paths work again.
    with run_lock(run_dir):
        pass


def test_holder_without_readable_record_reports_unknown_pid(tmp_path):
    # A raw flock held on another open file description of this process, with an empty record
    # (as in the instant between a holder's flock and its write): refused, "unknown pid".
    run_dir = tmp_path / "abc"
    run_dir.mkdir()
    fd = os.open(run_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunLockedError, match="locked by unknown pid"), run_lock(run_dir):
            pytest.fail("acquired a lock held by another open file description")
    finally:
        os.close(fd)
    with run_lock(run_dir) as info:
        assert info.took_over_from is None


def test_exception_in_block_releases(tmp_path):
    run_dir = tmp_path / "abc"
    with pytest.raises(ValueError, match="boom"), run_lock(run_dir):
        raise ValueError("boom")
    with run_lock(run_dir) as info:
        assert info.took_over_from is None
