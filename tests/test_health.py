"""Training health checks (tasks/algos/health.py) and how the flow reports them."""

from __future__ import annotations

import pytest

from configs.loader import ConfigError, resolve, run_id
from configs.schema import HEALTH_FINDINGS
from flows.rl_train import health_settings, summary_markdown
from tasks.algos.health import Settings, diagnose, eval_regression, record

LIMITS = health_settings(resolve("default")).limits  # the config's defaults (configs/schema.HealthSection)
S = Settings(
    samples_per_prompt=16, temperature=1.0, max_tokens=48, truncated_reward=-0.5, lr=2e-5, task="gsm8k", limits=LIMITS
)

# An iteration of the embedded default as measured (grade, advantage and train metrics).
HEALTHY = {
    "accuracy": 0.5,
    "frac_groups_any_correct": 0.9,
    "frac_zero_std_groups": 0.44,
    "frac_adv_zero": 0.44,
    "frac_truncated": 0.0,
    "frac_no_answer": 0.0,
    "frac_parse_error": 0.0,
    "logprob_gap_mean": 1e-5,
    "logprob_gap_max": 1e-4,
    "clipfrac": 0.004,
    "skipped_steps": 0.0,
}


def codes(metrics: dict, settings: Settings = S) -> list[str]:
    return [f.code for f in diagnose(metrics, settings)]


def test_a_healthy_iteration_raises_nothing():
    assert diagnose(HEALTHY, S) == []
    assert diagnose({}, S) == []  # no metric, nothing to judge


@pytest.mark.parametrize(
    "key, limit, code",
    [
        ("frac_adv_zero", "no_signal_frac", "no_signal"),
        ("frac_truncated", "truncated_frac", "truncated"),
        ("frac_no_answer", "unparseable_frac", "unparseable"),
        ("frac_parse_error", "unparseable_frac", "unparseable"),
        ("logprob_gap_mean", "logprob_gap_nats", "logprob_mismatch"),
        ("clipfrac", "clip_frac", "clipping"),
    ],
)
def test_each_check_fires_at_its_threshold_and_not_below(key, limit, code):
    threshold = getattr(LIMITS, limit)
    assert codes({**HEALTHY, key: threshold}) == [code]
    assert codes({**HEALTHY, key: threshold * 0.99}) == []
    # The threshold is the config's health.<limit>: raised above the value, the same metrics pass.
    looser = health_settings(resolve("default", overrides=[f"health.{limit}={min(1.0, threshold * 1.5)}"]))
    assert codes({**HEALTHY, key: threshold}, looser) == []


def test_unparseable_adds_no_answer_and_parse_errors():
    assert codes({**HEALTHY, "frac_no_answer": 0.3, "frac_parse_error": 0.2}) == ["unparseable"]
    assert "gsm8k grader" in diagnose({**HEALTHY, "frac_no_answer": 0.6}, S)[0].message


def test_messages_name_the_config_key_and_its_value():
    (trunc,) = diagnose({**HEALTHY, "frac_truncated": 0.62}, S)
    assert (
        "62%" in trunc.message and "rollout.max_tokens=48" in trunc.message and "reward.truncated=-0.5" in trunc.message
    )
    (clip,) = diagnose({**HEALTHY, "clipfrac": 0.4}, S)
    assert "train.lr (now 2e-05)" in clip.message
    (flat,) = diagnose({**HEALTHY, "frac_adv_zero": 1.0}, S)
    assert "rollout.samples_per_prompt=16" in flat.message and "rollout.temperature (now 1)" in flat.message


@pytest.mark.parametrize(
    "extra, why",
    [
        ({"frac_groups_any_correct": 0.0, "accuracy": 0.0}, "no response in any group was correct"),
        ({"frac_groups_any_correct": 1.0, "accuracy": 1.0}, "every response was correct"),
        ({"frac_groups_any_correct": 0.5, "accuracy": 0.5}, "within every group all rewards were equal"),
    ],
)
def test_no_signal_says_why_the_rewards_carry_no_signal(extra, why):
    (f,) = diagnose({**HEALTHY, "frac_adv_zero": 1.0, **extra}, S)
    assert f.code == "no_signal" and why in f.message


