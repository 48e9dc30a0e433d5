"""Render the config reference (docs/config.md) from the pydantic models: `python -m configs.reference`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel

from configs.schema import Config

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def _type_name(ann) -> str:
    if get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        default = field.default
        if isinstance(default, BaseModel):
            nested.append((f"{prefix}{name}", type(default)))
            continue
        ann = _type_name(field.annotation)
        cells = [f"`{prefix}{name}`", f"`{ann}`", f"`{default!r}`", field.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for p, m in nested:
        rows += [f"| **{p}** | | | {(m.__doc__ or '').strip().splitlines()[0] if m.__doc__ else ''} |"]
        rows += _rows(m, p + ".")
    return rows


def render() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from `configs/schema.py` by `python -m configs.reference` (a test keeps it current).",
        "Set any key with `--set section.key=value`, a `--config` YAML file, or a preset in `configs/presets/`.",
        "",
    ]
    for name, field in Config.model_fields.items():
        section = type(field.default)
        doc = (section.__doc__ or "").strip()
        lines += [f"## `{name}`", ""] + ([doc, ""] if doc else [])
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += _rows(section, f"{name}.") + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    sys.stdout.write(f"wrote {DOC}\n")
