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
from storage.metric_names import qualified
from storage.metrics import read_metrics
from storage.parquet import read_parquet, write_parquet
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

# Metrics shown in the per-iteration table artifact (under their namespaced names) and the terminal summary.
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
    """Save the resolved config (and the runs-table row) before any work starts. A run continued with other
    execution keys (a longer run.iterations) keeps its row's created_at and gets its current config."""
    text = to_yaml(cfg)
    if not layout.config.exists() or layout.config.read_text() != text:
        atomic_write_text(layout.config, text)
    config_json = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    created = datetime.now(UTC)
    if layout.run_table.exists():
        old = read_parquet(layout.run_table, RUNS).to_pylist()[0]
        if old["config_json"] == config_json:
            return
        created = old["created_at"]
    row = {
        "run_id": layout.run_id,
        "preset": cfg.run.preset,
        "estimator": cfg.advantage.estimator,
        "task": cfg.data.task,
        "model": cfg.model.name_or_path,
        "created_at": created,
        "config_json": config_json,
    }
    write_parquet([row], RUNS, layout.run_table)


def first_run_name() -> str:
    """The flow run's name from its first log line on: the run id (label_flow_run adds `#n` for resumes)."""
    from prefect.runtime import flow_run

    cfg = flow_run.parameters.get("cfg")
    try:
        return make_run_id(cfg if isinstance(cfg, Config) else Config.model_validate(cfg))
    except Exception:  # a name must never fail a run; label_flow_run names it under the lock anyway
        return "rl_train"


