"""Content handles and atomic writes.

Stages pass `FileRef`s (path + sha256 of the bytes), never data. Because the digest is part of the
handle, a downstream Prefect cache key changes whenever upstream content changes, and a cached
handle whose file was deleted or rewritten is detected by `FileRef.is_valid()`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict

from storage.faults import crash_point

_CHUNK = 1 << 20


class FileRef(BaseModel):
    """A file or directory by content. For a directory the digest covers every file's relative path and bytes."""

    model_config = ConfigDict(frozen=True)
    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> "FileRef":
        p = Path(path)
        return cls(path=str(p), sha256=digest(p))

    def is_valid(self) -> bool:
        p = Path(self.path)
        return p.exists() and digest(p) == self.sha256


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)


def _files(p: Path) -> list[Path]:
    return sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]


def _sha256(p: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    if p.is_dir():
        for f in files:
            h.update(str(f.relative_to(p)).encode() + b"\0")
            _hash_file(h, f)
    else:
        _hash_file(h, p)
    return h.hexdigest()


# Re-hashing a real model's checkpoints on every rerun costs seconds per GB, so digests of large files
# and directories are remembered under the stat signature (path, size, mtime_ns, inode of every file)
# they were computed for, as make and rsync trust timestamps. Writes here are atomic renames, which
# always change the inode, so a rewritten artifact is re-hashed. The memo lives outside run directories.
MEMO_MIN_BYTES = 32 << 20
# An entry is one 64-byte digest per large artifact version; past this many, the least recently used half
# goes (a hit refreshes an entry's mtime), so months of runs never leave an unbounded directory.
MEMO_MAX_ENTRIES = 20_000


def _memo_dir() -> Path:
    base = os.environ.get("SEGFLOW_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                               os.path.expanduser("~/.cache"), "segflow")
    return Path(base) / "digests"


def digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative path + bytes, in sorted order)."""
    p = Path(path).resolve()
    files = _files(p)
    stats = [(str(f.relative_to(p)) if p.is_dir() else "", *_stat(f)) for f in files]
    if sum(s[1] for s in stats) < MEMO_MIN_BYTES:
        return _sha256(p, files)
    signature = hashlib.sha256(repr((str(p), stats)).encode()).hexdigest()
    memo = _memo_dir() / signature
    try:
        value = memo.read_text().strip()
        if len(value) == 64:  # anything else (a truncated hint) is recomputed below
            try:
                os.utime(memo)  # recently used: kept by _prune_memo
            except OSError:  # a read-only cache still answers
                pass
            return value
    except OSError:
        pass
    value = _sha256(p, files)
    try:  # a memo is a hint, rebuilt if lost: no fsync, but never seen half-written
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(value)
        os.replace(tmp, memo)
        _prune_memo(memo.parent)
    except OSError:  # a read-only home only costs the next rerun a re-hash
        pass
    return value


def _prune_memo(memo_dir: Path) -> None:
    """Drop the least recently used half of the memo once it holds more than MEMO_MAX_ENTRIES entries."""
    entries = list(os.scandir(memo_dir))
    if len(entries) <= MEMO_MAX_ENTRIES:
        return
    by_age = sorted(entries, key=lambda e: e.stat().st_mtime_ns)
    for e in by_age[: len(by_age) - MEMO_MAX_ENTRIES // 2]:
        try:
            os.unlink(e.path)
        except OSError:  # another process pruned it first
            pass


def _stat(f: Path) -> tuple[int, int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success fsync it and rename it over `dest`.

    On any exception the temporary file is removed, so a reader never sees a half-written artifact.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(dest: str | Path, text: str) -> FileRef:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return FileRef.of(dest)


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Like `atomic_path` for a directory (e.g. a model checkpoint): build it aside, rename when complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        crash_point("checkpoint_save")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if dest.exists():
            # A previous attempt's complete output (e.g. a refreshed cache entry): replace it whole.
            old = dest.with_name(f".{dest.name}.old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            _rmtree(old)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            _rmtree(tmp)


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def sweep_temporaries(root: str | Path) -> int:
    """Remove the temporary files and directories (`.<name>.*.tmp`, `.<name>.old`) that a killed writer left
    under `root`. Only safe while holding the run's lock (no live writer). Returns how many were removed."""
    removed = 0
    for p in sorted(Path(root).rglob(".*"), key=lambda p: -len(p.parts)):
        if p.name.endswith(".tmp") or p.name.endswith(".old"):
            _rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
    return removed
