"""The `evaluate` flow: checkpoints x datasets x context budgets, each cell a cached eval_checkpoint task.

    evaluate(EvalSpec(checkpoints=("runs/<id>", "Qwen/Qwen2.5-0.5B-Instruct"), datasets=("gsm8k=../shared/data/gsm8k",),
                      samples=16, budgets=(2048, 4096)), runs_dir="runs")

Writes <runs_dir>/evals/<eval_id>/ (storage/layout.py::EvalLayout). The eval id is a hash of the spec,
so the same command resumes the same evaluation and finished cells are cache hits. The summary holds
every cell's metrics (tasks/algos/eval_summary.py), the frontier cost-of-pass per (dataset, budget), and a
paired comparison of the first checkpoint with each other one on the same problems: accuracy difference
with a paired bootstrap CI and an exact McNemar p-value (greedy), and the same bootstrap on avg@k.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from configs.schema import RolloutSection
from flows.artifact_keys import artifact_key
from flows.eval_spec import EvalSpec, dataset_section
from flows.notify import notify_failure
from storage.handles import FileRef, atomic_write_text
from storage.layout import EvalLayout
from storage.parquet import read_parquet
from storage.schemas import EVAL_SAMPLES
from tasks.algos.eval_stats import frontier_cost_of_pass, mcnemar, paired_bootstrap
from tasks.algos.eval_summary import per_problem_scores, table_columns
from tasks.common import CODE_VERSION, ensure
from tasks.engines.live import current_engine, shutdown_engine
from tasks.eval_checkpoint import eval_checkpoint
from tasks.models import resolve_model_dir


def checkpoint_dir(name: str) -> Path:
    """A model directory, a run directory (its latest checkpoint), or a hub id."""
    p = Path(name).expanduser()
    if (p / "config.yaml").exists() and (p / "checkpoints").is_dir():
        done = sorted(d for d in (p / "checkpoints").iterdir() if (d / "config.json").exists())
        if not done:
            raise ValueError(f"run {name!r} has no finished checkpoint")
        return done[-1]
    return resolve_model_dir(name)


def label(model_dir: Path, name: str) -> str:
    """A short, filesystem-safe name: <run_id>@<iteration> (or @warm_start) inside a run, else the directory
    name or the hub id."""
    if model_dir.parent.name in ("checkpoints", "models"):
        name = f"{model_dir.parent.parent.name}@{model_dir.name}"
    elif Path(name).expanduser().exists():
        name = model_dir.name
    return re.sub(r"[^A-Za-z0-9@._-]+", "--", name)[-80:]


def max_positions(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    return int(cfg.get("max_position_embeddings", 4096))


# Context budget (prompt + answer tokens) for a checkpoint that is not a run's, when no --budget is given. Not the
# model's max_position_embeddings: 131,072 for DeepSeek-R1-Distill, whose KV cache for one such sequence alone
# outgrows a typical engine share. 4096 holds MATH-500 and GSM8K answers of the presets' models.
DEFAULT_BUDGET = 4096


def run_max_model_len(model_dir: Path) -> int | None:
    """rollout.max_model_len of the run a checkpoint belongs to (runs/<id>/checkpoints/<k>, runs/<id>/models/<m>,
    as checkpoint_dir resolves a run directory), from the run's saved config.yaml; None outside a run."""
    import yaml

    run_config = model_dir.parent.parent / "config.yaml"
    if model_dir.parent.name not in ("checkpoints", "models") or not run_config.exists():
        return None
    value = (yaml.safe_load(run_config.read_text()) or {}).get("rollout", {}).get("max_model_len")
    return int(value) if value else None


def default_budget(model_dir: Path) -> int:
    """The budget `segflow eval` uses without --budget: the run's context (rollout.max_model_len) for a run's
    checkpoint, DEFAULT_BUDGET otherwise, never beyond the model's max_position_embeddings."""
    return min(run_max_model_len(model_dir) or DEFAULT_BUDGET, max_positions(model_dir))


