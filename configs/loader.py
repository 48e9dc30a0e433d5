"""Resolve a Config from a preset, an optional YAML file and `--set section.key=value` overrides.

Order (later wins): pydantic defaults < preset < --config file < --set. The run id is a hash of the
resolved config, so the same command always lands in (and resumes) the same run directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import Config, without_execution_keys

PRESETS_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A config problem, worded for the person who typed it."""


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_summary(name: str, width: int = 72) -> str:
    """A preset's one-line description: its first comment line, up to the first ':' (or '). ') outside
    parentheses ("# GRPO (Shao et al. 2024) on ...: group mean/std" -> "GRPO (Shao et al. 2024) on ..."), cut to
    `width` characters at a word with '...'; '' when the file starts with no comment."""
    first = (PRESETS_DIR / f"{name}.yaml").read_text().split("\n", 1)[0]
    if not first.startswith("#"):
        return ""
    text, depth = first.lstrip("# ").rstrip(), 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth == 0 and (c == ":" or text[i - 1 : i + 2] == "). "):  # a clause or a sentence ends
            text = text[: i + (c == ".")]
            break
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0].rstrip(",;") + "..."
    return text


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in delta.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_value(raw: str) -> Any:
    """YAML scalar/list parsing, plus `1e-5` as a float (YAML 1.1 reads it as a string)."""
    try:
        value: Any = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_override(item: str) -> dict[str, Any]:
    """`train.lr=1e-5` -> {"train": {"lr": 1e-5}}; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    parts = key.strip().split(".")
    value = parse_value(raw)
    for part in reversed(parts):
        value = {part: value}
    return value


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            lines.append(_unknown_key(tuple(str(p) for p in e["loc"])))
        else:
            shown = e.get("input")
            lines.append(f"{where}={shown!r}: {e['msg']}" if not isinstance(shown, dict) else f"{where}: {e['msg']}")
    return "; ".join(lines)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice nearest a misspelt `name` (difflib ratio >= 0.6), or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(loc: tuple[str, ...]) -> str:
    """`unknown key 'run.iteratons'; did you mean 'run.iterations'? (run keys: ...)`: the closest key of the
    section the bad key sits in (Config's sections for a top-level one), then all of that section's keys."""
    model: Any = Config
    for part in loc[:-1]:  # walk down to the model that holds the unknown key
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field is not None else None
    keys = sorted(getattr(model, "model_fields", {}))
    msg = f"unknown key '{'.'.join(loc)}'"
    if not keys:
        return msg
    if (near := closest(loc[-1], keys)) is not None:
        msg += f"; did you mean '{'.'.join((*loc[:-1], near))}'?"
    section = ".".join(loc[:-1])
    return f"{msg} ({section + ' keys' if section else 'sections'}: {', '.join(keys)})"


def resolve(preset: str = "default", config_file: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    preset_path = PRESETS_DIR / f"{preset}.yaml"
    if not preset_path.exists():
        near = closest(preset, available_presets())
        hint = f"did you mean {near!r}? " if near else ""
        raise ConfigError(f"unknown preset {preset!r}; {hint}available: {', '.join(available_presets())}")
    data = _merge({"run": {"preset": preset}}, _read_yaml(preset_path))
    if config_file is not None:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"--config {path}: no such file")
        data = _merge(data, _read_yaml(path))
    return _validated(data, overrides)


def _validated(data: dict[str, Any], overrides: Iterable[str]) -> Config:
    for item in overrides:
        data = _merge(data, parse_override(item))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def load_run_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """A run's saved config.yaml (storage/layout.RunLayout.config), then `--set` overrides, validated as
    resolve() validates. The saved file is checked alone first, so a bad override is never blamed on it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file (a run directory holds its resolved config.yaml)")
    data = _read_yaml(path)
    try:
        _validated(data, ())
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return _validated(data, overrides)


def config_digest(cfg: Config) -> str:
    """sha256 of the resolved config without its execution keys (configs/schema.EXECUTION_KEYS)."""
    blob = json.dumps(without_execution_keys(cfg).model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def run_id(cfg: Config) -> str:
    return f"{cfg.run.preset}-{config_digest(cfg)[:10]}"


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
