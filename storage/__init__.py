"""segflow storage: run layout, schemas, atomic Parquet I/O, DuckDB catalog and SQL."""
