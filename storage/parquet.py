"""Schema-checked, atomic Parquet I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.faults import crash_point
from storage.handles import FileRef, atomic_path

# Rows per Parquet row group: one group for any file up to 1Mi rows (pyarrow's default, made explicit).
# DuckDB reads a file one row group per thread and combines per-thread partial sums in whatever order
# the threads finish, so an advantage computed over a many-row-group file can differ in its last bits
# from run to run. One row group keeps a resumed run's files identical to an uninterrupted run's
# (tests/test_flow_e2e.py, bench/chaos.py). The price: on 1M responses, 64Ki-row groups compute
# advantages 20-40% faster (BENCHMARKS.md, "Advantages: DuckDB vs pandas vs Python loop").
ROW_GROUP_ROWS = 1 << 20


class SchemaMismatch(ValueError):
    pass


class CorruptArtifact(ValueError):
    """A Parquet file that cannot be read (truncated, overwritten, not Parquet)."""


def _check(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise SchemaMismatch(f"{what}: missing columns {missing}, unexpected columns {extra}")
    table = table.select(schema.names)
    for field in schema:
        got = table.schema.field(field.name).type
        if got != field.type:
            try:
                table = table.set_column(
                    schema.get_field_index(field.name), field.name, table[field.name].cast(field.type, safe=True)
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaMismatch(f"{what}: column {field.name!r} is {got}, expected {field.type}: {e}") from e
    return table.cast(schema)


def to_table(rows: Sequence[Mapping[str, Any]] | pa.Table, schema: pa.Schema, what: str = "table") -> pa.Table:
    if isinstance(rows, pa.Table):
        return _check(rows, schema, what)
    if rows:
        keys = set(rows[0])
        if keys != set(schema.names):
            raise SchemaMismatch(
                f"{what}: missing columns {sorted(set(schema.names) - keys)}, "
                f"unexpected columns {sorted(keys - set(schema.names))}"
            )
    return pa.Table.from_pylist(list(rows), schema=schema)


def write_parquet(rows: Sequence[Mapping[str, Any]] | pa.Table, schema: pa.Schema, dest: str | Path) -> FileRef:
    """Validate against `schema`, write to a temporary file, fsync, rename. Returns the content handle."""
    table = to_table(rows, schema, what=str(dest))
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        crash_point("parquet_write")
    return FileRef.of(dest)


def read_parquet(ref: FileRef | str | Path, schema: pa.Schema | None = None) -> pa.Table:
    path = ref.path if isinstance(ref, FileRef) else ref
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptArtifact(
            f"{path}: not a readable Parquet file ({e}). Delete it and rerun the same command: "
            "the stage that wrote it runs again"
        ) from e
    return _check(table, schema, str(path)) if schema is not None else table
