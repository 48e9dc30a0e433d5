"""The `rl_train` flow: prepare_dataset -> warm_start -> per iteration generate_rollouts -> grade ->
[reference_logprobs, with a KL penalty] -> [spo_values, SPO-chain] -> compute_advantages -> train_policy ->
(every k) evaluate.
SPO-tree iterations are tree_rollouts -> compute_advantages -> replay_buffer -> train_policy.

The flow only composes tasks and reports. Every stage is cached by its inputs (content handles of
upstream artifacts + config + code version), so re-running the same command resumes where the last
run stopped and recomputes nothing that finished. Report artifacts are made here, in the flow body,
so a resumed run still shows them (specs/prefect.md §3).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from configs.loader import run_id as make_run_id
from configs.loader import to_yaml
from configs.schema import Config
from flows.artifact_keys import artifact_key
from flows.notify import notify_failure
from flows.run_plots import generated_tokens, plot_run_accuracy, png_data_uri
from storage.handles import FileRef, atomic_write_text, sweep_temporaries
from storage.layout import RunLayout
from storage.metrics import read_metrics
from storage.parquet import write_parquet
from storage.run_lock import run_lock
from storage.schemas import RUNS
from tasks.advantage import compute_advantages
from tasks.algos.health import HealthCheckFailed, Limits, Settings, diagnose, eval_regression, record
from tasks.algos.registry import Family
from tasks.common import CODE_VERSION, ensure
from tasks.engines.live import current_engine, engine_asleep, shutdown_engine
from tasks.evaluate import evaluate
from tasks.grade import grade
from tasks.models import resolve_model_dir
from tasks.placement import check_placement
from tasks.prepare import prepare_dataset, warm_start
from tasks.progress import RunProgress
from tasks.reference import reference_logprobs
from tasks.replay import replay_buffer
from tasks.rollout import generate_rollouts
from tasks.segment_view import read_segment_views, segments_markdown
from tasks.spo_values import spo_values
from tasks.tokens import load_tokenizer
from tasks.train import train_policy
from tasks.tree_rollouts import tree_rollouts
from tasks.tree_view import read_tree, tree_markdown

# Metrics shown in the per-iteration table artifact and the terminal summary.
TABLE_METRICS = (
    "reward_mean",
    "accuracy",
    "frac_zero_std_groups",
    "frac_truncated",
    "adv_std",
    "clipfrac",
    "approx_kl",
    "kl_ref",
    "entropy",
    "logprob_gap_mean",
    "segments_per_response",
    "cutpoints_per_response",
    "mc_generated_tokens",
    "mc_tokens_per_trained_token",
    "generated_tokens_per_sample",
    "nodes_per_tree",
    "kept_edges",
    "edges_trained",
    "buffer_size",
    "generation_seconds",
    "mc_seconds",
    "weight_load_seconds",
    "train_seconds",
)


# Seconds each stage measured for its own work (metric name per stage). Unlike stage_seconds (wall
# time of this invocation, near 0 when cached), these describe the run however often it is resumed.
COMPUTE_METRICS = {
    "warm_start": "sft_seconds",
    "generate_rollouts": "generation_seconds",
    "spo_values": "mc_seconds",
    "tree_rollouts": "generation_seconds",
    "train_policy": "train_seconds",
    "evaluate": "eval_generation_seconds",
}


VIEW_ITEMS = 2  # questions (SPO-tree) or responses (SPO-chain) per iteration drawn in a markdown artifact


def start_run(cfg: Config, layout: RunLayout) -> None:
    """Save the resolved config (and the runs-table row) before any work starts."""
    text = to_yaml(cfg)
    if not layout.config.exists() or layout.config.read_text() != text:
        atomic_write_text(layout.config, text)
    if not layout.run_table.exists():
        write_parquet(
            [
                {
                    "run_id": layout.run_id,
                    "preset": cfg.run.preset,
                    "estimator": cfg.advantage.estimator,
                    "task": cfg.data.task,
                    "model": cfg.model.name_or_path,
                    "created_at": datetime.now(UTC),
                    "config_json": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
                }
            ],
            RUNS,
            layout.run_table,
        )


@flow(name="rl_train", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def rl_train(cfg: Config, runs_dir: str) -> dict:
    layout = RunLayout(runs_dir=str(Path(runs_dir).resolve()), run_id=make_run_id(cfg))
    # One writer per run: a second process on the same run id fails here, naming the holder's pid.
    with run_lock(layout.root) as lock:
        if lock.took_over_from is not None:
            print(f"resuming after pid {lock.took_over_from}, which stopped without releasing the run")
        swept = sweep_temporaries(layout.root)  # what a killed writer left; never read, but never kept either
        if swept:
            print(f"removed {swept} temporary file(s) left by an interrupted run")
        label_flow_run(cfg, layout)
        return _train(cfg, layout)


def label_flow_run(cfg: Config, layout: RunLayout) -> None:
    """Name this flow run after the run id (`<run_id>`, then `<run_id>#2`, ... for resumes and reruns) and
    tag it preset:/estimator:/task:/model:, so the UI's runs list shows which segflow run each one is.
    Called under the run lock, so two invocations never count the same number."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    log = layout.invocations
    with log.open("a") as f:
        f.write(f"{datetime.now(UTC).isoformat()} {flow_run.id}\n")
    n = len(log.read_text().splitlines())
    name = layout.run_id if n == 1 else f"{layout.run_id}#{n}"
    tags = [
        f"preset:{cfg.run.preset}",
        f"estimator:{cfg.advantage.estimator}",
        f"task:{cfg.data.task}",
        f"model:{cfg.model.name_or_path}",
    ]
    with get_client(sync_client=True) as client:  # a deployment's own tags stay
        client.update_flow_run(flow_run.id, name=name, tags=sorted({*flow_run.tags, *tags}))


