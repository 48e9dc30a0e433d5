"""One writer per run: an exclusive lock on a run directory (``<runs_dir>/<run_id>/``).

``segflow run`` holds this lock for the whole run. A second ``segflow run`` on the same run id fails
at once with :class:`RunLockedError`, whose message names the holder::

    RunLockedError: run directory /x/runs/abc is locked by pid 1234 on host h since
    2026-11-22T05:00:00Z; wait for it or stop it

Usage (how the flow takes it)::

    from storage.run_lock import run_lock

    with run_lock(layout.root) as lock:
        if lock.took_over_from is not None:
            ...  # the previous writer (pid lock.took_over_from) died mid-run; resume from its cache
        ...      # every write into layout.root happens inside this block

Why ``fcntl.flock``
-------------------
The truth is the kernel's advisory lock (``flock(LOCK_EX | LOCK_NB)``) on ``<run_dir>/.lock``, not
the existence or content of a file. The kernel drops the lock when the last descriptor of the open
file description is closed, which includes the holder being killed (SIGKILL, OOM killer, a crash):
no cleanup code has to run, so a stale lock can never block a new run. A pid file alone would need
"is that pid still alive?" guesses, which are wrong after pid reuse and impossible across hosts.

The JSON record ``{"pid", "host", "started"}`` written into the lock file after acquiring is only
informational: it lets a refused acquirer name the holder, and lets a successful acquirer notice
that the previous holder never cleared it (it died, or exited without running ``__exit__``) and log
"took over from dead pid N".

Semantics worth knowing
-----------------------
* flock locks belong to the *open file description*. A second ``open()`` + ``flock()`` of the same
  file conflicts even inside the same process (tests/test_run_lock.py checks this on Linux). On
  top of that this module keeps an in-process registry so that nesting ``run_lock`` on the same
  directory raises a clear "already locked by this process" error instead of relying on that.
* The descriptor is opened close-on-exec (Python's default, PEP 446), so programs started with
  ``subprocess`` do not inherit the lock. A child made with a bare ``fork()`` (e.g. multiprocessing's
  "fork" start method) *does* share the open file description, so the lock stays held until both
  the parent has released it and that child has exited.
* Local filesystems (ext4, xfs, btrfs, tmpfs, overlayfs) implement flock natively. On NFS, Linux
  emulates flock with POSIX byte-range locks over NLM/NFSv4: it then works across clients, but a
  lock held by a crashed *client machine* is only released when the server's lease/grace period
  expires, and some other network or FUSE filesystems do not support it at all (``flock`` raises
  ``OSError`` ENOLCK/EOPNOTSUPP, which is propagated). The host in the record helps diagnose these.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".lock"

# Bounded waits used only to build a better error message / survive a deleted lock file; acquisition
# itself never blocks.
_RECORD_READ_ATTEMPTS = 3
_RECORD_READ_PAUSE_S = 0.03
_REOPEN_ATTEMPTS = 5


class RunLockedError(RuntimeError):
    """The run directory is locked by another writer (another process, or this one)."""

    def __init__(
        self,
        run_dir: Path,
        message: str,
        holder_pid: int | None = None,
        holder_host: str | None = None,
        holder_started: str | None = None,
    ):
        super().__init__(message)
        self.run_dir = run_dir
        self.holder_pid = holder_pid
        self.holder_host = holder_host
        self.holder_started = holder_started


@dataclass(frozen=True)
class LockInfo:
    """What this process wrote into the lock file, plus what it found there."""

    path: Path  # the run directory
    pid: int
    host: str
    started: str  # UTC, ISO 8601 with a trailing Z
    took_over_from: int | None  # pid of a previous holder that never released cleanly, else None


# Run directories this process currently holds, keyed by the directory's (st_dev, st_ino) so that
# symlinks and different spellings of the same path are recognised.
_held: dict[tuple[int, int], LockInfo] = {}
_held_guard = threading.Lock()


def _now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_record(fd: int) -> dict | None:
    """The JSON record in the lock file, or None when it is empty, partial or not ours."""
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, min(size, 64 * 1024), 0) if size else b""
    except OSError:
        return None
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _record_pid(record: dict | None) -> int | None:
    pid = record.get("pid") if record else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def _write_record(fd: int, info: LockInfo) -> None:
    data = json.dumps({"pid": info.pid, "host": info.host, "started": info.started}).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)  # after a machine crash the record may still name us; that only yields a took-over line


def _locked_error(run_dir: Path, record: dict | None) -> RunLockedError:
    pid = _record_pid(record)
    if pid is None:
        return RunLockedError(
            run_dir,
            f"run directory {run_dir} is locked by unknown pid (its lock record is empty or unreadable, "
            f"see {run_dir / LOCK_FILE_NAME}); wait for it or stop it",
        )
    host = str(record.get("host") or "unknown host")
    started = str(record.get("started") or "an unknown time")
    return RunLockedError(
        run_dir,
        f"run directory {run_dir} is locked by pid {pid} on host {host} since {started}; wait for it or stop it",
        holder_pid=pid,
        holder_host=host,
        holder_started=started,
    )


def _open_and_lock(run_dir: Path) -> int:
    """Open ``<run_dir>/.lock`` and take the exclusive flock without blocking; return the fd.

    Raises RunLockedError when another open file description holds it."""
    lock_path = run_dir / LOCK_FILE_NAME
    for _ in range(_REOPEN_ATTEMPTS):
        fd = os.open(
            lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666
        )  # as `open` would: the umask decides who else may take it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            # Held by someone else. The holder writes its record right after locking; give a racing
            # holder a few milliseconds so the message can name it, but never wait for the lock.
            record = None
            for attempt in range(_RECORD_READ_ATTEMPTS):
                record = _read_record(fd)
                if _record_pid(record) is not None:
                    break
                if attempt + 1 < _RECORD_READ_ATTEMPTS:
                    time.sleep(_RECORD_READ_PAUSE_S)
            os.close(fd)
            raise _locked_error(run_dir, record) from None
        # We never unlink the lock file, but someone else may have (rm -rf of the run, a cleanup
        # script). Locking an inode that is no longer at the path would let a later acquirer lock a
        # fresh file there, so check that the path still names the inode we locked.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        run_dir.mkdir(parents=True, exist_ok=True)
    raise RuntimeError(f"lock file {lock_path} keeps being replaced while locking it")


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[LockInfo]:
    """Hold the exclusive writer lock on ``run_dir`` (created with parents if missing) for the block.

    Raises RunLockedError at once if another process, or this one, already holds it. If the previous
    holder died without releasing (its record is still in the lock file but the kernel lock is free),
    the lock is taken over, a warning is logged, and ``LockInfo.took_over_from`` is that pid."""
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    st = run_dir.stat()
    key = (st.st_dev, st.st_ino)

    with _held_guard:
        mine = _held.get(key)
        if mine is not None:
            raise RunLockedError(
                run_dir,
                f"run directory {run_dir} is locked by pid {mine.pid} on host {mine.host} since "
                f"{mine.started}; that is this process: run_lock is not re-entrant, the run is "
                "already being written here",
                holder_pid=mine.pid,
                holder_host=mine.host,
                holder_started=mine.started,
            )
        fd = _open_and_lock(run_dir)
        try:
            previous = _read_record(fd)
            took_over_from = _record_pid(previous)
            if took_over_from is not None:
                logger.warning(
                    "run lock %s: took over from dead pid %d (host %s, started %s); that run ended "
                    "without releasing its lock",
                    run_dir,
                    took_over_from,
                    previous.get("host", "unknown"),
                    previous.get("started", "unknown"),
                )
            elif os.fstat(fd).st_size:
                logger.warning("run lock %s: lock file held an unreadable record; overwriting it", run_dir)
            info = LockInfo(
                path=run_dir,
                pid=os.getpid(),
                host=socket.gethostname(),
                started=_now_utc(),
                took_over_from=took_over_from,
            )
            _write_record(fd, info)
        except BaseException:
            os.close(fd)  # closing the only descriptor drops the flock
            raise
        _held[key] = info

    try:
        yield info
    finally:
        with _held_guard:
            _held.pop(key, None)
        try:
            # Clear the record *before* unlocking: once unlocked, the next holder may already have
            # written its own record, which we must not truncate.
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError:
            logger.warning("run lock %s: could not clear the lock record", run_dir, exc_info=True)
        finally:
            # The file is deliberately left in place. Unlinking it on release races with another
            # acquirer: B opens .lock (old inode) and is about to flock it, we unlink and unlock, B
            # locks the now-nameless old inode while C creates a new .lock and locks that one, and
            # both B and C believe they are the only writer. Keeping one inode forever avoids that.
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
