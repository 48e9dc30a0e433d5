"""One run as a single self-contained HTML page; an unfinished one is marked partial at the top.

    write_report(load_run("abc123", Path("runs")), Path("abc123.html"))

The page has no external references and no scripts: CSS is inline and plots are PNG data URIs, so
it can be mailed, attached to a ticket or opened offline. Sections: summary, accuracy at each
evaluation, metrics over time (plots + table), sample greedy responses of the last evaluation, and
the resolved config. Every value that comes from the run's files is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import tempfile
from pathlib import Path
from typing import Any

from flows.run_plots import (
    RunInfo,
    comparison_rows,
    new_figure,
    partial_note,
    plot_accuracy,
    png_data_uri,
    save_png,
    series,
)
from storage.handles import atomic_path

# Per-iteration metrics plotted and tabulated, in this order, when the run has them.
REPORT_METRICS = (
    "reward_mean",
    "accuracy",
    "frac_zero_std_groups",
    "adv_std",
    "clipfrac",
    "approx_kl",
    "entropy",
    "grad_norm",
    "generation_seconds",
    "train_seconds",
)

# Pipeline order of the stages that write metrics files. When two stages of an iteration report the
# same metric name, the later one wins, as in the flow's own per-iteration table (rl_train).
STAGE_ORDER = ("rollout", "tree", "grade", "reference", "spo", "advantage", "replay", "train")

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
img { max-width: 100%; } .muted { color: #777; }
.ok { color: #176f2c; font-weight: bold; } .wrong { color: #a32020; font-weight: bold; }
.sample { margin-bottom: 1.2em; }
.partial { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.5em 0.8em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    """A compact number for tables; '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def read_iteration_metrics(root: Path) -> dict[int, dict[str, float]]:
    """{iteration: {metric: value}} for REPORT_METRICS, from the run's iterations/*/metrics-*.parquet."""
    if not any(root.glob("iterations/*/metrics-*.parquet")):
        return {}
    import duckdb

    con = duckdb.connect(":memory:")
    try:  # paths and names are bound as parameters, never formatted into the SQL
        rows = con.execute(
            "select iteration, stage, name, value from read_parquet(?, union_by_name=true) "
            "where list_contains(?, name)",
            [str(root / "iterations" / "*" / "metrics-*.parquet"), list(REPORT_METRICS)],
        ).fetchall()
    finally:
        con.close()
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    out: dict[int, dict[str, float]] = {}
    for it, _stage, name, value in sorted(rows, key=lambda r: (r[0], rank.get(r[1], len(rank)), r[1])):
        out.setdefault(int(it), {})[name] = value
    return out


def present_metrics(metrics: dict[int, dict[str, float]]) -> list[str]:
    found = {name for values in metrics.values() for name in values}
    return [m for m in REPORT_METRICS if m in found]