class StageLedger:
    """Runs stages through `ensure` and keeps this invocation's account of them: wall seconds, calls that
    executed or were cache hits, and each stage's own measured work (COMPUTE_METRICS), which a cached
    rerun reads back from the stage's metrics, so it describes the run however often it is resumed."""

    def __init__(self, cfg: Config, layout: RunLayout):
        self.cfg, self.layout = cfg, layout
        self.wall: dict[str, float] = defaultdict(float)
        self.executed: dict[str, int] = defaultdict(int)
        self.cached: dict[str, int] = defaultdict(int)
        self.compute: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, fn, *args):
        t0 = time.perf_counter()
        out, hit = ensure(fn, self.cfg, self.layout, *args, CODE_VERSION)
        self.wall[name] += time.perf_counter() - t0
        (self.cached if hit else self.executed)[name] += 1
        if name in COMPUTE_METRICS:
            self.compute[name] += read_metrics(out.metrics).get(COMPUTE_METRICS[name], 0.0)
        return out

    def executed_calls(self) -> int:
        return sum(self.executed.values())

    def compute_seconds(self) -> float:
        return sum(self.compute.values())


def iteration_metrics(stage_metrics: list[dict[str, float]]) -> dict[str, float]:
    """The iteration's stages' metrics in one dict, plus `generated_tokens_per_sample`: rollout and Monte
    Carlo tokens per training sample this iteration's generation produced (kept tree edges, or responses
    and, with spo.mc_train, the Monte Carlo continuations that train)."""
    metrics: dict[str, float] = {}
    for m in stage_metrics:
        metrics.update(m)
    made = metrics.get("kept_edges", metrics.get("samples", 0.0) + metrics.get("mc_trained_samples", 0.0))
    if made:
        metrics["generated_tokens_per_sample"] = generated_tokens(metrics) / made
    return metrics


