"""The pure core: numpy / torch / stdlib only. No prefect, duckdb, vllm or file I/O (a test checks it)."""
