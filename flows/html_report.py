"""One run as a single self-contained HTML page; an unfinished one is marked partial at the top.

    write_report(load_run("abc123", Path("runs")), Path("abc123.html"))

The page has no external references and no scripts: CSS is inline and plots are PNG data URIs, so
it can be mailed, attached to a ticket or opened offline. Sections: the config's differences from its
preset (full config folded below), summary, health checks, held-out accuracy, metrics over time (one
plot per metric, the loss among them, and a table), SPO-chain or SPO-tree panels with a segments or tree
view of the last iteration (SPO runs only), and greedy responses of the last evaluation next to their
question and reference answer. Every value that comes from the run's files is HTML-escaped.

A run directory may lack any file (older runs, unfinished ones): the section that needs it says so and
the rest of the page is drawn.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.run_plots import (
    RunInfo,
    comparison_rows,
    new_figure,
    partial_note,
    plot_accuracy_vs_iteration,
    png_data_uri,
    save_png,
    series,
    stored_metrics,
)
from storage.handles import atomic_path
from storage.layout import RunLayout
from storage.metric_names import qualified
from tasks.algos.registry import REGISTRY, Family

# Per-iteration metrics plotted (one panel each) and tabulated, in this order, when the run has them. The
# loss is the train stage's (tasks/trainer.py stats["loss"]).
TRAINING_METRICS = (
    "reward_mean",
    "accuracy",
    "frac_zero_std_groups",
    "frac_truncated",
    "adv_std",
    "loss",
    "clipfrac",
    "approx_kl",
    "kl_ref",
    "entropy",
    "grad_norm",
    "logprob_gap_mean",
    "generation_seconds",
    "weight_load_seconds",
    "train_seconds",
)
# SPO-chain's spo_values stage (tasks/spo_values.py): segments, Monte Carlo cost, prefix deduplication.
SPO_CHAIN_METRICS = (
    "segments_per_response",
    "cutpoints_per_response",
    "mc_generated_tokens",
    "mc_tokens_per_trained_token",
    "mc_dedup_savings",
    "mc_seconds",
)
# SPO-tree: tree size (tasks/tree_rollouts.py), kept edges (tasks/advantage.py), replay (tasks/replay.py).
SPO_TREE_METRICS = ("nodes_per_tree", "kept_edges", "edges_trained", "buffer_size")
# Each SPO family's report section: title, anchor, its metric panels, what its view draws.
SPO_SECTIONS = {
    Family.SEGMENT: ("SPO-chain", "spo_chain", SPO_CHAIN_METRICS, "Segments"),
    Family.TREE: ("SPO-tree", "spo_tree", SPO_TREE_METRICS, "Trees"),
}
REPORT_METRICS = TRAINING_METRICS + SPO_CHAIN_METRICS + SPO_TREE_METRICS

# Pipeline order of the stages that write metrics files. When two stages of an iteration report the
# same metric name, the later one wins, as in the flow's own per-iteration table (rl_train).
STAGE_ORDER = ("rollout", "tree", "grade", "reference", "spo", "advantage", "replay", "train")
SETUP_STAGES = ("prepare", "warm_start", "eval")  # not per-iteration training metrics

SEGMENT_RESPONSES = 4  # SPO-chain responses drawn in the segments view
TREE_QUESTIONS = 2  # SPO-tree questions drawn in the tree view

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; white-space: pre-wrap;
  margin: 0.3em 0; }
img { max-width: 100%; } .muted { color: #777; }
.ok { color: #176f2c; font-weight: bold; } .wrong { color: #a32020; font-weight: bold; }
.partial { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.5em 0.8em; }
details summary { cursor: pointer; color: #555; margin: 0.5em 0; }
/* The metrics table: headers wrap at '_' and '/', the iteration column stays put while the rest scrolls. */
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid #eee; }
.scroll table { margin: 0; }
.scroll th { vertical-align: bottom; min-width: 3.5em; max-width: 7.5em; font-weight: 600; font-size: 0.85em; }
.scroll td { white-space: nowrap; }
.scroll th:first-child, .scroll td:first-child { position: sticky; left: 0; z-index: 1; background: #f3f3f3; }
.sample { margin-bottom: 1.4em; border-top: 1px solid #eee; padding-top: 0.5em; }
.qa { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1.3fr); gap: 0.8em; }
.label { font-size: 0.8em; color: #666; text-transform: uppercase; letter-spacing: 0.04em; }
.view { margin-bottom: 1.2em; }
.segtext { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; background: #f7f7f7;
  border: 1px solid #ddd; padding: 0.6em; }
.segtext mark { background: #ffe08a; outline: 1px solid #d9a400; }
.segtext .sep { color: #36c; font-weight: bold; }
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
    """{iteration: {metric: value}} of the run's training stages (iterations/*/metrics-<stage>.parquet, the
    setup stages and evaluations left out), stages merged in STAGE_ORDER; iterations without any are absent."""
    rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    out: dict[int, dict[str, float]] = {}
    found = [(it, stage, m) for (it, stage), m in stored_metrics(root).items() if stage not in SETUP_STAGES]
    for it, _stage, m in sorted(found, key=lambda r: (r[0], rank.get(r[1], len(rank)), r[1])):
        out.setdefault(it, {}).update(m)
    return out


def present_metrics(metrics: dict[int, dict[str, float]], names: tuple[str, ...] = REPORT_METRICS) -> list[str]:
    """`names` the run has, in that order, less `accuracy` where it repeats `reward_mean` (duplicate_metrics)."""
    found = {name for values in metrics.values() for name in values}
    dropped = duplicate_metrics(metrics)
    return [m for m in names if m in found and m not in dropped]


def duplicate_metrics(metrics: dict[int, dict[str, float]]) -> set[str]:
    """{"accuracy"} when the train accuracy equals reward_mean at every iteration (0/1 rewards: the share of
    correct answers is the mean reward), so one panel and one column show both (metric_title names them)."""
    pairs = [(m.get("reward_mean"), m.get("accuracy")) for m in metrics.values()]
    if pairs and all(r is not None and r == a for r, a in pairs):
        return {"accuracy"}
    return set()


def metric_title(name: str, metrics: dict[int, dict[str, float]]) -> str:
    """A plot or column title: the namespaced name (storage/metric_names.py), `reward/mean (= reward/accuracy)`
    when accuracy was dropped as its duplicate."""
    if name == "reward_mean" and duplicate_metrics(metrics):
        return f"{qualified('reward_mean')} (= {qualified('accuracy')})"
    return qualified(name)


def plot_metrics_grid(metrics: dict[int, dict[str, float]], names: list[str], dest: Path) -> Path | None:
    """One small panel per metric in `names` against iteration; None when `names` is empty."""
    if not names:
        return None
    from matplotlib.ticker import MaxNLocator

    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = new_figure((3.3 * ncols, 2.5 * nrows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        its = [it for it in sorted(metrics) if name in metrics[it]]
        ax.plot(its, [metrics[it][name] for it in its], marker="o", markersize=3)
        ax.set_title(metric_title(name, metrics), fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "iteration 1.5" ticks
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, dest)


def spo_family(estimator: str, metrics: dict[int, dict[str, float]]) -> Family | None:
    """The run's SPO family (tasks/algos/registry.py), or None for the GRPO family. An estimator the registry
    does not know (a run of older code) is judged by the metrics its stages wrote."""
    spec = REGISTRY.get(estimator)
    if spec is not None:
        return None if spec.family is Family.RESPONSE else spec.family
    found = {name for values in metrics.values() for name in values}
    if found & set(SPO_CHAIN_METRICS[:-1]):  # mc_seconds alone is not enough: name the SPO-only metrics
        return Family.SEGMENT
    if found & set(SPO_TREE_METRICS):
        return Family.TREE
    return None


# --- config: differences from the preset ------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"section.key": value}; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


ABSENT = object()  # a key one side of a diff lacks


def config_diff(config_text: str) -> tuple[str, list[tuple[str, Any, Any]]]:
    """(preset, [(key, preset value, run value)]) for the keys where the run's config.yaml differs from its
    preset (configs/presets/<preset>.yaml over the schema defaults, configs.loader.resolve), in the run's key
    order; ABSENT marks a key one side lacks. The run's file is validated first (filling keys added since
    it was written with their defaults); a file the current schema rejects is compared as written.
    Raises ValueError for text that is not a YAML mapping or names no known preset."""
    import yaml
    from pydantic import ValidationError

    from configs.loader import ConfigError, resolve
    from configs.schema import Config

    try:
        data = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config.yaml is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config.yaml is not a mapping of sections (got {type(data).__name__})")
    run_section = data.get("run") if isinstance(data.get("run"), dict) else {}
    preset = str(run_section.get("preset") or "default")
    try:
        base = resolve(preset).model_dump(mode="json")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    try:
        run = Config.model_validate(data).model_dump(mode="json")
    except ValidationError:
        run = data
    ran, pre = flatten(run), flatten(base)
    keys = list(dict.fromkeys([*ran, *pre]))
    rows = [(k, pre.get(k, ABSENT), ran.get(k, ABSENT)) for k in keys if pre.get(k, ABSENT) != ran.get(k, ABSENT)]
    return preset, rows


def config_value(v: Any) -> str:
    """A config value as YAML/JSON spells it (strings quoted, so '' and '\\n' show), '(absent)' for ABSENT."""
    return "(absent)" if v is ABSENT else json.dumps(v, ensure_ascii=False)


def config_section(run: RunInfo) -> str:
    if not run.config:
        return '<p class="muted">config.yaml not found.</p>'
    full = f"<details><summary>Full resolved config</summary><pre>{esc(run.config)}</pre></details>"
    try:
        preset, rows = config_diff(run.config)
    except ValueError as e:
        return f'<p class="muted">No comparison with the preset: {esc(e)}</p>' + full
    if not rows:
        return f"<p>Same as preset <b>{esc(preset)}</b> (configs/presets/{esc(preset)}.yaml).</p>" + full
    body = [[esc(k), esc(config_value(p)), esc(config_value(r))] for k, p, r in rows]
    intro = (
        f"<p>{len(rows)} key{'s' * (len(rows) != 1)} differ from preset <b>{esc(preset)}</b> "
        f"(configs/presets/{esc(preset)}.yaml over the schema defaults):</p>"
    )
    return intro + _table(["key", f"preset {esc(preset)}", "this run"], body, text_cols=3) + full


# --- samples: greedy answers with their question and reference ----------------------------------------------


def last_eval_samples(root: Path, n: int) -> tuple[int | None, list[dict[str, Any]]]:
    """(iteration, rows) for `n` greedy responses of the last evaluation, each with `question` and `reference`
    from the prompts file of its split (None where that file or row is missing), or (None, []) without one."""
    evals = sorted((int(p.parent.name), p) for p in root.glob("eval/*/results.parquet") if p.parent.name.isdigit())
    if not evals or n <= 0:
        return None, []
    from storage.parquet import read_parquet

    iteration, path = evals[-1]
    # No schema check: files from before a column was added still draw (missing ones read as None).
    rows = [r for r in read_parquet(path).to_pylist() if r.get("decoding") == "greedy"]
    rows.sort(key=lambda r: (r["prompt_id"], r.get("sample_index", 0)))
    chosen = pick_samples(rows, n)
    layout = RunLayout(runs_dir=str(root.parent), run_id=root.name)
    prompts: dict[str, dict[str, dict]] = {}
    for r in chosen:
        split = r.get("split") or "test"
        if split not in prompts:
            prompts[split] = read_prompts(layout.prompts(split))
        p = prompts[split].get(r["prompt_id"], {})
        r["question"], r["reference"] = p.get("question"), p.get("reference")
    return iteration, chosen


def read_prompts(path: Path) -> dict[str, dict]:
    """prompt_id -> its row of a prompts file (storage/schemas.PROMPTS); {} when the file is missing."""
    if not Path(path).is_file():
        return {}
    from storage.parquet import read_parquet

    return {r["prompt_id"]: r for r in read_parquet(path).to_pylist()}


def pick_samples(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to `n` rows, about half correct (status ok) and half not when both exist, so a reader sees
    what the policy gets right and how it fails; one kind fills in when the other runs short."""
    correct = [r for r in rows if r["status"] == "ok"]
    wrong = [r for r in rows if r["status"] != "ok"]
    k_correct = min(len(correct), max(n - len(wrong), (n + 1) // 2))
    return correct[:k_correct] + wrong[: n - k_correct]


def samples_section(iteration: int | None, rows: list[dict[str, Any]]) -> str:
    if iteration is None or not rows:
        return '<p class="muted">No greedy evaluation responses found.</p>'
    parts = [
        (
            f"<p>Greedy responses of the evaluation after iteration {esc(iteration)} "
            "(correct ones first, then wrong ones), each beside its question and reference answer.</p>"
        )
    ]
    for r in rows:
        kind = "ok" if r["status"] == "ok" else "wrong"
        extracted = r.get("extracted")
        read = "" if extracted is None else f" &middot; answer read <code>{esc(extracted or '(none)')}</code>"
        parts.append(
            f'<div class="sample"><b>{esc(r["prompt_id"])}</b> &middot; verdict '
            f'<span class="{kind}">{esc(r["status"])}</span> &middot; score {esc(num(r["score"]))}{read}'
            + beside(
                question_block(r.get("question"), r.get("reference")),
                f'<div class="label">response</div><pre>{esc(r["completion_text"] or "")}</pre>',
            )
            + "</div>"
        )
    return "".join(parts)


# --- SPO views: segments (chain) and trees ------------------------------------------------------------------


def run_decoder(root: Path) -> Callable[[list[int]], str] | None:
    """Token ids -> text with the run's tokenizer (flows/cli_views.py, as `segflow segments` and `segflow tree`
    decode); None when the run directory holds no tokenizer."""
    from flows.cli_views import _decoder

    return _decoder(root)


def last_iteration_with(root: Path, name: str) -> int | None:
    its = [int(p.parent.name) for p in root.glob(f"iterations/*/{name}") if p.parent.name.isdigit()]
    return max(its, default=None)


def train_questions(root: Path, config_text: str) -> dict[str, dict]:
    """The run's training prompts by prompt_id (data.train_split of its config, default "train")."""
    import yaml

    try:
        data = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        data = {}
    split = ((data.get("data") if isinstance(data, dict) else None) or {}).get("train_split") or "train"
    return read_prompts(RunLayout(runs_dir=str(root.parent), run_id=root.name).prompts(split))


def question_block(question: str | None, reference: str | None) -> str:
    """A prompt's question and reference answer, labelled; a note for each the prompts file lacks."""
    missing = '<span class="muted">(not in the prompts file)</span>'
    q = missing if question is None else f"<pre>{esc(question)}</pre>"
    r = missing if reference is None else f"<pre>{esc(reference)}</pre>"
    return f'<div class="label">question</div>{q}<div class="label">reference answer</div>{r}'


def beside(left: str, right: str) -> str:
    """Two blocks of HTML side by side (the question on the left, what the policy made of it on the right)."""
    return f'<div class="qa"><div>{left}</div><div>{right}</div></div>'


def segments_section(run: RunInfo, decode: Callable[[list[int]], str] | None, n: int = SEGMENT_RESPONSES) -> str:
    """The last iteration's SPO-chain segments of `n` responses (tasks/segment_view.py picks them): the
    per-segment table as `segflow segments` prints it and the response with cutpoints marked and segment
    boundaries drawn as ‖."""
    from tasks.segment_view import highlighted, pick, read_segment_views, segment_lines

    k = last_iteration_with(run.root, "segment_advantages.parquet")
    if k is None:
        return '<p class="muted">No iteration has SPO-chain segments (segments + segment_advantages) yet.</p>'
    views = read_segment_views(RunLayout(runs_dir=str(run.root.parent), run_id=run.root.name), k)
    prompts = train_questions(run.root, run.config)
    parts = [
        f"<p>Iteration {esc(k)}: {len(views)} responses, {min(n, len(views))} drawn. Cutpoints (p &lt; spo.rho) "
        "are highlighted, ‖ separates segments. <code>A raw</code> = V(end) - V(start), <code>A trained</code> "
        "after spo.normalize.</p>"
    ]
    for v in pick(views, n):
        head, *rows = segment_lines(v)
        text = ""
        if decode is not None and v["segments"]:
            marked = highlighted(
                v, decode, cut=lambda t: f"<mark>{esc(t)}</mark>", sep='<span class="sep"> ‖ </span>', plain=esc
            )
            text = f'<div class="label">response</div><div class="segtext">{marked}</div>'
        p = prompts.get(v["prompt_id"], {})
        table = f'<div class="label">segments</div><pre>{esc(chr(10).join(rows))}</pre>'
        parts.append(
            f'<div class="view"><b>{esc(head)}</b>'
            f"{beside(question_block(p.get('question'), p.get('reference')), text + table)}</div>"
        )
    return "".join(parts)


def tree_section(run: RunInfo, decode: Callable[[list[int]], str] | None, questions: int = TREE_QUESTIONS) -> str:
    """The last iteration's SPO-tree of the first `questions` prompts, drawn as `segflow tree` draws them
    (tasks/tree_view.py): node values V, edge advantages A (* = kept, trained), leaf grades."""
    from tasks.tree_view import read_tree, tree_lines

    layout = RunLayout(runs_dir=str(run.root.parent), run_id=run.root.name)
    k = last_iteration_with(run.root, "tree_advantages.parquet")
    if k is None or not layout.tree_nodes(k).is_file():
        return '<p class="muted">No iteration has an SPO-tree (tree_nodes + tree_advantages) yet.</p>'
    rows = read_tree(layout.tree_nodes(k), layout.tree_advantages(k))
    ids = sorted({r["prompt_id"] for r in rows})
    prompts = train_questions(run.root, run.config)
    parts = [
        f"<p>Iteration {esc(k)}: {len(ids)} trees, {min(questions, len(ids))} drawn. <code>A</code> = V(node) - "
        "V(parent), <code>*</code> = kept edge (trained), <code>V</code> = node value.</p>"
    ]
    for i, q in enumerate(ids[:questions]):
        lines = tree_lines(rows, q, decode)
        p = prompts.get(q, {})
        parts.append(
            f'<div class="view"><b>{esc(q)}</b>{beside(question_block(p.get("question"), p.get("reference")), "")}'
            f"<details{' open' * (i == 0)}><summary>{esc(lines[0])}</summary>"
            f"<pre>{esc(chr(10).join(lines))}</pre></details></div>"
        )
    return "".join(parts)


def guarded(what: str, draw: Callable[[], str]) -> str:
    """`draw()`, or a note naming what could not be drawn: one unreadable file costs a panel, not the report."""
    try:
        return draw()
    except (OSError, ValueError, KeyError) as e:
        return f'<p class="muted">Could not draw the {esc(what)}: {esc(type(e).__name__)}: {esc(e)}</p>'


# --- tables and page ------------------------------------------------------------------------------------------


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


def header(title: str) -> str:
    """A column header that may wrap after '_' or '/' (long metric names in a narrow column); the full name
    is its tooltip."""
    return f'<span title="{esc(title)}">{esc(title).replace("_", "_<wbr>").replace("/", "/<wbr>")}</span>'


def metrics_table(metrics: dict[int, dict[str, float]], s: dict[str, Any]) -> str:
    names = present_metrics(metrics)
    if not names:
        return '<p class="muted">No per-iteration metrics files found.</p>'
    acc = dict(series(s, "eval_accuracy"))
    rows = [[esc(it), *(esc(num(metrics[it].get(m))) for m in names), esc(pct(acc.get(it)))] for it in sorted(metrics)]
    headers = ["iteration", *(header(metric_title(m, metrics)) for m in names), header("held-out accuracy")]
    return f'<div class="scroll">{_table(headers, rows)}</div>'


def img(path: Path | None, alt: str) -> str:
    return "" if path is None else f'<img src="{png_data_uri(path)}" alt="{esc(alt)}">'


def partial_banner(run: RunInfo) -> str:
    note = partial_note(run)
    if note is None:
        return ""
    return (
        f'<p class="partial"><b>{esc(note)}</b>: the run has not finished (still running, crashed or '
        "interrupted; rerun its command to resume). Figures come from its stored metrics.</p>"
    )


def spo_sections(run: RunInfo, family: Family | None, metrics: dict[int, dict[str, float]], tmp: Path) -> list[str]:
    """The SPO-chain or SPO-tree section (metric panels + segments or tree view); none for other runs."""
    if family is None:
        return []
    title, anchor, wanted, view_title = SPO_SECTIONS[family]
    names = present_metrics(metrics, wanted)
    grid = plot_metrics_grid(metrics, names, tmp / f"{anchor}.png")
    decode = guarded_decoder(run.root)
    if family is Family.SEGMENT:
        view = guarded("segments view", lambda: segments_section(run, decode))
    else:
        view = guarded("tree view", lambda: tree_section(run, decode))
    return [
        f'<h2 id="{anchor}">{title}</h2>',
        img(grid, f"{title} metrics per iteration: {', '.join(names)}"),
        f"<h3>{view_title} of the last iteration</h3>",
        view,
    ]


def guarded_decoder(root: Path) -> Callable[[list[int]], str] | None:
    """run_decoder, or None when the run's tokenizer does not load (the views then show token counts only)."""
    try:
        return run_decoder(root)
    except (OSError, ValueError) as e:
        print(f"report: no decoded text in the SPO views ({type(e).__name__}: {e})")
        return None


def render(
    run: RunInfo,
    accuracy_plot: Path | None,
    grid: Path | None,
    metrics: dict[int, dict[str, float]],
    samples: str,
    spo: list[str],
) -> str:
    title = f"segflow run {run.run_id}"
    names = present_metrics(metrics, TRAINING_METRICS)
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
            "<h2>Config</h2>",
            config_section(run),
            "<h2>Summary</h2>",
            summary_section(run),
            "<h2>Health checks</h2>",
            health_section(run.summary),
            "<h2>Held-out accuracy</h2>",
            evals_table(run.summary),
            img(accuracy_plot, "held-out accuracy vs iteration"),
            "<h2>Metrics over time</h2>",
            img(grid, f"training metrics per iteration: {', '.join(names)}"),
            *spo,
            "<h2>Metrics table</h2>",
            metrics_table(metrics, run.summary),
            "<h2>Sample responses</h2>",
            samples,
            "</body></html>",
        ]
    )


def write_report(run: RunInfo, out: Path, samples: int = 5) -> Path:
    """Write the report to `out` (an HTML file path, or an existing directory to get <run_id>.html in it)."""
    out = Path(out)
    if out.is_dir():
        out = out / f"{run.run_id}.html"
    metrics = read_iteration_metrics(run.root)
    sample_html = guarded("sample responses", lambda: samples_section(*last_eval_samples(run.root, samples)))
    # The PNGs only live long enough to be inlined: the page must not depend on files beside it.
    with tempfile.TemporaryDirectory(prefix="segflow-report-") as tmp:
        has_evals = bool(series(run.summary, "eval_accuracy"))
        accuracy = plot_accuracy_vs_iteration([run], Path(tmp) / "accuracy.png") if has_evals else None
        grid = plot_metrics_grid(metrics, present_metrics(metrics, TRAINING_METRICS), Path(tmp) / "metrics.png")
        spo = spo_sections(run, spo_family(run.estimator, metrics), metrics, Path(tmp))
        page = render(run, accuracy, grid, metrics, sample_html, spo)
    with atomic_path(out) as tmp_path:
        tmp_path.write_text(page, encoding="utf-8")
    return out