def _train(cfg: Config, layout: RunLayout) -> dict:
    wall0 = time.perf_counter()
    check_placement(cfg)  # shards and training processes that this machine's GPUs cannot hold fail here, not later
    start_run(cfg, layout)
    print(f"run {layout.run_id} -> {layout.root}")
    stage = StageLedger(cfg, layout)
    owns_engine = current_engine() is None  # leave an engine we were handed (tests, notebooks) running
    key = artifact_key("rl-train", layout.run_id)
    progress_id = create_progress_artifact(0.0, key=f"{key}-progress", description=f"iterations of {layout.run_id}")
    try:
        data = stage("prepare_dataset", prepare_dataset)
        if cfg.model.name_or_path == "tiny":
            if not cfg.warm_start.enabled:
                raise ValueError("model.name_or_path='tiny' needs warm_start.enabled=true (it starts untrained)")
            policy = stage("warm_start", warm_start, data.train).artifact
        else:
            policy = FileRef.of(resolve_model_dir(cfg.model.name_or_path))
        start = policy  # the reference policy of the KL penalty and the base of LoRA adapters
        sampled: dict[int, float] = {}  # avg@k per evaluated iteration, when eval.samples > 0
        health: dict[str, dict] = {}  # finding code -> first message and the iterations it fired in
        checks = health_settings(cfg)
        first_metrics: dict[str, float] = {}

        def flag(findings, it: int) -> None:  # each kind of finding is logged the first time it fires
            for finding in record(health, findings, it):
                get_run_logger().warning(f"iteration {it}: {finding.message}")
            for finding in findings:
                if finding.code in cfg.health.fail_on:
                    raise HealthCheckFailed(
                        f"iteration {it}: health check {finding.code} is in health.fail_on, so the run stops: "
                        f"{finding.message} Finished stages stay cached; a rerun with the same config (health "
                        "keys may differ) resumes here."
                    )

        def run_eval(it: int) -> float:
            m = read_metrics(stage("evaluate", evaluate, policy, data.test, it).metrics)
            if "eval_avg_at_k" in m:
                sampled[it] = m["eval_avg_at_k"]
            if it:  # judged against the start, evaluated first
                flag(eval_regression(evals[0], m["eval_accuracy"], int(m.get("eval_problems", 0)), checks), it)
            return m["eval_accuracy"]

        evals = {0: run_eval(0)}
        print(f"start accuracy (held-out, greedy): {evals[0]:.3f}")
        rows = []
        published = 0  # rows in the last metrics table artifact
        buffer = None  # SPO-tree: the replay buffer's state file after the last iteration
        generated = 0.0  # rollout + Monte Carlo tokens so far
        tokens_at_eval = {0: 0.0}
        seconds_at_eval = {0: stage.compute_seconds()}  # measured work so far: the wall-clock x axis
        clock = RunProgress(cfg.run.iterations)  # "iteration k of N" with an ETA, in a terminal and in logs
        for it in range(1, cfg.run.iterations + 1):
            executed_before = stage.executed_calls()
            clock.start(it)
            if cfg.advantage.spec.grows_trees:
                outs, buffer = tree_iteration(stage, policy, start, data.train, buffer, it)
            else:
                outs = rollout_iteration(cfg, stage, policy, start, data.train, it)
            if stage.executed_calls() > executed_before:  # a cached iteration would only repeat its views
                publish_views(cfg, layout, outs, it, key)
            policy = outs[-1].artifact
            metrics = iteration_metrics([read_metrics(out.metrics) for out in outs if out is not None])
            generated += generated_tokens(metrics)
            first_metrics = first_metrics or metrics  # the baseline of trend checks (entropy)
            flag(diagnose(metrics, checks, first_metrics), it)
            row = {"iteration": it, **{k: round(metrics[k], 4) for k in TABLE_METRICS if k in metrics}}
            if it % cfg.eval.every == 0 or it == cfg.run.iterations:
                evals[it] = run_eval(it)
                tokens_at_eval[it] = generated
                seconds_at_eval[it] = stage.compute_seconds()
                row["eval_accuracy"] = round(evals[it], 4)
                print(
                    f"iteration {it}: held-out accuracy {evals[it]:.3f}"
                    + (f", avg@{cfg.eval.samples} {sampled[it]:.3f}" if it in sampled else "")
                )
            rows.append(row)
            if stage.executed_calls() > executed_before:  # a cached iteration would add identical versions
                published = publish_live(layout, key, rows, evals)
            print(
                f"iteration {it}: reward {metrics.get('reward_mean', 0):.3f}, "
                f"train accuracy {metrics.get('accuracy', 0):.3f}"
            )
            clock.finish(it, executed=stage.executed_calls() > executed_before)
            if stage.executed_calls() > executed_before:  # a cached iteration is not progress (one request less)
                update_progress_artifact(progress_id, 100.0 * it / max(1, cfg.run.iterations))
    finally:
        if owns_engine:
            shutdown_engine()

    summary = {
        "run_id": layout.run_id,
        "preset": cfg.run.preset,
        "estimator": cfg.advantage.estimator,
        "iterations_completed": cfg.run.iterations,
        "initial_eval_accuracy": evals[0],
        "final_eval_accuracy": evals[max(evals)],
        "eval_accuracy": {str(k): v for k, v in evals.items()},
        "eval_avg_at_k": {str(k): v for k, v in sampled.items()},
        "generated_tokens": generated,
        "generated_tokens_at_eval": {str(k): v for k, v in tokens_at_eval.items()},
        "compute_seconds_at_eval": {str(k): round(v, 2) for k, v in seconds_at_eval.items()},
        "wall_seconds": round(time.perf_counter() - wall0, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stage.wall.items()},
        "compute_seconds": {k: round(v, 2) for k, v in stage.compute.items()},
        "stages_executed": dict(stage.executed),
        "stages_cached": dict(stage.cached),
        "code_version": CODE_VERSION,
        "health": health,
    }
    for code, entry in health.items():
        print(
            f"health: {code} in {len(entry['iterations'])} of {cfg.run.iterations} iterations "
            f"(first at {entry['iterations'][0]})"
        )
    atomic_write_text(layout.summary, json.dumps(summary, indent=2))
    if stage.executed:  # a fully cached rerun would only add identical versions of both
        if len(rows) > published:  # iterations cached after the last one that ran are not in the table yet
            create_table_artifact(rows, key=f"{key}-metrics", description=f"per-iteration metrics of {layout.run_id}")
        create_markdown_artifact(summary_markdown(summary), key=f"{key}-summary", description="run summary")
    update_progress_artifact(progress_id, 100.0)
    return summary