def plot_metrics_grid(metrics: dict[int, dict[str, float]], dest: Path) -> Path | None:
    """One small panel per metric against iteration; None when the run has none of them."""
    names = present_metrics(metrics)
    if not names:
        return None
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = new_figure((4.0 * ncols, 2.6 * nrows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        its = [it for it in sorted(metrics) if name in metrics[it]]
        ax.plot(its, [metrics[it][name] for it in its], marker="o", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "iteration 1.5" ticks
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, dest)


def last_eval_samples(root: Path, n: int) -> tuple[int | None, list[dict[str, Any]]]:
    """(iteration, rows) for `n` greedy responses of the last evaluation, or (None, []) without one."""
    evals = sorted((int(p.parent.name), p) for p in root.glob("eval/*/results.parquet") if p.parent.name.isdigit())
    if not evals or n <= 0:
        return None, []
    iteration, path = evals[-1]
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        rel = con.execute(
            "select prompt_id, status, score, completion_text from read_parquet(?) "
            "where decoding = 'greedy' order by prompt_id, sample_index",
            [str(path)],
        )
        cols = [d[0] for d in rel.description]
        rows = [dict(zip(cols, r)) for r in rel.fetchall()]
    finally:
        con.close()
    return iteration, pick_samples(rows, n)


def pick_samples(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to `n` rows, about half correct (status ok) and half not when both exist, so a reader sees
    what the policy gets right and how it fails; one kind fills in when the other runs short."""
    correct = [r for r in rows if r["status"] == "ok"]
    wrong = [r for r in rows if r["status"] != "ok"]
    k_correct = min(len(correct), max(n - len(wrong), (n + 1) // 2))
    return correct[:k_correct] + wrong[: n - k_correct]


def _table(headers: list[str], rows: list[list[str]], text_cols: int = 1) -> str:
    """An HTML table from already-escaped cells; the first `text_cols` columns are left-aligned."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f'<{tag} class="text">{v}</{tag}>' if i < text_cols else f"<{tag}>{v}</{tag}>" for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', headers)}</tr>{body}</table>"


def summary_section(run: RunInfo) -> str:
    row = comparison_rows([run])[0]
    s = run.summary
    best = pct(row["best_accuracy"])
    if row["best_iteration"] is not None:
        best += f" (iteration {row['best_iteration']})"
    tokens = s.get("generated_tokens")
    items = [
        ("iterations", num(row["iterations"])),
        ("initial held-out accuracy (greedy)", pct(row["initial_accuracy"])),
        ("final held-out accuracy (greedy)", pct(row["final_accuracy"])),
        ("best held-out accuracy (greedy)", best),
        ("final avg@k (sampled)", pct(row["final_avg_at_k"])),
        ("generated tokens", "-" if tokens is None else f"{tokens:,.0f} ({tokens / 1e6:.3f} M)"),
        ("wall seconds (last invocation)", num(row["wall_seconds"], 6)),
        ("compute seconds (measured, all stages)", num(row["compute_seconds"], 6)),
        ("code version", num(s.get("code_version"))),
    ]
    out = _table(["", "value"], [[esc(k), esc(v)] for k, v in items], text_cols=2)
    return out + stages_table(s)


def stages_table(s: dict[str, Any]) -> str:
    executed, cached = s.get("stages_executed") or {}, s.get("stages_cached") or {}
    compute, wall = s.get("compute_seconds") or {}, s.get("stage_seconds") or {}
    stages = list(dict.fromkeys([*executed, *cached, *wall, *compute]))
    if not stages:
        return ""
    rows = [
        [esc(st), esc(executed.get(st, 0)), esc(cached.get(st, 0)), esc(num(compute.get(st))), esc(num(wall.get(st)))]
        for st in stages
    ]
    return _table(["stage", "executed", "cached", "compute seconds", "seconds (last invocation)"], rows)


def health_section(s: dict[str, Any]) -> str:
    """The run's health-check findings (summary.json `health`, tasks/algos/health.py)."""
    health = s.get("health") or {}
    if not health:
        return '<p class="muted">No health-check findings.</p>'
    rows = [
        [esc(code), esc(", ".join(map(str, e["iterations"]))), esc(e["first_message"])] for code, e in health.items()
    ]
    return _table(["check", "iterations", "first message"], rows, text_cols=3)


def evals_table(s: dict[str, Any]) -> str:
    avg = dict(series(s, "eval_avg_at_k"))
    tokens = dict(series(s, "generated_tokens_at_eval"))
    seconds = dict(series(s, "compute_seconds_at_eval"))
    rows = [
        [
            esc(it),
            esc(pct(acc)),
            esc(pct(avg.get(it))),
            esc("-" if it not in tokens else f"{tokens[it] / 1e6:.3f}"),
            esc(num(seconds.get(it), 6)),
        ]
        for it, acc in series(s, "eval_accuracy")
    ]
    if not rows:
        return '<p class="muted">No evaluations recorded.</p>'
    return _table(
        ["iteration", "accuracy (greedy)", "avg@k (sampled)", "generated tokens (M)", "compute seconds"], rows
    )


def metrics_table(metrics: dict[int, dict[str, float]], s: dict[str, Any]) -> str:
    names = present_metrics(metrics)
    if not names:
        return '<p class="muted">No per-iteration metrics files found.</p>'
    acc = dict(series(s, "eval_accuracy"))
    rows = [[esc(it), *(esc(num(metrics[it].get(m))) for m in names), esc(pct(acc.get(it)))] for it in sorted(metrics)]
    return _table(["iteration", *(esc(m) for m in names), "held-out accuracy"], rows)


def img(path: Path | None, alt: str) -> str:
    return "" if path is None else f'<img src="{png_data_uri(path)}" alt="{esc(alt)}">'


def samples_section(iteration: int | None, rows: list[dict[str, Any]]) -> str:
    if iteration is None or not rows:
        return '<p class="muted">No greedy evaluation responses found.</p>'
    parts = [
        (
            f"<p>Greedy responses of the evaluation after iteration {esc(iteration)} "
            "(correct ones first, then wrong ones).</p>"
        )
    ]
    for r in rows:
        kind = "ok" if r["status"] == "ok" else "wrong"
        parts.append(
            f'<div class="sample"><b>{esc(r["prompt_id"])}</b> &middot; status '
            f'<span class="{kind}">{esc(r["status"])}</span> &middot; score {esc(num(r["score"]))}'
            f"<pre>{esc(r['completion_text'] or '')}</pre></div>"
        )
    return "".join(parts)


def partial_banner(run: RunInfo) -> str:
    note = partial_note(run)
    if note is None:
        return ""
    return (
        f'<p class="partial"><b>{esc(note)}</b>: the run has not finished (still running, crashed or '
        "interrupted; rerun its command to resume). Figures come from its stored metrics.</p>"
    )


def render(
    run: RunInfo,
    plots: dict[str, Path],
    grid: Path | None,
    metrics: dict[int, dict[str, float]],
    sample_iteration: int | None,
    sample_rows: list[dict[str, Any]],
) -> str:
    title = f"segflow run {run.run_id}"
    accuracy_imgs = "".join(img(p, f"held-out accuracy vs {k}") for k, p in plots.items())
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            (
                f"<p>preset <b>{esc(run.preset or '-')}</b> &middot; estimator <b>{esc(run.estimator or '-')}</b> "
                f'&middot; <span class="muted">{esc(run.root)}</span></p>'
            ),
            partial_banner(run),
            "<h2>Summary</h2>",
            summary_section(run),
            "<h2>Health checks</h2>",
            health_section(run.summary),
            "<h2>Held-out accuracy</h2>",
            evals_table(run.summary),
            accuracy_imgs,
            "<h2>Metrics over time</h2>",
            img(grid, "per-iteration metrics"),
            metrics_table(metrics, run.summary),
            "<h2>Sample responses</h2>",
            samples_section(sample_iteration, sample_rows),
            "<h2>Resolved config</h2>",
            f"<pre>{esc(run.config)}</pre>" if run.config else '<p class="muted">config.yaml not found.</p>',
            "</body></html>",
        ]
    )


def write_report(run: RunInfo, out: Path, samples: int = 5) -> Path:
    """Write the report to `out` (an HTML file path, or an existing directory to get <run_id>.html in it)."""
    out = Path(out)
    if out.is_dir():
        out = out / f"{run.run_id}.html"
    metrics = read_iteration_metrics(run.root)
    sample_iteration, sample_rows = last_eval_samples(run.root, samples)
    # The PNGs only live long enough to be inlined: the page must not depend on files beside it.
    with tempfile.TemporaryDirectory(prefix="segflow-report-") as tmp:
        plots = plot_accuracy([run], Path(tmp))
        grid = plot_metrics_grid(metrics, Path(tmp) / "metrics.png")
        page = render(run, plots, grid, metrics, sample_iteration, sample_rows)
    with atomic_path(out) as tmp_path:
        tmp_path.write_text(page, encoding="utf-8")
    return out