def test_spo_tree_no_signal_is_about_trained_edges_and_its_stale_log_probs_are_expected():
    tree = Settings(**{**S.__dict__, "sampler_is_old_policy": True})
    assert codes({"edges_trained": 0.0, "frac_adv_zero": float("nan")}, tree) == ["no_signal"]
    assert codes({"edges_trained": 12.0, "frac_adv_zero": 1.0}, tree) == []  # buffered edges still train
    assert codes({"edges_trained": 12.0, "logprob_gap_mean": 0.5}, tree) == []  # replayed edges are stale by design
    assert codes({"logprob_gap_mean": 0.5}) == ["logprob_mismatch"]


def test_entropy_collapse_is_measured_against_the_first_iteration():
    ENTROPY_RATIO = LIMITS.entropy_ratio
    first = {**HEALTHY, "entropy": 0.5}
    assert codes({**HEALTHY, "entropy": 0.5 * ENTROPY_RATIO * 0.99}) == []  # no baseline, no trend
    (f,) = diagnose({**HEALTHY, "entropy": 0.5 * ENTROPY_RATIO * 0.99}, S, first)
    assert f.code == "entropy_collapse" and "from 0.5 in the first iteration" in f.message
    assert diagnose({**HEALTHY, "entropy": 0.5 * ENTROPY_RATIO}, S, first) == []
    assert diagnose({**HEALTHY, "entropy": 0.0}, S, {"entropy": 0.0}) == []  # a zero baseline has no trend


def test_eval_regression_fires_beyond_three_noise_std_of_the_difference():
    # 256 problems, start 50%: the difference of two accuracies has std sqrt(2 p (1 - p) / 256).
    def sd(start, now):
        p = (start + now) / 2
        return (2 * p * (1 - p) / 256) ** 0.5

    assert LIMITS.eval_drop_std == 3.0
    assert eval_regression(0.5, 0.38, 256, S) == []  # 12 points < 3 x 4.4
    assert 0.14 > 3 * sd(0.5, 0.36) and 0.12 < 3 * sd(0.5, 0.38)
    (f,) = eval_regression(0.5, 0.36, 256, S)
    assert f.code == "eval_regression" and "fell to 36.0% from 50.0%" in f.message and "256 problems" in f.message
    assert "train.lr (now 2e-05)" in f.message
    assert eval_regression(0.5, 0.9, 256, S) == [] and eval_regression(0.5, 0.5, 256, S) == []
    assert eval_regression(0.5, 0.0, 0, S) == []  # no problems, no evidence
    assert eval_regression(0.5, 0.36, 4096, S)[0].code == "eval_regression"  # more problems, less noise
    assert eval_regression(0.5, 0.45, 4096, S) != [] and eval_regression(0.5, 0.45, 256, S) == []


def test_stale_update_fires_below_its_threshold_unless_nothing_was_meant_to_change():
    limit = LIMITS.stale_update_frac
    assert limit == 0.5
    step = {**HEALTHY, "optimizer_steps": 4.0}
    assert codes({**step, "frac_master_changed": 0.9984}) == []  # float32 master at lr 1e-6 (issue 29)
    assert codes({**step, "frac_master_changed": limit}) == []
    (f,) = diagnose({**step, "frac_master_changed": 0.0056}, S)  # bf16 weights stepped in place (issue 29)
    assert f.code == "stale_update" and f.message.startswith("this iteration's optimizer steps changed only 0.6%")
    assert "train.lr (now 2e-05)" in f.message
    assert codes({**step, "frac_master_changed": 0.0, "optimizer_steps": 0.0, "skipped_steps": 4.0}) == [
        "skipped_steps"
    ]
    assert codes({**step, "frac_master_changed": 0.0, "frac_adv_zero": 1.0}) == ["no_signal"]
    off = Settings(**{**S.__dict__, "limits": type(LIMITS)(**{**LIMITS.__dict__, "stale_update_frac": 0.0})})
    assert codes({**step, "frac_master_changed": 0.0}, off) == []  # health.stale_update_frac=0 turns it off


