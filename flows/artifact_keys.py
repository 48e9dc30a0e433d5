"""Keys of the Prefect artifacts the flows publish (rl_train, evaluate, compare): one rule, one place."""

from __future__ import annotations

import re


def artifact_key(*parts: str) -> str:
    """`parts` joined by dashes, lowercased, every run of other characters made one dash, at most 100 characters:
    Prefect artifact keys allow lowercase letters, digits and dashes only (specs/prefect.md §3)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]
