"""Compare finished runs: load their summary.json, tabulate them, plot held-out accuracy.

    runs = [load_run(r, Path("runs")) for r in ("abc123", "runs/def456")]
    print(format_table(comparison_rows(runs)))
    plot_accuracy(runs, Path("plots"))  # accuracy vs iteration, generated tokens, compute seconds

Everything here reads the files a finished run leaves behind (summary.json, config.yaml); nothing
needs Prefect or a model. Accuracies stay fractions in [0, 1] in the rows and are shown in % only
when formatted or plotted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.handles import atomic_path

PLOT_DPI = 110


@dataclass
class RunInfo:
    """A finished run: its directory, summary.json and resolved config text."""

    run_id: str
    root: Path
    preset: str
    estimator: str
    summary: dict[str, Any]
    config: str


def load_run(path_or_id: str, runs_dir: Path) -> RunInfo:
    """A run by its directory path or by its id under `runs_dir`; it must have finished (summary.json)."""
    candidates = _dedupe([Path(path_or_id), Path(runs_dir) / path_or_id])
    for root in candidates:
        if (root / "summary.json").is_file():
            return _read_run(root)
    tried = " and ".join(str(root) for root in candidates)
    # The flow writes summary.json last, so a directory without it is a run still going (or that stopped).
    unfinished = [root for root in candidates if root.is_dir()]
    if unfinished:
        raise ValueError(
            f"run {path_or_id!r}: {unfinished[0]} has no summary.json yet, so it has not finished (tried {tried})"
        )
    raise ValueError(f"run {path_or_id!r}: no run directory with summary.json (tried {tried})")


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _read_run(root: Path) -> RunInfo:
    try:
        summary = json.loads((root / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{root / 'summary.json'} is not valid JSON: {e}") from e
    config_path = root / "config.yaml"
    return RunInfo(
        run_id=str(summary.get("run_id", root.name)),
        root=root,
        preset=str(summary.get("preset", "")),
        estimator=str(summary.get("estimator", "")),
        summary=summary,
        config=config_path.read_text() if config_path.is_file() else "",
    )


def series(summary: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """A summary mapping {"<iteration>": value} as (iteration, value) pairs in iteration order."""
    # JSON object keys are strings, so "10" would sort before "2" without the int().
    return sorted((int(k), float(v)) for k, v in (summary.get(key) or {}).items())


def comparison_rows(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """One row per run: identity, accuracies (fractions), cost. Missing values are None."""
    return [_row(run) for run in runs]


def _row(run: RunInfo) -> dict[str, Any]:
    s = run.summary
    acc = series(s, "eval_accuracy")
    # Earliest iteration wins a tie: the same accuracy reached with less training.
    best_it, best = max(acc, key=lambda p: (p[1], -p[0])) if acc else (None, None)
    avg = series(s, "eval_avg_at_k")
    compute = s.get("compute_seconds")
    return {
        "run_id": run.run_id,
        "preset": run.preset,
        "estimator": run.estimator,
        "iterations": s.get("iterations_completed"),
        "initial_accuracy": s.get("initial_eval_accuracy"),
        "final_accuracy": s.get("final_eval_accuracy"),
        "best_accuracy": best,
        "best_iteration": best_it,
        "final_avg_at_k": avg[-1][1] if avg else None,
        "generated_tokens_m": s["generated_tokens"] / 1e6 if s.get("generated_tokens") is not None else None,
        "compute_seconds": sum(compute.values()) if compute is not None else None,
        "wall_seconds": s.get("wall_seconds"),
    }


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v:.{digits}f}"


def _plain(v: Any) -> str:
    return "-" if v is None else str(v)


# (row key, header, formatter): the column order of both tables.
COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("run_id", "run", _plain),
    ("preset", "preset", _plain),
    ("estimator", "estimator", _plain),
    ("iterations", "iters", _plain),
    ("initial_accuracy", "initial acc", _pct),
    ("final_accuracy", "final acc", _pct),
    ("best_accuracy", "best acc", _pct),
    ("best_iteration", "best at", _plain),
    ("final_avg_at_k", "final avg@k", _pct),
    ("generated_tokens_m", "gen tokens (M)", _fixed(3)),
    ("compute_seconds", "compute s", _fixed(1)),
    ("wall_seconds", "wall s", _fixed(1)),
]
_NUMERIC = {key for key, _, fmt in COLUMNS if fmt is not _plain} | {"iterations", "best_iteration"}


def _cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[fmt(row.get(key)) for key, _, fmt in COLUMNS] for row in rows]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain text for the terminal: text columns left-aligned, numbers right-aligned."""
    headers = [header for _, header, _ in COLUMNS]
    body = _cells(rows)
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if key in _NUMERIC else c.ljust(w) for c, w, (key, _, _) in zip(cells, widths, COLUMNS)
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, body)])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table with the same columns as format_table."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---:" if key in _NUMERIC else "---" for key, _, _ in COLUMNS]
    return "\n".join(
        [line([header for _, header, _ in COLUMNS]), "|" + "|".join(align) + "|", *map(line, _cells(rows))]
    )


