"""Compare runs: load their summary.json, tabulate them, plot held-out accuracy.

    runs = [load_run(r, Path("runs")) for r in ("abc123", "runs/def456")]
    print(format_table(comparison_rows(runs)))
    plot_accuracy(runs, Path("plots"))  # accuracy vs iteration, generated tokens, compute seconds

Everything here reads the files a run leaves behind (summary.json, config.yaml); nothing needs Prefect
or a model. A run without summary.json (still going, crashed, interrupted) is read from its stored
metrics instead and marked partial (`partial_note`). Accuracies stay fractions in [0, 1] in the rows
and are shown in % only when formatted or plotted.
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
    """A run: its directory, summary.json (or the partial summary its metrics give) and resolved config text."""

    run_id: str
    root: Path
    preset: str
    estimator: str
    summary: dict[str, Any]
    config: str


def load_run(path_or_id: str, runs_dir: Path) -> RunInfo:
    """A run by its directory path or by its id under `runs_dir`: its summary.json, or for a run that has
    not finished (the flow writes summary.json last) the partial summary of its stored metrics."""
    candidates = _dedupe([Path(path_or_id), Path(runs_dir) / path_or_id])
    for root in candidates:
        if (root / "summary.json").is_file():
            return _read_run(root)
    for root in candidates:  # config.yaml is written before any work starts
        if (root / "config.yaml").is_file():
            return _read_partial_run(root)
    tried = " and ".join(str(root) for root in candidates)
    raise ValueError(f"run {path_or_id!r}: no run directory with summary.json or config.yaml (tried {tried})")


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


def _read_partial_run(root: Path) -> RunInfo:
    import yaml

    config = (root / "config.yaml").read_text()
    try:
        cfg = yaml.safe_load(config) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{root / 'config.yaml'} is not valid YAML: {e}") from e
    summary = partial_summary(root.name, cfg, stored_metrics(root))
    return RunInfo(
        run_id=root.name,
        root=root,
        preset=str(summary["preset"]),
        estimator=str(summary["estimator"]),
        summary=summary,
        config=config,
    )


def stored_metrics(root: Path) -> dict[tuple[int, str], dict[str, float]]:
    """{(iteration, stage): {metric: value}} from iterations/<k>/metrics-<stage>.parquet and
    eval/<k>/metrics-eval.parquet (storage/layout.py)."""
    from storage.metrics import read_metrics

    out = {}
    for pattern in ("iterations/*/metrics-*.parquet", "eval/*/metrics-*.parquet"):
        for f in sorted(root.glob(pattern)):
            if f.parent.name.isdigit():
                out[(int(f.parent.name), f.stem.removeprefix("metrics-"))] = read_metrics(f)
    return out


def generated_tokens(metrics: dict[str, float]) -> float:
    """Rollout + Monte Carlo tokens: the x axis of accuracy-vs-compute comparisons."""
    return metrics.get("generated_tokens", 0.0) + metrics.get("mc_generated_tokens", 0.0)


def partial_summary(run_id: str, cfg: dict[str, Any], metrics: dict[tuple[int, str], dict[str, float]]) -> dict:
    """The summary.json fields a run's stored metrics give before it finishes. `iterations_completed` counts
    iterations whose train stage wrote metrics (k); `partial` = {"iterations_completed": k,
    "iterations_planned": run.iterations of config.yaml, or None}."""
    run, adv = cfg.get("run") or {}, cfg.get("advantage") or {}
    evals = {it: m for (it, stage), m in metrics.items() if stage == "eval" and "eval_accuracy" in m}
    done = max((it for it, stage in metrics if stage == "train"), default=0)
    tokens: dict[int, float] = {}
    for (it, stage), m in metrics.items():
        if stage != "eval":
            tokens[it] = tokens.get(it, 0.0) + generated_tokens(m)
    acc = {str(it): evals[it]["eval_accuracy"] for it in sorted(evals)}
    return {
        "run_id": run_id,
        "preset": run.get("preset", ""),
        "estimator": adv.get("estimator", ""),
        "iterations_completed": done,
        "initial_eval_accuracy": evals[0]["eval_accuracy"] if 0 in evals else None,
        "final_eval_accuracy": evals[max(evals)]["eval_accuracy"] if evals else None,
        "eval_accuracy": acc,
        "eval_avg_at_k": {str(it): m["eval_avg_at_k"] for it, m in sorted(evals.items()) if "eval_avg_at_k" in m},
        "generated_tokens": sum(tokens.values()),
        "generated_tokens_at_eval": {str(e): sum(v for it, v in tokens.items() if it <= e) for e in sorted(evals)},
        "partial": {"iterations_completed": done, "iterations_planned": run.get("iterations")},
    }


def partial_note(run: RunInfo) -> str | None:
    """ "partial (k of N iterations)" for a run without summary.json, else None."""
    p = run.summary.get("partial")
    if p is None:
        return None
    planned = p.get("iterations_planned")
    return f"partial ({p['iterations_completed']} of {planned if planned is not None else '?'} iterations)"


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
        "status": partial_note(run) or "finished",
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
    ("status", "status", _plain),
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


def accuracy_se(p: float, n: int) -> float:
    """Standard error of a held-out accuracy p (fraction) measured on n problems: sqrt(p * (1 - p) / n),
    the binomial SE of a mean of n 0/1 scores (tasks/algos/eval_stats.py `mean_with_se` up to the n vs n - 1
    divisor, which the summary does not keep the scores to apply)."""
    return (p * (1.0 - p) / n) ** 0.5


def eval_problem_counts(run: RunInfo) -> dict[int, int]:
    """iteration -> number of held-out problems evaluated there: summary["eval_problems"] when present, else
    the `eval_problems` metric of <run>/eval/<k>/metrics-eval.parquet. Iterations with neither are absent."""
    from storage.layout import RunLayout
    from storage.metrics import read_metrics

    if run.summary.get("eval_problems"):
        return {it: int(n) for it, n in series(run.summary, "eval_problems")}
    layout = RunLayout(runs_dir=str(run.root.parent), run_id=run.root.name)
    out = {}
    for it, _ in series(run.summary, "eval_accuracy"):
        path = layout.eval_metrics(it)
        n = read_metrics(path).get("eval_problems") if path.is_file() else None
        if n:
            out[it] = int(n)
    return out


@dataclass
class AccuracyPoints:
    """One run's line on an accuracy plot: x, accuracy (%) and its standard error (%, None where the
    number of problems is unknown), one entry per evaluation."""

    xs: list[float]
    ys: list[float]
    errs: list[float | None]


def accuracy_points(run: RunInfo, x_key: str | None, scale: float = 1.0, from_rl_start: bool = False) -> AccuracyPoints:
    """x is the iteration, or summary[x_key] at that iteration / scale; with from_rl_start, minus its value at
    iteration 0, so the axis starts where RL starts (the warm start's and the first evaluation's seconds are
    left out). Error bars: 100 * accuracy_se(p, n) with n from eval_problem_counts."""
    acc = series(run.summary, "eval_accuracy")
    counts = eval_problem_counts(run)
    if x_key is None:
        xs = {it: float(it) for it, _ in acc}
    else:
        raw = dict(series(run.summary, x_key))
        base = raw.get(0, 0.0) if from_rl_start else 0.0
        xs = {it: (v - base) / scale for it, v in raw.items()}
    pts = [(xs[it], 100 * a, 100 * accuracy_se(a, counts[it]) if it in counts else None) for it, a in acc if it in xs]
    return AccuracyPoints([x for x, _, _ in pts], [y for _, y, _ in pts], [e for _, _, e in pts])


def _plot_one(
    runs: list[RunInfo],
    dest: Path,
    x_key: str | None,
    xlabel: str,
    title: str,
    scale: float = 1.0,
    from_rl_start: bool = False,
) -> Path:
    fig = new_figure()
    ax = fig.add_subplot()
    for run in runs:
        pts = accuracy_points(run, x_key, scale, from_rl_start)
        if any(e is not None for e in pts.errs):
            errs = [0.0 if e is None else e for e in pts.errs]
            ax.errorbar(pts.xs, pts.ys, yerr=errs, marker="o", capsize=3, label=label(run))
        else:
            ax.plot(pts.xs, pts.ys, marker="o", label=label(run))
    ax.set(xlabel=xlabel, ylabel="held-out accuracy, greedy (%), ± 1 SE", title=title)
    if x_key is None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, dest)


def plot_run_accuracy(run_id: str, eval_accuracy: dict[int, float], dest: Path) -> Path:
    """One run's held-out accuracy vs iteration so far (the flow's live plot artifact); `eval_accuracy`
    maps iteration -> fraction."""
    summary = {"eval_accuracy": {str(k): v for k, v in eval_accuracy.items()}}
    run = RunInfo(run_id=run_id, root=dest.parent, preset="", estimator="", summary=summary, config="")
    return _plot_one([run], dest, None, "RL iteration", "held-out accuracy vs iteration")


def plot_accuracy_vs_iteration(runs: list[RunInfo], dest: Path) -> Path:
    """Held-out accuracy vs RL iteration, ± 1 SE: `compare`'s first plot and the one `report` shows (for a
    single run the tokens and seconds axes redraw the same curve; the report tabulates them instead)."""
    return _plot_one(runs, dest, None, "RL iteration", "held-out accuracy vs iteration")


def runs_without_seconds(runs: list[RunInfo]) -> list[RunInfo]:
    """Runs whose summary predates compute_seconds_at_eval: they cannot go on a compute-seconds axis."""
    return [run for run in runs if not run.summary.get("compute_seconds_at_eval")]


# compute_seconds_at_eval sums each stage's own measured work (rl_train COMPUTE_METRICS), not wall time, so a
# run made on a loaded machine is not drawn as costlier for waiting; the axis starts at RL (iteration 0 = 0).
SECONDS_XLABEL = "compute seconds since RL start (measured stage work, not wall time; warm start excluded)"


def plot_accuracy(runs: list[RunInfo], out_dir: Path) -> dict[str, Path]:
    """Accuracy vs iteration, vs generated tokens (M) and vs compute seconds, one PNG each, with the
    evaluation's standard error as error bars (accuracy_points).

    Runs without compute_seconds_at_eval are left off the seconds plot and named in its title; the
    "seconds" entry is omitted when no run has it.
    """
    if not runs:
        raise ValueError("plot_accuracy: no runs to plot")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "iteration": plot_accuracy_vs_iteration(runs, out_dir / "accuracy_vs_iteration.png"),
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
            SECONDS_XLABEL,
            title,
            from_rl_start=True,
        )
    return paths


def comparison_dir(names: list[str], runs_dir: Path) -> Path:
    """<runs_dir>/compare/<folder> for one comparison, so another comparison does not overwrite its plots.
    The folder is the sorted names joined by '+' (the same set in any order shares it); a name that is a path
    contributes its last part, and then, or past 80 characters, the first 10 hex digits of the SHA-1 of the
    sorted names as given are appended, so runs with equal last parts in different directories stay apart."""
    import hashlib
    import re

    given = sorted(names)
    parts = sorted(re.sub(r"[^A-Za-z0-9._-]+", "-", Path(n).name) or "run" for n in given)
    folder = "+".join(parts)
    if folder != "+".join(given) or len(folder) > 80:
        digest = hashlib.sha1("\0".join(given).encode()).hexdigest()[:10]
        folder = f"{folder[:80]}-{digest}"
    return Path(runs_dir) / "compare" / folder


def png_data_uri(path: Path) -> str:
    """The PNG as a data URI, to embed in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
