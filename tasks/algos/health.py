"""Training health checks: one iteration's metrics -> findings worded for the person running it.

They catch what users of verl, TRL and OpenRLHF keep filing issues about (specs/rl_algorithms.md §D):
  * no_signal: every advantage is 0 (all groups' rewards equal), so the update trains nothing. TRL's
    "loss = 0, frac_reward_zero_std = 1" confusion (trl#3857, #3452, #2884).
  * truncated: most responses hit the token limit and score the truncation reward, with no error
    (trl#6263: a 256-token default cut 50-80% of GSM8K chains of thought).
  * unparseable: most responses carry no answer the grader can read (a prompt template, chat template
    or stop string that does not fit the task).
  * logprob_mismatch: the trainer's log-probs of the sampled tokens differ from the sampler's for the
    same weights (verl#2996, open-instruct#1473): dtype, tokenizer or position ids disagree.
  * clipping: a large share of tokens is clipped, the policy moves too far per iteration.
  * skipped_steps: optimizer steps dropped for a non-finite loss or gradient.
  * stale_update: the iteration's optimizer steps changed few of the trained (master) weights' entries,
    so the update was mostly lost. AdamW stepping bf16 weights in place at lr 1e-6 changes ~1% of them
    per iteration (issue 29); float32 master weights change > 99% (tasks/trainer.py). Reads the master:
    the bf16 copy the engine gets changes only ~3% of its entries per iteration even when all is well.
  * entropy_collapse: token entropy fell far below the first iteration's, the policy is collapsing onto
    few outputs (verl#5953; clip-higher and entropy bonuses are the usual remedies).
  * eval_regression: held-out accuracy fell below the start by more than evaluation noise explains.

Pure: no Prefect, no I/O. The flow logs each finding once, lists every one in summary.json, and stops
the run on the codes in health.fail_on. The thresholds are the config's health section (Limits here);
its defaults raise nothing on healthy runs of the embedded default, measured over 3 seeds x 40
iterations (bench/default_run.py, 2026-11-30): frac_adv_zero 0.03-0.27, clipfrac <= 0.012, frac_truncated
<= 0.005, log-prob gap 0 in fp32, entropy 0.15-0.28 nats per token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """When each finding fires (configs/schema.HealthSection holds the defaults and their meaning)."""

    no_signal_frac: float  # "all" advantages zero, up to float noise in a metric that is a mean
    truncated_frac: float
    unparseable_frac: float
    logprob_gap_nats: float  # mean |log p_trainer - log p_sampler| per token; ~1e-5 when both are fp32
    clip_frac: float  # PPO practice: clip fractions above ~0.2 mean the step size is too large
    entropy_ratio: float  # entropy below this share of the first iteration's
    eval_drop_std: float  # a fall beyond this many std of evaluation noise is not bad luck
    stale_update_frac: float  # share of trained (master) entries an iteration changed


class HealthCheckFailed(RuntimeError):
    """A finding listed in health.fail_on fired: the flow stops instead of training on."""


@dataclass(frozen=True)
class Finding:
    code: str
    message: str


@dataclass(frozen=True)
class Settings:
    """The config values the messages name (so the reader knows which key to change)."""

    samples_per_prompt: int
    temperature: float
    max_tokens: int
    truncated_reward: float
    lr: float
    task: str
    limits: Limits
    sampler_is_old_policy: bool = False  # SPO-tree replays edges of older policies: a gap is expected


def diagnose(m: Mapping[str, float], s: Settings, first: Mapping[str, float] | None = None) -> list[Finding]:
    """Findings for one iteration's metrics `m` (the union of its stages' metrics); `first` are the first
    iteration's, the baseline of trends. A metric that is absent (a stage this estimator does not run)
    raises nothing."""
    out: list[Finding] = []
    if "edges_trained" in m:  # SPO-tree: trains buffered edges, which zero-advantage edges never enter
        if m["edges_trained"] == 0:
            out.append(
                Finding(
                    "no_signal",
                    (
                        "no tree edge to train: every node's value equals its parent's and the replay buffer is "
                        f"empty, so this iteration's update trains nothing. Try wider trees (tree.branching) or a "
                        f"higher rollout.temperature (now {s.temperature:g})."
                    ),
                )
            )
    elif m.get("frac_adv_zero", 0.0) >= s.limits.no_signal_frac:
        if m.get("frac_groups_any_correct", 1.0) == 0.0:
            why = "no response in any group was correct"
        elif m.get("accuracy", 0.0) >= s.limits.no_signal_frac:
            why = "every response was correct"
        else:
            why = "within every group all rewards were equal"
        out.append(
            Finding(
                "no_signal",
                (
                    f"all advantages are 0 ({why}), so this iteration's update trains nothing. Try more samples "
                    f"per prompt (rollout.samples_per_prompt={s.samples_per_prompt}), a higher rollout.temperature "
                    f"(now {s.temperature:g}), or prompts nearer the model's level."
                ),
            )
        )
    truncated = m.get("frac_truncated", 0.0)
    if truncated >= s.limits.truncated_frac:
        out.append(
            Finding(
                "truncated",
                (
                    f"{truncated:.0%} of responses hit rollout.max_tokens={s.max_tokens} and scored "
                    f"reward.truncated={s.truncated_reward:g} whatever they contained; raise rollout.max_tokens."
                ),
            )
        )
    unparseable = m.get("frac_no_answer", 0.0) + m.get("frac_parse_error", 0.0)
    if unparseable >= s.limits.unparseable_frac:
        out.append(
            Finding(
                "unparseable",
                (
                    f"{unparseable:.0%} of responses have no answer the {s.task} grader can read (no_answer or "
                    "parse_error); check data.prompt_template, data.use_chat_template and rollout.stop against "
                    "the answer format, or try `segflow grade` on a few responses."
                ),
            )
        )
    gap = m.get("logprob_gap_mean", 0.0)
    if not s.sampler_is_old_policy and gap >= s.limits.logprob_gap_nats:
        out.append(
            Finding(
                "logprob_mismatch",
                (
                    f"the trainer's log-probs of the sampled tokens differ from the sampler's by {gap:.3f} nats per "
                    f"token on average (max {m.get('logprob_gap_max', gap):.2f}) for the same weights; "
                    "check model.dtype, "
                    "the tokenizer and chat template, and position ids of padded batches."
                ),
            )
        )
    clip = m.get("clipfrac", 0.0)
    if clip >= s.limits.clip_frac:
        out.append(
            Finding(
                "clipping",
                (
                    f"{clip:.0%} of trained tokens were clipped: the policy moves too far per iteration; lower "
                    f"train.lr (now {s.lr:g}) or train.epochs."
                ),
            )
        )
    skipped = int(m.get("skipped_steps", 0))
    if skipped > 0:
        out.append(
            Finding(
                "skipped_steps",
                (
                    f"{skipped} optimizer step(s) were skipped for a non-finite loss or gradient (NaN rewards or "
                    "advantages, an overflow); the flow log names the cause."
                ),
            )
        )
    stale = stale_update(m, s, explained=any(f.code == "no_signal" for f in out))
    if stale is not None:
        out.append(stale)
    entropy, start = m.get("entropy"), (first or {}).get("entropy")
    if entropy is not None and start and start > 0 and entropy < s.limits.entropy_ratio * start:
        out.append(
            Finding(
                "entropy_collapse",
                (
                    f"token entropy fell to {entropy:.3g} nats from {start:.3g} in the first iteration: the policy is "
                    f"collapsing onto few outputs. Consider train.clip_eps_high (clip-higher, DAPO uses 0.28), "
                    f"train.entropy_coef, or a lower train.lr (now {s.lr:g})."
                ),
            )
        )
    return out


def stale_update(m: Mapping[str, float], s: Settings, explained: bool = False) -> Finding | None:
    """A finding when the share of trained-weight entries the iteration changed, `frac_master_changed`
    (changed entries / all entries of the trained float32 parameters, measured by the trainer), is below
    s.limits.stale_update_frac. Nothing when the metric is absent, no optimizer step ran (skipped_steps
    says why) or `explained` (no_signal fired: an update without signal is meant to change nothing)."""
    changed = m.get("frac_master_changed")
    if changed is None or explained or m.get("optimizer_steps", 1.0) == 0 or changed >= s.limits.stale_update_frac:
        return None
    return Finding(
        "stale_update",
        (
            f"this iteration's optimizer steps changed only {changed:.1%} of the trained weights' entries "
            f"(health.stale_update_frac={s.limits.stale_update_frac:g}): most of the update was lost. Weights "
            "updated in bf16 round away steps below their precision (segflow trains float32 master weights; "
            f"check custom trainer code), or the step is below float32's: raise train.lr (now {s.lr:g}). Also "
            "check frac_tokens_trained: a probability mask that keeps almost no token leaves most weights alone."
        ),
    )


def eval_regression(start: float, now: float, problems: int, s: Settings) -> list[Finding]:
    """A finding when held-out accuracy `now` is below `start` by more than s.limits.eval_drop_std standard
    deviations of the difference of two independent accuracies over `problems` problems, at their mean
    rate. Both evaluations use the same problems, which makes the bound conservative."""
    if problems <= 0 or now >= start:
        return []
    p = (start + now) / 2
    sd = math.sqrt(2 * p * (1 - p) / problems)
    if start - now <= s.limits.eval_drop_std * sd:
        return []
    return [
        Finding(
            "eval_regression",
            (
                f"held-out accuracy fell to {now:.1%} from {start:.1%} at the start ({100 * (start - now):.1f} points; "
                f"the noise std over {problems} problems is ~{100 * sd:.1f}): RL is making the model worse. "
                f"Try a lower train.lr (now {s.lr:g}) and check the reward on a few responses (`segflow grade`)."
            ),
        )
    ]


def record(health: dict[str, dict], findings: list[Finding], iteration: int) -> list[Finding]:
    """Add `findings` of `iteration` to `health` ({code: {"first_message", "iterations"}}, summary.json's
    shape). Returns the findings seen for the first time (the ones worth logging)."""
    new = []
    for f in findings:
        entry = health.setdefault(f.code, {"first_message": f.message, "iterations": []})
        if not entry["iterations"]:
            new.append(f)
        entry["iterations"].append(iteration)
    return new