def eval_rollout(spec: EvalSpec, max_model_len: int) -> RolloutSection:
    """Engine settings of an evaluation: CUDA graphs on GPU (eager only on CPU, where vLLM has none), and no
    sleep mode (nothing trains beside it)."""
    import torch

    return RolloutSection(
        max_model_len=max_model_len,
        temperature=spec.temperature,
        top_p=spec.top_p,
        shards=spec.shards,
        ray_address=spec.ray_address,
        enforce_eager=not torch.cuda.is_available(),
        sleep_mode=False,
    )


def compare(rows_a: list[dict], rows_b: list[dict], seed: int) -> dict:
    """Paired comparison of two checkpoints' answers on the same problems (b minus a)."""
    a, b = per_problem_scores(rows_a), per_problem_scores(rows_b)
    common = sorted(set(a) & set(b))
    if not common:
        return {"problems": 0}
    ga = [a[p]["greedy"] for p in common]
    gb = [b[p]["greedy"] for p in common]
    out = {"problems": len(common), "greedy": {**paired_bootstrap(ga, gb, seed=seed), **mcnemar(ga, gb)}}
    if all("avg" in a[p] and "avg" in b[p] for p in common):
        out["avg_at_k"] = paired_bootstrap([a[p]["avg"] for p in common], [b[p]["avg"] for p in common], seed=seed)
    return out


