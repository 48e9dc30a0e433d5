"""Progress of long stages and of the whole run, in one place for every stage.

Three modes, chosen by SEGFLOW_PROGRESS (bar | lines | off), else by whether stderr is a terminal:
- bar: a transient rich bar per stage, on stderr (one shared live display, so nested stages stack).
- lines: plain lines on stderr, no carriage returns, for logs (nohup, `> log`, SLURM, a Prefect worker):
  one when a stage starts, one every SEGFLOW_PROGRESS_EVERY seconds (default 30) or every tenth of the stage,
  whichever comes first, and one when it ends. A line reads
  `[progress] train iteration 3: step 40/100 (40%) loss 0.123 | 12.3 step/s | elapsed 0:03 | ETA 0:05`.
- off: nothing.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MODE_ENV = "SEGFLOW_PROGRESS"
EVERY_ENV = "SEGFLOW_PROGRESS_EVERY"
MODES = ("bar", "lines", "off")
DEFAULT_EVERY_SECONDS = 30.0
LINES_PER_STAGE = 10  # a line at least every 1/10 of a stage's steps, however fast they come


def mode() -> str:
    """SEGFLOW_PROGRESS when it names a mode, else `bar` on a terminal and `lines` otherwise."""
    chosen = os.environ.get(MODE_ENV, "").strip().lower()
    if chosen in MODES:
        return chosen
    return "bar" if sys.stderr.isatty() else "lines"


def every_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_SECONDS)))
    except ValueError:
        return DEFAULT_EVERY_SECONDS


def clock(seconds: float) -> str:
    """Seconds as `m:ss` or `h:mm:ss`; `?` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(done: float, total: float, elapsed: float) -> float:
    """Seconds left at the mean rate so far: elapsed * (total - done) / done; inf before the first step."""
    if done <= 0:
        return math.inf
    return elapsed * max(0.0, total - done) / done


def _metric_text(note: str, metrics: dict[str, float]) -> str:
    parts = [note] if note else []
    parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
    return " ".join(parts)


class _Bars:
    """One rich live display shared by every open stage bar (rich allows one live display at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress = None
        self.open = 0

    def add(self, description: str, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with self.lock:
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    transient=True,
                )
                self.progress.start()
            self.open += 1
            return self.progress, self.progress.add_task(description, total=total, note="")

    def remove(self, tid) -> None:
        with self.lock:
            self.progress.remove_task(tid)
            self.open -= 1
            if self.open == 0:
                self.progress.stop()
                self.progress = None


_BARS = _Bars()


class StageProgress:
    """Progress of one stage of `total` steps (`unit`: step, request, sample...). `advance(n, note, **metrics)`
    after each piece of work; `finish(**metrics)` once at the end. `write` and `now` are for tests."""

    def __init__(
        self,
        stage: str,
        total: float,
        *,
        unit: str = "step",
        mode_: str | None = None,
        write: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.monotonic,
        every: float | None = None,
    ) -> None:
        self.stage, self.total, self.unit = stage, float(total), unit
        self.mode = mode_ or mode()
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.now = now
        self.every = every_seconds() if every is None else every
        self.done = 0.0
        self.t0 = now()
        self.last_t, self.last_done = self.t0, 0.0
        self.note, self.metrics = "", {}
        self._bar = None
        self.finished = False
        if self.mode == "bar":
            self._bar = _BARS.add(stage, max(1, int(total)))
        elif self.mode == "lines":
            self.write(f"[progress] {stage}: started, {self._count(total)} {unit}s")

    def add_total(self, n: float) -> None:
        """More work than first counted (e.g. the second stage of adaptive Monte Carlo sampling)."""
        self.total += n
        if self._bar:
            self._bar[0].update(self._bar[1], total=max(1, int(self.total)))

    def advance(self, n: float = 1, note: str = "", **metrics: float) -> None:
        self.done += n
        self.note, self.metrics = note or self.note, {**self.metrics, **metrics}
        if self._bar:
            self._bar[0].update(self._bar[1], advance=n, note=_metric_text(self.note, self.metrics))
        elif self.mode == "lines" and self._due():
            self.write(self.line())
            self.last_t, self.last_done = self.now(), self.done

    def _due(self) -> bool:
        if self.total and self.done >= self.total:
            return False  # the done line follows at once
        step_gap = max(1.0, math.ceil(self.total / LINES_PER_STAGE))
        return self.done - self.last_done >= step_gap or self.now() - self.last_t >= self.every

    @staticmethod
    def _count(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:.1f}"

    def line(self, final: bool = False) -> str:
        """`[progress] stage: step k/N (p%) metrics | rate unit/s | elapsed | ETA` (or `done in` when final)."""
        elapsed = self.now() - self.t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        head = f"[progress] {self.stage}: {self.unit} {self._count(self.done)}/{self._count(self.total)} ({pct:.0f}%)"
        text = _metric_text(self.note, self.metrics)
        rate = f"{self.done / elapsed:.3g} {self.unit}/s" if elapsed > 0 else f"? {self.unit}/s"
        tail = (
            f"done in {clock(elapsed)}"
            if final
            else f"elapsed {clock(elapsed)} | ETA {clock(eta(self.done, self.total, elapsed))}"
        )
        return " | ".join(p for p in (f"{head} {text}".rstrip(), rate, tail) if p)

    def finish(self, **metrics: float) -> None:
        if self.finished:
            return
        self.finished = True
        self.metrics.update(metrics)
        if self._bar:
            _BARS.remove(self._bar[1])
            self._bar = None
        elif self.mode == "lines":
            self.write(self.line(final=True))


@contextmanager
def stage(name: str, total: float, unit: str = "step") -> Iterator[StageProgress]:
    """A StageProgress that is finished when the block ends (also when it raises: the bar must go)."""
    p = StageProgress(name, total, unit=unit)
    try:
        yield p
    finally:
        p.finish()


@contextmanager
def bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yields advance(n, note): the older interface of `stage`, kept for callers that need only that."""
    with stage(description, total) as p:
        yield p.advance


class RunProgress:
    """`iteration k of N` lines for the whole run, with an ETA from the iterations that did work (a cached
    iteration takes ~0 s and would make the ETA far too short)."""

    def __init__(self, total: int, *, write: Callable[[str], None] | None = None, now=time.monotonic) -> None:
        self.total, self.now = total, now
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.worked_seconds, self.worked = 0.0, 0
        self.t_start = now()
        self.t_it = self.t_start

    def start(self, it: int) -> None:
        self.t_it = self.now()
        if mode() == "off":
            return
        left = self.total - it + 1
        est = self.worked_seconds / self.worked * left if self.worked else math.inf
        self.write(
            f"[progress] iteration {it} of {self.total} | elapsed {clock(self.t_it - self.t_start)} | ETA {clock(est)}"
        )

    def finish(self, it: int, executed: bool) -> None:
        if executed:
            self.worked_seconds += self.now() - self.t_it
            self.worked += 1
