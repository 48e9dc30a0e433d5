"""What decides how engines start and where they run, without starting one: sleep mode, config drift across
transformers releases, placement of shards and training processes, evaluation defaults (issue 29)."""

import json

import pytest
import yaml
from pydantic import ValidationError

from configs.loader import ConfigError, resolve
from configs.schema import RolloutSection, TrainSection
from tasks.engines.base import resolve_sleep
from tasks.engines.live import same_architecture
from tasks.placement import check_placement, check_processes, check_shards, gpus_needed
from tests.hub_models import QWEN_CONFIG, resave, small_hub_model

# --- rollout.sleep_mode ------------------------------------------------------------------------------------


def test_sleep_mode_accepts_auto_and_booleans_and_rejects_anything_else():
    assert RolloutSection().sleep_mode == "auto"
    assert resolve("default", overrides=["rollout.sleep_mode=false"]).rollout.sleep_mode is False
    assert resolve("default", overrides=["rollout.sleep_mode=on"]).rollout.sleep_mode is True  # YAML's on/off
    with pytest.raises(ConfigError, match="rollout.sleep_mode"):
        resolve("default", overrides=["rollout.sleep_mode=sometimes"])


def test_sleep_mode_resolution_by_platform():
    assert resolve_sleep("auto", can_sleep=True) is True
    assert resolve_sleep("auto", can_sleep=False) is False  # CPU: no effect
    assert resolve_sleep(False, can_sleep=True) is False
    assert resolve_sleep(True, can_sleep=True) is True
    with pytest.raises(ValueError, match="rollout.sleep_mode=true, but this engine cannot sleep"):
        resolve_sleep(True, can_sleep=False)


def test_sleep_mode_resolves_off_for_this_cpu_engine():
    import torch
    from vllm.platforms import current_platform

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the engine can sleep here")
    assert not current_platform.is_sleep_mode_available()  # what VLLMEngine asks; enable_sleep_mode stays unset
    assert resolve_sleep(RolloutSection().sleep_mode, current_platform.is_sleep_mode_available()) is False


class _Engine:
    """Stands in for the live engine: records the calls the flow makes around training."""

    def __init__(self, log, sleeps=True):
        self.log, self.sleeps = log, sleeps

    def sleep(self):
        self.log.append("sleep")
        return self.sleeps

    def wake_up(self):
        self.log.append("wake_up")


def test_train_stage_sleeps_the_engine_then_wakes_it(monkeypatch):
    import tasks.engines.live
    from flows.rl_train import train_stage

    log = []
    monkeypatch.setattr(tasks.engines.live, "_ENGINE", _Engine(log))

    def stage(name, fn, **kwargs):
        log.append(name)
        return "trained"

    assert train_stage(stage, "start", "policy", "samples", 1) == "trained"
    assert log == ["sleep", "train_policy", "wake_up"]


def test_train_stage_wakes_the_engine_when_training_fails(monkeypatch):
    import tasks.engines.live
    from flows.rl_train import train_stage

    log = []
    monkeypatch.setattr(tasks.engines.live, "_ENGINE", _Engine(log))

    def stage(name, fn, **kwargs):
        log.append(name)
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        train_stage(stage, "start", "policy", "samples", 1)
    assert log == ["sleep", "train_policy", "wake_up"]


def test_train_stage_leaves_an_engine_that_did_not_sleep_alone(monkeypatch):
    import tasks.engines.live
    from flows.rl_train import train_stage

    log = []
    monkeypatch.setattr(tasks.engines.live, "_ENGINE", _Engine(log, sleeps=False))
    train_stage(lambda name, fn, **kw: log.append(name), "start", "policy", "samples", 1)
    assert log == ["sleep", "train_policy"]  # asked, said no (sleep_mode off or CPU): no wake_up
    monkeypatch.setattr(tasks.engines.live, "_ENGINE", None)
    train_stage(
        lambda name, fn, **kw: log.append(name), "start", "policy", "samples", 1
    )  # no engine yet (a cached rerun): nothing to do
    assert log == ["sleep", "train_policy", "train_policy"]