def publish_live(layout: RunLayout, key: str, rows: list[dict], evals: dict[int, float]) -> int:
    """The metrics table and the accuracy plot as of this iteration: new versions of the run's two keyed
    artifacts, made in the flow body so a resumed run shows them (specs/prefect.md §3). Returns len(rows)."""
    import tempfile

    create_table_artifact(rows, key=f"{key}-metrics", description=f"per-iteration metrics of {layout.run_id}")
    with tempfile.TemporaryDirectory(prefix="segflow-plot-") as tmp:
        png = plot_run_accuracy(layout.run_id, evals, Path(tmp) / "accuracy.png")
        create_image_artifact(png_data_uri(png), key=f"{key}-accuracy", description="held-out accuracy vs iteration")
    return len(rows)


def rollout_iteration(cfg: Config, stage, policy: FileRef, start: FileRef, train: FileRef, it: int) -> tuple:
    """generate_rollouts -> grade -> [reference_logprobs] -> [spo_values] -> compute_advantages -> train_policy."""
    roll = stage("generate_rollouts", generate_rollouts, policy, it - 1, train, it)
    grades = stage("grade", grade, roll.artifact, train, it)
    ref = stage("reference_logprobs", reference_logprobs, start, roll.artifact, it) if cfg.train.kl_coef > 0 else None
    in_reward = ref is not None and cfg.train.kl_placement == "reward"
    spo = (
        stage("spo_values", spo_values, policy, roll.artifact, grades.artifact, train, it)
        if cfg.advantage.spec.reads_segments
        else None
    )
    adv = stage(
        "compute_advantages",
        compute_advantages,
        roll.artifact,
        grades.artifact,
        ref.artifact if in_reward else None,
        spo.artifact if spo else None,
        it,
    )
    trained = train_stage(
        stage,
        start,
        policy,
        roll.artifact,
        adv.artifact,
        ref.artifact if ref is not None and not in_reward else None,
        spo.side if spo is not None and cfg.spo.mc_train else None,
        it,
    )
    return (roll, grades, ref, spo, adv, trained)


