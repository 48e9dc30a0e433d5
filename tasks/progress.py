"""Rich progress bars for long stages (SFT, training, grading)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def bar(description: str, total: int) -> Iterator[Callable[[int, str], None]]:
    """Yields advance(n, note): a one-line progress bar, written to stderr, gone when the stage ends."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    with progress:
        tid = progress.add_task(description, total=total, note="")

        def advance(n: int = 1, note: str = "") -> None:
            progress.update(tid, advance=n, note=note)

        yield advance
