"""Artifacts that several runs of one runs directory share (`<runs_dir>/shared/`, storage/layout.py).

`build_once(dest, build)` makes a directory the first time any run needs it; every later run, and a run
that asked at the same moment, reuses it. `link(path, target)` points a run's own path at it, so the run
directory reads as before (`<run>/models/warm_start/config.json`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.handles import atomic_dir


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Block until this process holds an exclusive flock on `lock_file`. Unlike the run lock
    (storage/run_lock.py), which refuses a second writer, a second builder waits: the first one's result is
    what it came for. The kernel drops the lock of a killed process."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sweep(dest: Path) -> None:
    """Remove what a killed builder of `dest` left: atomic_dir's `.<name>.<hex>.tmp` and `.<name>.old`.
    Only called under dest's lock, so no live builder owns them."""
    for p in [*dest.parent.glob(f".{dest.name}.*.tmp"), dest.with_name(f".{dest.name}.old")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink(missing_ok=True)


def build_once(dest: str | Path, build: Callable[[Path], None]) -> bool:
    """Make directory `dest` by `build(tmp)` (into a temporary directory renamed into place) unless it exists.
    Returns True when this call built it, False when it reused a complete one.

    `dest` only ever appears by that rename, so an existing `dest` is complete. Builders of the same `dest`
    take turns on a lock file next to it (`.<name>.lock`): a second one waits for the first, then finds
    `dest` and reuses it. An existing `dest` is never replaced, since another run may be reading it.
    """
    dest = Path(dest)
    if dest.is_dir():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(f".{dest.name}.lock")):
        if dest.is_dir():  # built while this call waited for the lock
            return False
        _sweep(dest)
        with atomic_dir(dest) as tmp:
            build(tmp)
    return True


def link(path: str | Path, target: str | Path) -> None:
    """Make `path` a relative symlink to `target` (so the runs directory can move as a whole), replacing
    whatever `path` was: an older link, or a directory an earlier segflow wrote there. The caller holds the
    run's lock, so nothing else reads or writes `path` meanwhile; a crash between removing the old `path` and
    linking leaves no `path`, which the next call makes."""
    path, target = Path(path), Path(target)
    rel = os.path.relpath(target, path.parent)
    if path.is_symlink():
        if os.readlink(path) == rel:
            return
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(rel, path)