def test_skipped_steps_are_reported_with_their_count():
    (f,) = diagnose({**HEALTHY, "skipped_steps": 2.0}, S)
    assert f.code == "skipped_steps" and f.message.startswith("2 optimizer step(s)")


def test_record_keeps_every_iteration_and_returns_only_first_sightings():
    health: dict = {}
    flat = diagnose({**HEALTHY, "frac_adv_zero": 1.0}, S)
    assert record(health, flat, 3) == flat
    assert record(health, flat + diagnose({**HEALTHY, "clipfrac": 0.5}, S), 4)[0].code == "clipping"
    assert record(health, flat, 7) == []
    assert health["no_signal"]["iterations"] == [3, 4, 7] and health["clipping"]["iterations"] == [4]
    assert health["no_signal"]["first_message"] == flat[0].message


def test_flow_settings_come_from_the_config_and_the_summary_lists_findings():
    cfg = resolve("default", overrides=["rollout.max_tokens=64", "reward.truncated=-1", "data.task=arith"])
    s = health_settings(cfg)
    assert (s.max_tokens, s.truncated_reward, s.task, s.sampler_is_old_policy) == (64, -1.0, "arith", False)
    assert health_settings(resolve("spo_tree")).sampler_is_old_policy is (
        resolve("spo_tree").tree.old_logprobs == "generation"
    )
    health: dict = {}
    record(health, diagnose({**HEALTHY, "frac_truncated": 0.9}, s), 2)
    summary = {
        "run_id": "r",
        "preset": "default",
        "estimator": "grpo",
        "iterations_completed": 2,
        "wall_seconds": 1.0,
        "eval_accuracy": {"0": 0.5},
        "stage_seconds": {"grade": 1.0},
        "health": health,
    }
    md = summary_markdown(summary)
    assert "## Health checks" in md and "| truncated | 2 |" in md and "rollout.max_tokens=64" in md
    assert "Health checks" not in summary_markdown({**summary, "health": {}})


def test_health_keys_are_execution_keys_and_fail_on_names_known_findings():
    tuned = resolve("default", overrides=["health.clip_frac=0.5", "health.fail_on=[no_signal,logprob_mismatch]"])
    assert tuned.health.fail_on == ("no_signal", "logprob_mismatch")
    assert run_id(tuned) == run_id(resolve("default"))  # thresholds judge stored metrics: same run, same cache
    with pytest.raises(ConfigError, match=r"health.fail_on.*'no_sigal'.*no_signal, truncated"):
        resolve("default", overrides=["health.fail_on=[no_sigal]"])


def test_every_code_diagnose_can_raise_is_a_registered_finding():
    tree = Settings(**{**S.__dict__, "sampler_is_old_policy": True})
    seen = {
        f.code
        for f in diagnose(
            {
                **HEALTHY,
                "frac_adv_zero": 1.0,
                "frac_truncated": 1.0,
                "frac_no_answer": 1.0,
                "logprob_gap_mean": 1.0,
                "clipfrac": 1.0,
                "skipped_steps": 1.0,
                "entropy": 0.0,
            },
            S,
            {"entropy": 1.0},
        )
    }
    seen |= {f.code for f in diagnose({"edges_trained": 0.0}, tree)} | {
        f.code for f in eval_regression(0.9, 0.1, 256, S)
    }
    seen |= {f.code for f in diagnose({"frac_master_changed": 0.0, "optimizer_steps": 1.0}, S)}
    assert seen == set(HEALTH_FINDINGS)