def test_hf_engine_sleeps_only_when_told(tiny_model_dir):
    from tasks.engines.hf_engine import HFEngine

    awake = HFEngine(str(tiny_model_dir))
    assert awake.sleep() is False and awake.compatible(RolloutSection(backend="hf"), "float32")
    sleeper = HFEngine(str(tiny_model_dir), sleeps=True)
    assert sleeper.sleep() is True and next(sleeper.model.parameters()).device.type == "cpu"
    sleeper.wake_up()
    assert next(sleeper.model.parameters()).device.type == "cpu"  # its device here
    with pytest.raises(ValueError, match="cannot sleep"):  # sleep_mode=true on a CPU engine
        awake.compatible(RolloutSection(backend="hf", sleep_mode=True), "float32")


# --- config drift: transformers 4 hub configs re-saved by transformers 5 --------------------------------------


def test_qwen25_hub_config_resaved_by_transformers_5_needs_no_new_engine(tmp_path):
    from transformers import AutoConfig

    src = QWEN_CONFIG.parent
    AutoConfig.from_pretrained(src).save_pretrained(tmp_path / "resaved")
    old, new = (json.loads((d / "config.json").read_text()) for d in (src, tmp_path / "resaved"))
    # the files really differ in the ways that used to rebuild the engine ...
    assert old["rope_theta"] == 1e6 and "rope_theta" not in new and new["rope_parameters"]["rope_theta"] == 1e6
    assert old["sliding_window"] == 32768 and new["sliding_window"] is None and "layer_types" in new
    # ... and the engine-shaping config they describe is the same
    assert same_architecture(src, tmp_path / "resaved")
    # a real difference still needs a new engine
    for key, value in (("num_hidden_layers", 23), ("rope_theta", 10000.0), ("tie_word_embeddings", False)):
        d = tmp_path / key
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**old, key: value}))
        assert not same_architecture(src, d), key


def test_small_hub_model_saved_as_segflow_saves_checkpoints_keeps_its_engine(tmp_path):
    src = small_hub_model(tmp_path / "hub")
    first = resave(src, tmp_path / "ckpt1", noise=0.1, seed=1)
    second = resave(first, tmp_path / "ckpt2", noise=0.1, seed=2)
    assert "rope_theta" in json.loads((src / "config.json").read_text())
    assert "rope_parameters" in json.loads((first / "config.json").read_text())
    assert same_architecture(src, first) and same_architecture(src, second)


def test_unreadable_model_type_is_compared_as_written(tmp_path):
    for name, layers in (("a", 2), ("b", 2), ("c", 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "not-a-model", "layers": layers}))
    assert same_architecture(tmp_path / "a", tmp_path / "b")
    assert not same_architecture(tmp_path / "a", tmp_path / "c")


# --- placement: shards and training processes against the visible GPUs ---------------------------------------


def test_gpus_needed_packs_fractions_whole_per_gpu():
    assert gpus_needed(2, 0.0) == 0
    assert gpus_needed(2, 1.0) == 2
    assert gpus_needed(2, 2.0) == 4
    assert gpus_needed(2, 0.5) == 1
    assert gpus_needed(3, 0.4) == 2  # two 0.4-actors fit a GPU, a third needs another
    assert gpus_needed(3, 1 / 3) == 1


def test_two_shards_on_one_gpu_fail_at_once_naming_the_keys():
    with pytest.raises(
        ValueError,
        match=r"rollout.shards=2 .* rollout.shard_gpus=1 GPU each need 2 GPU\(s\), but "
        r"this machine has 1 visible",
    ):
        check_shards(RolloutSection(shards=2), gpus=1)
    check_shards(RolloutSection(shards=2, shard_gpus=0.5, gpu_memory_utilization=0.4), gpus=1)  # they share it
    check_shards(RolloutSection(shards=2), gpus=2)
    check_shards(RolloutSection(shards=2), gpus=0)  # CPU-only: CPU actors, as tests/test_ray_shards.py runs them
    check_shards(RolloutSection(shards=4, ray_address="auto"), gpus=1)  # a cluster's GPUs are its own
    with pytest.raises(ValueError, match="need 2 GPU"):
        check_shards(RolloutSection(shards=3, shard_gpus=0.5, gpu_memory_utilization=0.3), gpus=1)
    with pytest.raises(ValueError, match="need 1 GPU"):
        check_shards(RolloutSection(shards=2, shard_gpus=0.5, gpu_memory_utilization=0.3), gpus=0)