@flow(
    name="rl_train",
    flow_run_name=first_run_name,
    log_prints=True,
    on_failure=[notify_failure],
    on_crashed=[notify_failure],
)
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

    def __call__(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out, hit = ensure(fn, self.cfg, self.layout, *args, code_version=CODE_VERSION, **kwargs)
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


class RunRecord:
    """What a run accumulates over its iterations: held-out accuracy (and avg@k) per evaluated iteration, the
    generated tokens and measured work at each, the health findings, and the metrics table's rows."""

    def __init__(self, cfg: Config, stage: StageLedger):
        self.cfg, self.stage = cfg, stage
        self.checks = health_settings(cfg)
        self.evals: dict[int, float] = {}  # greedy held-out accuracy per evaluated iteration
        self.sampled: dict[int, float] = {}  # avg@k per evaluated iteration, when eval.samples > 0
        self.health: dict[str, dict] = {}  # finding code -> first message and the iterations it fired in
        self.first_metrics: dict[str, float] = {}  # the baseline of trend checks (entropy)
        self.generated = 0.0  # rollout + Monte Carlo tokens so far
        self.tokens_at_eval: dict[int, float] = {}
        self.seconds_at_eval: dict[int, float] = {}  # measured work so far: the wall-clock x axis
        self.rows: list[dict] = []  # the metrics table, one row per iteration
        self.published = 0  # rows in the last metrics table artifact

    def flag(self, findings, it: int) -> None:
        """Log each kind of finding the first time it fires; stop the run on one in health.fail_on."""
        for finding in record(self.health, findings, it):
            get_run_logger().warning(f"iteration {it}: {finding.message}")
        for finding in findings:
            if finding.code in self.cfg.health.fail_on:
                raise HealthCheckFailed(
                    f"iteration {it}: health check {finding.code} is in health.fail_on, so the run stops: "
                    f"{finding.message} Finished stages stay cached; a rerun with the same config (health "
                    "keys may differ) resumes here."
                )

    def evaluate(self, policy: FileRef, test: FileRef, it: int) -> float:
        """The evaluate stage on `policy`; judged against the start (evaluated first) after iteration 0."""
        m = read_metrics(self.stage("evaluate", evaluate, policy=policy, test=test, iteration=it).metrics)
        if "eval_avg_at_k" in m:
            self.sampled[it] = m["eval_avg_at_k"]
        if it:
            problems = int(m.get("eval_problems", 0))
            self.flag(eval_regression(self.evals[0], m["eval_accuracy"], problems, self.checks), it)
        self.evals[it] = m["eval_accuracy"]
        self.tokens_at_eval[it] = self.generated
        self.seconds_at_eval[it] = self.stage.compute_seconds()
        return self.evals[it]

    def iteration(self, it: int, metrics: dict[str, float]) -> dict:
        """Account an iteration's metrics, run the health checks on them; returns its table row, whose
        columns are qualified(k) (storage/metric_names.py; `metrics` is keyed by flat names)."""
        self.generated += generated_tokens(metrics)
        self.first_metrics = self.first_metrics or metrics
        self.flag(diagnose(metrics, self.checks, self.first_metrics), it)
        return {"iteration": it, **{qualified(k): round(metrics[k], 4) for k in TABLE_METRICS if k in metrics}}

    def summary(self, layout: RunLayout, wall_seconds: float) -> dict:
        """summary.json (README, "What make run does")."""
        stage = self.stage
        return {
            "run_id": layout.run_id,
            "preset": self.cfg.run.preset,
            "estimator": self.cfg.advantage.estimator,
            "iterations_completed": self.cfg.run.iterations,
            "initial_eval_accuracy": self.evals[0],
            "final_eval_accuracy": self.evals[max(self.evals)],
            "eval_accuracy": {str(k): v for k, v in self.evals.items()},
            "eval_avg_at_k": {str(k): v for k, v in self.sampled.items()},
            "generated_tokens": self.generated,
            "generated_tokens_at_eval": {str(k): v for k, v in self.tokens_at_eval.items()},
            "compute_seconds_at_eval": {str(k): round(v, 2) for k, v in self.seconds_at_eval.items()},
            "wall_seconds": round(wall_seconds, 2),
            "stage_seconds": {k: round(v, 2) for k, v in stage.wall.items()},
            "compute_seconds": {k: round(v, 2) for k, v in stage.compute.items()},
            "stages_executed": dict(stage.executed),
            "stages_cached": dict(stage.cached),
            "code_version": CODE_VERSION,
            "health": self.health,
        }


def _train(cfg: Config, layout: RunLayout) -> dict:
    wall0 = time.perf_counter()
    check_placement(cfg)  # shards and training processes that this machine's GPUs cannot hold fail here, not later
    start_run(cfg, layout)
    print(f"run {layout.run_id} -> {layout.root}")
    stage = StageLedger(cfg, layout)
    run = RunRecord(cfg, stage)
    owns_engine = current_engine() is None  # leave an engine we were handed (tests, notebooks) running
    key = artifact_key("rl-train", layout.run_id)
    progress_id = create_progress_artifact(0.0, key=f"{key}-progress", description=f"iterations of {layout.run_id}")
    try:
        iterate(cfg, layout, stage, run, key, progress_id)
    finally:
        if owns_engine:
            shutdown_engine()
    summary = run.summary(layout, time.perf_counter() - wall0)
    for code, entry in run.health.items():
        print(
            f"health: {code} in {len(entry['iterations'])} of {cfg.run.iterations} iterations "
            f"(first at {entry['iterations'][0]})"
        )
    atomic_write_text(layout.summary, json.dumps(summary, indent=2))
    if stage.executed:  # a fully cached rerun would only add identical versions of both
        if len(run.rows) > run.published:  # iterations cached after the last one that ran are not in the table yet
            create_table_artifact(
                run.rows, key=f"{key}-metrics", description=f"per-iteration metrics of {layout.run_id}"
            )
        create_markdown_artifact(summary_markdown(summary), key=f"{key}-summary", description="run summary")
    update_progress_artifact(progress_id, 100.0)
    return summary


def start_policy(cfg: Config, stage: StageLedger, train: FileRef) -> FileRef:
    """The policy iteration 1 samples from: the tiny model after its warm start, or the configured model."""
    if cfg.model.name_or_path != "tiny":
        return FileRef.of(resolve_model_dir(cfg.model.name_or_path))
    if not cfg.warm_start.enabled:
        raise ValueError("model.name_or_path='tiny' needs warm_start.enabled=true (it starts untrained)")
    return stage("warm_start", warm_start, train=train).artifact


def iterate(cfg: Config, layout: RunLayout, stage: StageLedger, run: RunRecord, key: str, progress_id) -> None:
    """prepare_dataset, the start policy and its evaluation, then every iteration (README's diagram)."""
    data = stage("prepare_dataset", prepare_dataset)
    policy = start = start_policy(cfg, stage, data.train)  # `start`: the KL reference and the LoRA base
    print(f"start accuracy (held-out, greedy): {run.evaluate(policy, data.test, 0):.3f}")
    buffer = None  # SPO-tree: the replay buffer's state file after the last iteration
    clock = RunProgress(cfg.run.iterations)  # "iteration k of N" with an ETA, in a terminal and in logs
    for it in range(1, cfg.run.iterations + 1):
        executed_before = stage.executed_calls()
        clock.start(it)
        if cfg.advantage.spec.grows_trees:
            outs, buffer = tree_iteration(stage, policy, start, data.train, buffer, it)
        else:
            outs = rollout_iteration(cfg, stage, policy, start, data.train, it)
        ran = stage.executed_calls() > executed_before  # a cached iteration would only repeat its artifacts
        if ran:
            publish_views(cfg, layout, outs, it, key)
        policy = outs[-1].artifact
        metrics = iteration_metrics([read_metrics(out.metrics) for out in outs if out is not None])
        row = run.iteration(it, metrics)
        # An evaluation on disk is kept (a cache hit): a run extended past its old last iteration keeps that
        # point in its summary and plots.
        if it % cfg.eval.every == 0 or it == cfg.run.iterations or layout.eval_metrics(it).exists():
            row[qualified("eval_accuracy")] = round(run.evaluate(policy, data.test, it), 4)
            print(
                f"iteration {it}: held-out accuracy {run.evals[it]:.3f}"
                + (f", avg@{cfg.eval.samples} {run.sampled[it]:.3f}" if it in run.sampled else "")
            )
        run.rows.append(row)
        ran = stage.executed_calls() > executed_before
        if ran:
            run.published = publish_live(layout, key, run.rows, run.evals)
        reward, accuracy = metrics.get("reward_mean", 0), metrics.get("accuracy", 0)
        print(f"iteration {it}: reward {reward:.3f}, train accuracy {accuracy:.3f}")
        clock.finish(it, executed=ran)
        if ran:  # a cached iteration is not progress (one request less)
            update_progress_artifact(progress_id, 100.0 * it / max(1, cfg.run.iterations))


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
    roll = stage(
        "generate_rollouts", generate_rollouts, policy=policy, policy_version=it - 1, train=train, iteration=it
    )
    grades = stage("grade", grade, rollouts=roll.artifact, train=train, iteration=it)
    ref = (
        stage("reference_logprobs", reference_logprobs, reference=start, rollouts=roll.artifact, iteration=it)
        if cfg.train.kl_coef > 0
        else None
    )
    inputs = {"rollouts": roll.artifact, "grades": grades.artifact}
    if ref is not None:
        inputs["reference"] = ref.artifact  # into the rewards or the samples, by train.kl_placement
    spo = None
    if cfg.advantage.spec.reads_segments:
        spo = stage(
            "spo_values",
            spo_values,
            policy=policy,
            rollouts=roll.artifact,
            grades=grades.artifact,
            train=train,
            iteration=it,
        )
        inputs["segments"] = spo.artifact
        if cfg.spo.mc_train:
            inputs["continuations"] = spo.side
    adv = stage("compute_advantages", compute_advantages, iteration=it, **inputs)
    trained = train_stage(stage, start, policy, adv.side, it)
    return (roll, grades, ref, spo, adv, trained)


def tree_iteration(stage, policy: FileRef, start: FileRef, train: FileRef, buffer: FileRef | None, it: int) -> tuple:
    """tree_rollouts -> compute_advantages -> replay_buffer -> train_policy. Returns (outputs, buffer state)."""
    tree = stage("tree_rollouts", tree_rollouts, policy=policy, policy_version=it - 1, train=train, iteration=it)
    adv = stage("compute_advantages", compute_advantages, iteration=it, nodes=tree.artifact)
    replay = stage(
        "replay_buffer",
        replay_buffer,
        previous=buffer,
        nodes=tree.artifact,
        advantages=adv.artifact,
        train=train,
        iteration=it,
    )
    trained = train_stage(stage, start, policy, replay.side, it)
    return (tree, adv, replay, trained), replay.state


def train_stage(stage, start: FileRef, policy: FileRef, samples: FileRef, it: int):
    """train_policy with the rollout engine asleep (rollout.sleep_mode): on one GPU the trainer's fp32 master
    weights, optimizer state and activations need the memory the engine holds (README, "Memory on one GPU")."""
    with engine_asleep():
        return stage("train_policy", train_policy, start=start, policy=policy, samples=samples, iteration=it)


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