def tree_iteration(stage, policy: FileRef, start: FileRef, train: FileRef, buffer: FileRef | None, it: int) -> tuple:
    """tree_rollouts -> compute_advantages -> replay_buffer -> train_policy. Returns (outputs, buffer state)."""
    tree = stage("tree_rollouts", tree_rollouts, policy, it - 1, train, it)
    adv = stage("compute_advantages", compute_advantages, tree.artifact, None, None, None, it)
    replay = stage("replay_buffer", replay_buffer, buffer, tree.artifact, adv.artifact, train, it)
    trained = train_stage(stage, start, policy, replay.artifact, replay.artifact, None, None, it)
    return (tree, adv, replay, trained), replay.state


def train_stage(stage, *args):
    """train_policy with the rollout engine asleep (rollout.sleep_mode): on one GPU the trainer's fp32 master
    weights, optimizer state and activations need the memory the engine holds (README, "Memory on one GPU")."""
    with engine_asleep():
        return stage("train_policy", train_policy, *args)


def publish_views(cfg: Config, layout: RunLayout, outs: tuple, it: int, key: str) -> None:
    """Markdown artifacts of an iteration, decoded with the new checkpoint's tokenizer: SPO-tree's trees for
    a few questions, SPO-chain's segments for a few responses."""
    if cfg.advantage.spec.family is Family.RESPONSE:
        return
    tok = load_tokenizer(outs[-1].artifact.path)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    if cfg.advantage.spec.grows_trees:
        rows = read_tree(outs[0].artifact.path, outs[1].artifact.path)
        create_markdown_artifact(
            tree_markdown(rows, it, VIEW_ITEMS, decode),
            key=f"{key}-trees",
            description=f"SPO-tree values and advantages, iteration {it}",
        )
    else:
        create_markdown_artifact(
            segments_markdown(read_segment_views(layout, it), it, VIEW_ITEMS, decode),
            key=f"{key}-segments",
            description=f"SPO-chain segments and advantages, iteration {it}",
        )


def health_settings(cfg: Config) -> Settings:
    """The config values the health checks name in their messages."""
    return Settings(
        samples_per_prompt=cfg.rollout.samples_per_prompt,
        temperature=cfg.rollout.temperature,
        max_tokens=cfg.rollout.max_tokens,
        truncated_reward=cfg.reward.truncated,
        lr=cfg.train.lr,
        task=cfg.data.task,
        limits=Limits(**cfg.health.model_dump(exclude={"fail_on"})),
        sampler_is_old_policy=cfg.advantage.spec.grows_trees and cfg.tree.old_logprobs == "generation",
    )


def summary_markdown(s: dict) -> str:
    lines = [
        f"# {s['run_id']}",
        "",
        f"preset `{s['preset']}`, estimator `{s['estimator']}`, "
        f"{s['iterations_completed']} iterations, {s['wall_seconds']:.0f} s",
        "",
        "| iteration | held-out accuracy (greedy) | avg@k (sampled) |",
        "|---|---|---|",
    ]
    avg = s.get("eval_avg_at_k", {})
    lines += [
        f"| {k} | {v:.3f} | {avg[k]:.3f} |" if k in avg else f"| {k} | {v:.3f} | |"
        for k, v in s["eval_accuracy"].items()
    ]
    lines += ["", "| stage | seconds (this invocation) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in s["stage_seconds"].items()]
    if s.get("health"):
        lines += ["", "## Health checks", "", "| check | iterations | first message |", "|---|---|---|"]
        lines += [
            f"| {code} | {', '.join(map(str, e['iterations']))} | {e['first_message']} |"
            for code, e in s["health"].items()
        ]
    return "\n".join(lines)
