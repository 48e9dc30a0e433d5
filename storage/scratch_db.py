"""One in-memory DuckDB per process; every computation queries it through its own cursor.

Opening a DuckDB database costs ~30 ms on these machines and a cursor on an open one ~0.5 ms; the
advantage stage on a million responses takes ~0.3 s (bench/advantage_speed.py), so the open was a
tenth of it. A cursor is a separate connection to the same database: its temporary views and
registered Arrow tables are its own, so tasks running in threads never see each other's. The
database holds no tables of its own.
"""

from __future__ import annotations

import os
import threading

import duckdb

_LOCK = threading.Lock()
_DB: tuple[int, duckdb.DuckDBPyConnection] | None = None  # (owning pid, database)


def scratch_cursor() -> duckdb.DuckDBPyConnection:
    """A new connection to this process's scratch database. Use it as a context manager (closes it)."""
    global _DB
    with _LOCK:
        if _DB is None or _DB[0] != os.getpid():  # a forked child must not share its parent's instance
            _DB = (os.getpid(), duckdb.connect(":memory:"))
        return _DB[1].cursor()