def label(run: RunInfo) -> str:
    return f"{run.run_id} ({run.preset})" if run.preset else run.run_id


def new_figure(figsize: tuple[float, float] = (6.4, 4.0)):
    """A figure on the Agg canvas without pyplot, so no global backend is switched (notebooks, GUIs)
    and no figure is left registered in pyplot's state to leak memory across many plots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, dest: Path) -> Path:
    """Write atomically: a temporary file next to `dest`, then os.replace (storage.handles.atomic_path)."""
    with atomic_path(dest) as tmp:
        # The temporary name ends in .tmp, so the format cannot be inferred from it.
        fig.savefig(tmp, format="png", dpi=PLOT_DPI)
    return dest


def _accuracy_points(run: RunInfo, x_key: str | None, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """(x, accuracy %) at each evaluation; x is the iteration, or summary[x_key] at that iteration."""
    acc = series(run.summary, "eval_accuracy")
    if x_key is None:
        return [float(it) for it, _ in acc], [100 * a for _, a in acc]
    xs = dict(series(run.summary, x_key))
    pts = [(xs[it] / scale, 100 * a) for it, a in acc if it in xs]
    return [x for x, _ in pts], [y for _, y in pts]


def _plot_one(runs: list[RunInfo], dest: Path, x_key: str | None, xlabel: str, title: str, scale: float = 1.0) -> Path:
    fig = new_figure()
    ax = fig.add_subplot()
    for run in runs:
        xs, ys = _accuracy_points(run, x_key, scale)
        ax.plot(xs, ys, marker="o", label=label(run))
    ax.set(xlabel=xlabel, ylabel="held-out accuracy, greedy (%)", title=title)
    if x_key is None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, dest)


def runs_without_seconds(runs: list[RunInfo]) -> list[RunInfo]:
    """Runs whose summary predates compute_seconds_at_eval: they cannot go on a compute-seconds axis."""
    return [run for run in runs if not run.summary.get("compute_seconds_at_eval")]


def plot_accuracy(runs: list[RunInfo], out_dir: Path) -> dict[str, Path]:
    """Accuracy vs iteration, vs generated tokens (M) and vs compute seconds, one PNG each.

    Runs without compute_seconds_at_eval are left off the seconds plot and named in its title; the
    "seconds" entry is omitted when no run has it.
    """
    if not runs:
        raise ValueError("plot_accuracy: no runs to plot")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "iteration": _plot_one(
            runs, out_dir / "accuracy_vs_iteration.png", None, "RL iteration", "held-out accuracy vs iteration"
        ),
        "tokens": _plot_one(
            runs,
            out_dir / "accuracy_vs_tokens.png",
            "generated_tokens_at_eval",
            "generated tokens, rollouts + Monte Carlo (millions)",
            "held-out accuracy vs generated tokens",
            scale=1e6,
        ),
    }
    missing = runs_without_seconds(runs)
    timed = [run for run in runs if run.summary.get("compute_seconds_at_eval")]
    if timed:
        title = "held-out accuracy vs compute seconds"
        if missing:
            title += "\n(no compute_seconds_at_eval, not shown: " + ", ".join(r.run_id for r in missing) + ")"
        paths["seconds"] = _plot_one(
            timed,
            out_dir / "accuracy_vs_seconds.png",
            "compute_seconds_at_eval",
            "measured compute seconds (sum over stages)",
            title,
        )
    return paths


def png_data_uri(path: Path) -> str:
    """The PNG as a data URI, to embed in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
