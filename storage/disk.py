"""Disk faults, said plainly: a full disk while writing an artifact, and a runs directory that cannot be written.

Writers (storage/handles.py) turn whatever a library raises on a full disk into `DiskFullError`, so the run's
last line and its failure notification say which filesystem filled up and which artifact was being written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from storage.faults import InjectedFailure

# Errors that mean "the filesystem has no room for these bytes" (a quota counts: the fix is the same).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries that do not raise OSError report it: pyarrow and Rust (safetensors) keep the OS text.
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "os error 28", "errno 28")
# torch.save's C++ writer reports a short write only as "[enforce fail at inline_container.cc] unexpected
# pos ...", without the errno. A failed write leaves the filesystem full to the block, so an error raised
# while less than this is free is taken as the disk being full.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """No room left for an artifact. str() is the whole message; errno is ENOSPC."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(errno.ENOSPC, message)
        self.message, self.path = message, path

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # OSError pickles as (errno, strerror); results and states are pickled by Prefect
        return type(self), (self.message, self.path)


class RunsDirNotWritable(OSError):
    """The runs directory cannot be created or written. str() is the whole message."""

    def __init__(self, message: str):
        super().__init__(errno.EACCES, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message,)


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem that holds `path` (or would, for a path not yet created)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Bytes this process may still write on the filesystem of `path` (root may use the reserved blocks)."""
    st = os.statvfs(mount_point(path))
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def disk_full_message(dest: str | Path) -> str:
    return f"no space left on {mount_point(dest)} while writing {dest}; free space and rerun the same command"


def is_disk_full(exc: BaseException, dest: str | Path) -> bool:
    """Did `exc`, raised while writing `dest` (its partial bytes still on disk), come from a full disk?"""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the errno may sit on a wrapped cause
        seen.add(id(e))
        if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in _FULL_ERRNOS):
            return True
        if any(t in str(e).lower() for t in _FULL_TEXTS):
            return True
        e = e.__cause__ or e.__context__
    if not isinstance(exc, (RuntimeError, OSError)) or isinstance(exc, InjectedFailure):
        return False  # torch's short write is a RuntimeError; a bug's ValueError on a nearly full disk is a bug
    try:
        return free_bytes(dest) < NEARLY_FULL_BYTES
    except OSError:
        return False


def as_disk_full(exc: BaseException, dest: str | Path) -> DiskFullError | None:
    """`exc` as a DiskFullError naming `dest`, or None when the disk is not what failed."""
    if isinstance(exc, DiskFullError):
        return exc
    return DiskFullError(disk_full_message(dest), str(dest)) if is_disk_full(exc, dest) else None


def reported_disk_full(exc: BaseException, where: str | Path) -> DiskFullError | None:
    """For an error that reached the top (a CLI command, a failure notification): a DiskFullError as it is,
    an OSError with ENOSPC/EDQUOT raised outside our writers (e.g. Prefect persisting a result) as one naming
    its file or `where`; None otherwise. No free-space guess: at the top the partial bytes are gone."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        path = exc.filename or where
        return DiskFullError(disk_full_message(path), str(path))
    return None


def check_writable(runs_dir: str | Path) -> None:
    """Create `runs_dir` if missing and write (then remove) a probe file in it; RunsDirNotWritable if either
    fails. Permission bits alone would not do: root ignores them, and a read-only mount overrides them."""
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".segflow-write-probe.", suffix=".tmp", dir=runs_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or str(e)
        raise RunsDirNotWritable(f"runs directory {runs_dir} is not writable ({reason})") from e