@flow(name="evaluate", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def evaluate(spec: EvalSpec, runs_dir: str) -> dict:
    layout = EvalLayout(runs_dir=str(Path(runs_dir).resolve()), eval_id=spec.eval_id())
    atomic_write_text(layout.spec, spec.model_dump_json(indent=2))
    print(f"evaluation {layout.eval_id} -> {layout.root}")
    dirs = {c: checkpoint_dir(c) for c in spec.checkpoints}
    labels = {c: label(dirs[c], c) for c in spec.checkpoints}
    if len(set(labels.values())) < len(labels):
        raise ValueError(f"checkpoints {list(spec.checkpoints)} name the same model twice ({sorted(labels.values())})")
    budgets = spec.budgets or (min(default_budget(d) for d in dirs.values()),)  # one budget: cells compare
    too_long = [(c, b) for c in spec.checkpoints for b in budgets if b > max_positions(dirs[c])]
    if too_long:
        c, b = too_long[0]
        raise ValueError(f"budget {b} exceeds {c}'s max_position_embeddings={max_positions(dirs[c])}")
    rollout = eval_rollout(spec, max(budgets))
    owns_engine = current_engine() is None
    cells, answers, executed = [], {}, 0
    try:
        for c in spec.checkpoints:
            ckpt = FileRef.of(dirs[c])
            for ds in spec.datasets:
                data = dataset_section(ds, spec)
                ds_name = re.sub(r"[^A-Za-z0-9._-]+", "-", ds.partition("=")[0] if "=" in ds else Path(ds).stem)
                for b in budgets:
                    out, hit = ensure(
                        eval_checkpoint,
                        layout,
                        ckpt,
                        labels[c],
                        ds_name,
                        data,
                        b,
                        rollout,
                        spec.samples,
                        spec.seed,
                        spec.limit,
                        (spec.price_in, spec.price_out),
                        CODE_VERSION,
                    )
                    executed += not hit
                    m = json.loads(Path(out.metrics.path).read_text())
                    cells.append({"checkpoint": labels[c], "dataset": ds_name, "budget": b, **m})
                    answers[(labels[c], ds_name, b)] = read_parquet(out.artifact, EVAL_SAMPLES).to_pylist()
    finally:
        if owns_engine:
            shutdown_engine()

    comparisons, frontier = [], []
    base = labels[spec.checkpoints[0]]
    for ds, b in sorted({(k[1], k[2]) for k in answers}):
        for c in spec.checkpoints[1:]:
            comparisons.append(
                {
                    "dataset": ds,
                    "budget": b,
                    "a": base,
                    "b": labels[c],
                    **compare(answers[(base, ds, b)], answers[(labels[c], ds, b)], spec.seed),
                }
            )
        costs = {x["checkpoint"]: x["cost_of_pass"] for x in cells if x["dataset"] == ds and x["budget"] == b}
        name, value = frontier_cost_of_pass(costs)
        frontier.append({"dataset": ds, "budget": b, "checkpoint": name, "cost_of_pass": value})
    summary = {
        "eval_id": layout.eval_id,
        "spec": json.loads(spec.model_dump_json()),
        "cells": cells,
        "comparisons": comparisons,
        "frontier_cost_of_pass": frontier,
        "cells_executed": executed,
    }
    atomic_write_text(layout.summary, json.dumps(summary, indent=2, default=str))
    key = artifact_key(layout.eval_id)
    shape = table_shape(summary)
    create_table_artifact(
        [table_row(x, *shape) for x in cells], key=f"{key}-metrics", description=f"{layout.eval_id}: metrics"
    )
    create_markdown_artifact(
        comparison_markdown(summary),
        key=f"{key}-comparison",
        description=f"{layout.eval_id}: paired comparisons and cost-of-pass",
    )
    return summary


def table_shape(summary: dict) -> tuple[int, bool]:
    """(k, priced) of an evaluation: the sampled answers per problem (0 = greedy only) and whether a price
    was given; they decide the eval table's columns (tasks/algos/eval_summary.py `table_columns`)."""
    k = max((int(c.get("k", 0)) for c in summary["cells"]), default=0)
    spec = summary.get("spec") or {}
    return k, bool(spec.get("price_in") or spec.get("price_out"))


def table_row(cell: dict, k: int, priced: bool) -> dict:
    """One cell as a Prefect table row: where, then each table column (its standard error beside it), then k
    and the truncation rate and mean length; floats rounded to 4 digits."""
    row = {key: cell[key] for key in ("checkpoint", "dataset", "budget", "problems") if key in cell}
    for header, key in table_columns(k, priced):
        for name, src in ((header, key), (f"{header} se", f"{key}_se")):
            if src in cell:
                row[name] = cell[src]
    row.update({key: cell[key] for key in ("k", "truncation_rate", "length_mean") if key in cell})
    return {name: round(v, 4) if isinstance(v, float) else v for name, v in row.items()}


def _cell_text(cell: dict, key: str) -> str:
    if key not in cell:
        return ""
    if key == "cost_of_pass":
        return f"{cell[key]:.4g}"
    se = cell.get(f"{key}_se")
    return f"{cell[key]:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def comparison_markdown(summary: dict) -> str:
    k, priced = table_shape(summary)
    cols = table_columns(k, priced)
    lines = [
        f"# {summary['eval_id']}",
        "",
        "| checkpoint | dataset | budget | " + " | ".join(h for h, _ in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for c in summary["cells"]:
        lines.append(
            f"| {c['checkpoint']} | {c['dataset']} | {c['budget']} | "
            + " | ".join(_cell_text(c, key) for _, key in cols)
            + " |"
        )
    if summary["comparisons"]:
        lines += [
            "",
            "| a | b | dataset | budget | greedy diff (b - a) [95% CI] | McNemar p | avg@k diff [95% CI] |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in summary["comparisons"]:
            g = x.get("greedy")
            if not g:
                continue
            avg = x.get("avg_at_k")
            avg_s = f"{avg['mean_diff']:+.3f} [{avg['ci_low']:+.3f}, {avg['ci_high']:+.3f}]" if avg else ""
            lines.append(
                f"| {x['a']} | {x['b']} | {x['dataset']} | {x['budget']} | {g['mean_diff']:+.3f} "
                f"[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] | {g['p_value']:.3g} | {avg_s} |"
            )
    if not priced:  # no price given: every cost is 0, so there is no frontier to name
        return "\n".join(lines)
    lines += [
        "",
        "Frontier cost-of-pass: "
        + "; ".join(
            f"{f['dataset']}@{f['budget']}: {f['checkpoint']} ({f['cost_of_pass']:.4g})"
            for f in summary["frontier_cost_of_pass"]
        ),
    ]
    return "\n".join(lines)