def test_shards_sharing_a_gpu_must_fit_their_utilisation():
    with pytest.raises(
        ValidationError,
        match=r"puts 2 engines on one GPU, each taking "
        r"rollout.gpu_memory_utilization=0.5 of it \(1 in all\)",
    ):
        RolloutSection(shards=2, shard_gpus=0.5)
    RolloutSection(shards=2, shard_gpus=0.5, gpu_memory_utilization=0.45)
    RolloutSection(shards=1, shard_gpus=0.5)  # one engine: in-process, shard keys unused
    with pytest.raises(ValidationError, match="whole GPUs only"):
        RolloutSection(shards=2, shard_gpus=1.5)


def test_more_training_processes_than_gpus_fail_naming_the_key():
    with pytest.raises(
        ValueError,
        match=r"train.processes=2 needs one GPU per process on CUDA, but 1 GPU\(s\) are "
        r"visible: set train.processes to at most 1",
    ):
        check_processes(TrainSection(processes=2), "auto", gpus=1)
    with pytest.raises(ValueError, match="train.processes=2"):
        check_processes(TrainSection(processes=2), "cuda", gpus=0)
    check_processes(TrainSection(processes=2), "auto", gpus=2)
    check_processes(TrainSection(processes=2), "auto", gpus=0)  # CPU: gloo processes
    check_processes(TrainSection(processes=4), "cpu", gpus=1)
    cfg = resolve("default", overrides=["train.processes=2", "rollout.shards=2"])
    check_placement(cfg, gpus=2)
    with pytest.raises(ValueError, match="rollout.shards=2"):
        check_placement(cfg, gpus=1)


def test_sharded_engine_on_too_few_gpus_fails_before_ray_starts(monkeypatch, tiny_model_dir):
    import ray

    import tasks.engines.ray_engine
    from tasks.engines.ray_engine import ShardedEngine

    if ray.is_initialized():
        pytest.skip("Ray already runs in this process")
    monkeypatch.setattr(tasks.engines.ray_engine, "visible_gpus", lambda: 1)
    with pytest.raises(ValueError, match="rollout.shards=2 engine actors"):
        ShardedEngine(str(tiny_model_dir), RolloutSection(shards=2), "float32", 0)
    assert not ray.is_initialized()


# --- segflow eval defaults -----------------------------------------------------------------------------------


def _model(d, max_positions=131072):
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"max_position_embeddings": max_positions}))
    return d


def test_eval_budget_defaults_to_the_runs_context_then_to_4096(tmp_path):
    from flows.evaluate import DEFAULT_BUDGET, default_budget

    run = tmp_path / "runs" / "r1"
    ckpt = _model(run / "checkpoints" / "0003")
    warm = _model(run / "models" / "warm_start", max_positions=128)
    (run / "config.yaml").write_text(yaml.safe_dump({"rollout": {"max_model_len": 2048}}))
    assert default_budget(ckpt) == 2048  # the run's rollout.max_model_len, not 131,072
    assert default_budget(warm) == 128  # never beyond the model
    assert DEFAULT_BUDGET == 4096
    assert default_budget(_model(tmp_path / "hub" / "r1-distill")) == 4096
    assert default_budget(_model(tmp_path / "small", max_positions=1024)) == 1024
    assert default_budget(_model(tmp_path / "checkpoints" / "7")) == 4096  # a "checkpoints" folder outside a run


def test_eval_engine_uses_cuda_graphs_on_gpu_and_eager_on_cpu(monkeypatch):
    import torch

    from flows.evaluate import EvalSpec, eval_rollout

    spec = EvalSpec(checkpoints=("m",))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = eval_rollout(spec, 2048)
    assert cpu.enforce_eager is True and cpu.max_model_len == 2048 and cpu.sleep_mode is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_rollout(spec, 2048).enforce_eager is False
