"""One dataset row's fields, checked: BadRow names the row and the reason a row cannot become a record.

Shared by the loader (tasks/datasets/loader.py) and the task modules' `reference` functions.
"""

from __future__ import annotations

SKIP_REASONS = ("bad_json", "not_object", "bad_utf8", "missing_field", "empty_field", "duplicate_id")
_SHOW = 80  # longest value quoted in a message: enough to find the row, short enough to read


class BadRow(ValueError):
    """A dataset row that cannot become a record; `reason` is one of SKIP_REASONS."""

    def __init__(self, where: str, reason: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.reason = reason


def show(value: object) -> str:
    """repr(value), cut to _SHOW characters for a message."""
    r = repr(value)
    return r if len(r) <= _SHOW else r[: _SHOW - 3] + "..."


def text_field(row: dict, name: str, where: str, *, blank_ok: bool = False) -> str:
    """Field `name` as text; a missing, null or (unless blank_ok) blank value is a bad row."""
    if name not in row:
        raise BadRow(where, "missing_field", f"no field {name!r} (fields: {show(sorted(row))})")
    value = row[name]
    if value is None and blank_ok:
        return ""
    if value is None:
        raise BadRow(where, "empty_field", f"field {name!r} is null")
    if not blank_ok and not str(value).strip():
        raise BadRow(where, "empty_field", f"field {name!r} is empty ({show(value)})")
    text = str(value)
    try:  # a JSON escape like "\ud800" decodes to a lone surrogate, which Parquet and tokenizers reject later
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRow(
            where, "bad_utf8", f"field {name!r} is not valid Unicode ({e.reason} at character {e.start}): {show(text)}"
        ) from None
    return text
