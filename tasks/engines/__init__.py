"""Rollout engines: the interface (base.py), one file per engine, the backend registry (registry.py) and the
process's one live engine (live.py). Importing this package starts nothing and imports no engine: a fully
cached rerun never pays for vLLM, transformers generate or Ray."""
