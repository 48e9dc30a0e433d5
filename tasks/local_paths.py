"""Config values that name local paths: which values are meant as paths (not hub ids), what a missing one
says, and the model directory check every loader makes before transformers sees the directory.

Shared by the loaders (tasks/models.py, tasks/tokens.py, tasks/datasets/loader.py) and the CLI's
pre-flight checks (flows/preflight.py), so that a message reads the same wherever it is raised.
"""

from __future__ import annotations

from pathlib import Path

_PATH_PREFIXES = ("/", "./", "../", "~")


def looks_like_path(value: str) -> bool:
    """A value meant as a local path rather than a hub id: `../shared/data/gsm8k`, `~/m`, `/d`, `d/train.jsonl`."""
    return value.startswith(_PATH_PREFIXES) or value in (".", "..") or value.endswith(".jsonl")


def missing_path(key: str, value: str) -> str:
    """The message for a config value naming a path that does not exist; says where relative paths resolve."""
    return (
        f"{key}={value!r}: no such file or directory ({Path(value).expanduser().absolute()}); relative "
        f"paths resolve from the current directory, {Path.cwd()}"
    )


def check_model_dir(name_or_path: str, key: str = "model.name_or_path") -> Path | None:
    """The local directory `name_or_path` names, or None for a hub id (or 'tiny'). A directory must hold a
    config.json: checked before any tokenizer loads, since transformers' message for an empty directory
    ("need sentencepiece or tiktoken") names neither the directory nor what is missing. `key` is what the
    message calls the value (the config key, or a CLI flag such as --checkpoint)."""
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        return None
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{key}={name_or_path!r}: directory has no config.json")
    return p
