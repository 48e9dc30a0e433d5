"""Content handles and atomic writes.

Stages pass `FileRef`s (path + sha256 of the bytes), never data. Because the digest is part of the
handle, a downstream Prefect cache key changes whenever upstream content changes, and a cached
handle whose file was deleted or rewritten is detected by `FileRef.is_valid()`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from storage.disk import as_disk_full
from storage.faults import crash_point

_CHUNK = 1 << 20


class FileRef(BaseModel):
    """A file or directory by content. For a directory the digest covers every file's relative path and bytes."""

    model_config = ConfigDict(frozen=True)
    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> FileRef:
        p = Path(path)
        return cls(path=str(p), sha256=digest(p))

    def is_valid(self) -> bool:
        return self.mismatch() is None

    def mismatch(self) -> str | None:
        """None when the file still has the recorded content, else why not: "missing", or "changed (expected
        sha256 <first 12 hex>, found <first 12 hex>)"."""
        p = Path(self.path)
        if not p.exists():
            return "missing"
        found = digest(p)
        return None if found == self.sha256 else f"changed (expected sha256 {self.sha256[:12]}, found {found[:12]})"


def _hash_file(h: hashlib._Hash, path: Path) -> None:
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
    base = os.environ.get("SEGFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "segflow"
    )
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


# Temporaries are created like `open(path, "w")` and `mkdir(path)` create files: mode 0o666 / 0o777 less
# the process umask (and a shared directory's default ACL), so a team sharing a runs directory with
# umask 002 can read and replace each other's artifacts. tempfile.mkstemp/mkdtemp would force 0o600/0o700.
_TEMP_ATTEMPTS = 100


def _temp_name(dest: Path) -> Path:
    # `.<name>.<random>.tmp`: hidden, next to dest (same filesystem, so the rename is atomic), and what
    # sweep_temporaries removes after a crash.
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")


def _create_temp_file(dest: Path) -> Path:
    for _ in range(_TEMP_ATTEMPTS):
        tmp = _temp_name(dest)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {dest}")


def _create_temp_dir(dest: Path) -> Path:
    for _ in range(_TEMP_ATTEMPTS):
        tmp = _temp_name(dest)
        try:
            tmp.mkdir(0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {dest}")


@contextmanager
def _disk_full_as_error(dest: Path) -> Iterator[None]:
    """Re-raise an error that a full disk caused (whatever library raised it) as DiskFullError naming `dest`.
    Used inside the writers' try, so the check sees the partial temporary still taking space."""
    try:
        yield
    except BaseException as e:
        full = as_disk_full(e, dest) if isinstance(e, Exception) else None
        if full is None or full is e:
            raise
        raise full from e


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success fsync it and rename it over `dest`.

    On any exception the temporary file is removed, so a reader never sees a half-written artifact; a full
    disk raises DiskFullError (storage/disk.py) naming `dest`.
    """
    dest = Path(dest)
    tmp_path: Path | None = None
    try:
        with _disk_full_as_error(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp_path = _create_temp_file(dest)
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, dest)
            _fsync_dir(dest.parent)
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def atomic_write_text(dest: str | Path, text: str) -> FileRef:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return FileRef.of(dest)


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Like `atomic_path` for a directory (e.g. a model checkpoint): build it aside, rename when complete."""
    dest = Path(dest)
    tmp: Path | None = None
    try:
        with _disk_full_as_error(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _create_temp_dir(dest)
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
        if tmp is not None and tmp.exists():
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
