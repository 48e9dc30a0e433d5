import pytest
from pydantic import ValidationError

from configs.loader import ConfigError, available_presets, parse_override, resolve, run_id, to_yaml
from configs.schema import Config


def test_defaults_are_the_embedded_default():
    cfg = resolve("default")
    assert cfg.model.name_or_path == "tiny" and cfg.data.task == "arith" and cfg.advantage.estimator == "grpo"


def test_models_are_frozen():
    cfg = Config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.run.seed = 3  # type: ignore[misc]


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'"):
        resolve("default", overrides=["train.lrr=1e-5"])
    with pytest.raises(ConfigError, match=r"unknown key 'bogus'"):
        resolve("default", overrides=["bogus.x=1"])


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"train\.lr=-1"):
        resolve("default", overrides=["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"advantage\.estimator.*'ppo'.*grpo"):
        resolve("default", overrides=["advantage.estimator=ppo"])


def test_cross_field_check():
    with pytest.raises(ConfigError, match="mini_batch_size=100 must be a multiple"):
        resolve("default", overrides=["train.mini_batch_size=100", "train.micro_batch_size=64"])
    # Training Monte Carlo continuations needs an estimator that makes them.
    with pytest.raises(ConfigError, match=r"spo\.mc_train=true .* advantage\.estimator='grpo'"):
        resolve("grpo", overrides=["spo.mc_train=true"])
    assert resolve("spo_chain", overrides=["spo.mc_train=true"]).spo.mc_train
    # Adaptive N's first stage is part of the budget.
    with pytest.raises(ConfigError, match=r"spo\.mc_samples_min=5 exceeds spo\.mc_samples=4"):
        resolve("spo_chain", overrides=["spo.mc_samples_min=5"])
    assert resolve("spo_chain", overrides=["spo.mc_samples_min=2"]).spo.mc_samples_min == 2


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available: .*default"):
        resolve("nope")


def test_override_values_are_typed():
    assert parse_override("train.lr=1e-5") == {"train": {"lr": 1e-5}}
    assert parse_override("rollout.stop=['a', 'b']") == {"rollout": {"stop": ["a", "b"]}}
    assert parse_override("eval.limit=null") == {"eval": {"limit": None}}
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_config_file_then_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  epochs: 3\n")
    cfg = resolve("default", f, ["train.lr=0.002"])
    assert cfg.train.lr == 0.002 and cfg.train.epochs == 3


def test_run_id_is_deterministic_and_config_sensitive():
    a, b = resolve("default"), resolve("default")
    assert run_id(a) == run_id(b) and run_id(a).startswith("default-")
    assert run_id(resolve("default", overrides=["run.seed=1"])) != run_id(a)


def test_resolved_yaml_round_trips():
    import yaml

    cfg = resolve("default", overrides=["train.lr=3e-4"])
    assert Config.model_validate(yaml.safe_load(to_yaml(cfg))) == cfg


@pytest.mark.parametrize("preset", available_presets())
def test_presets_load(preset):
    assert resolve(preset).run.preset == preset


def test_config_reference_doc_is_current():
    from configs.reference import DOC, render

    assert DOC.read_text() == render(), "docs/config.md is stale: run `python -m configs.reference`"


def _leaf_fields(model, prefix=""):
    """(dotted key, FieldInfo) of every non-section field, walking nested sections."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.default, BaseModel):
            yield from _leaf_fields(type(field.default), f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_every_config_field_has_a_description():
    keys = dict(_leaf_fields(Config))
    assert "data.arith.seed" in keys and "train.lr" in keys  # the walk reaches nested sections
    missing = [k for k, f in keys.items() if not (f.description or "").strip()]
    assert missing == [], f"config fields without a description (docs/config.md shows them blank): {missing}"


def test_config_reference_has_no_blank_description_cell():
    from configs.reference import render

    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) == len(dict(_leaf_fields(Config)))
    assert [r for r in rows if r.rstrip().endswith("|  |")] == []


def test_registries_agree_with_the_pure_core():
    from typing import get_args

    from configs import schema
    from tasks.algos import losses, policy_loss
    from tasks.algos.registry import ESTIMATORS

    assert get_args(schema.AdvantageSection.model_fields["estimator"].annotation) == ESTIMATORS
    assert schema.LOSS_AGGREGATIONS == losses.AGGREGATIONS
    assert (schema.CLIP_MODES, schema.TOKEN_WEIGHTS, schema.REGULARIZERS, schema.KL_ESTIMATORS) == (
        policy_loss.CLIP_MODES,
        policy_loss.TOKEN_WEIGHTS,
        policy_loss.REGULARIZERS,
        policy_loss.KL_ESTIMATORS,
    )
