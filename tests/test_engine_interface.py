"""The engine interface (tasks/engines/base.py): every registered engine class offers what consumers call, the
registry imports no engine, and each engine names its own log-prob convention in the rollout rows."""

import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from configs.schema import RolloutSection
from tasks.engines.base import Completion, Engine
from tasks.engines.registry import (
    ENGINES,
    SHARDED,
    _load,
    engine_class,
    engine_class_for,
)

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {**ENGINES, "sharded": SHARDED}
# What consumers use (flows/, tasks/, tests/): written out here so the Protocol cannot silently lose one.
METHODS = {"from_config", "compatible", "load_weights", "generate", "sleep", "wake_up", "shutdown"}
ATTRIBUTES = {"model_dir", "start_seconds", "loaded", "reloads", "logprobs_mode", "replicas"}


def _protocol_members():
    methods = {
        n
        for n, v in vars(Engine).items()
        if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, classmethod))
    }
    return methods, set(Engine.__annotations__)


def _params(fn):
    """(name, kind, default) of each parameter: annotations may be narrower spellings of the same types."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _annotated(cls) -> set[str]:
    return {n for k in cls.__mro__ for n in getattr(k, "__annotations__", {})}


def test_protocol_declares_every_member_consumers_use():
    methods, attributes = _protocol_members()
    assert methods == METHODS
    assert attributes == ATTRIBUTES


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_registered_engine_class_satisfies_the_protocol(name):
    cls = _load(CLASSES[name])
    for m in sorted(METHODS):
        want, have = inspect.getattr_static(Engine, m), inspect.getattr_static(cls, m, None)
        assert have is not None, f"{cls.__name__} lacks {m}"
        assert isinstance(have, classmethod) == isinstance(want, classmethod), f"{cls.__name__}.{m}: classmethod?"
        assert _params(getattr(cls, m)) == _params(getattr(Engine, m)), f"{cls.__name__}.{m} signature"
    for a in sorted(ATTRIBUTES):
        assert a in _annotated(cls) or hasattr(cls, a), f"{cls.__name__} lacks attribute {a}"


def test_importing_the_registry_imports_no_engine():
    code = (
        "import sys, json\nimport tasks.engines, tasks.engines.registry, tasks.engines.live\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'ray', 'tasks'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    engines = {t.split(":")[0] for t in CLASSES.values()}
    assert engines == {"tasks.engines.vllm_engine", "tasks.engines.hf_engine", "tasks.engines.ray_engine"}
    assert not loaded & engines
    assert not {m for m in loaded if m.split(".")[0] in ("vllm", "ray")}


def test_registry_names_every_backend_the_config_accepts():
    accepted = typing.get_args(RolloutSection.model_fields["backend"].annotation)
    assert set(accepted) == set(ENGINES)
    with pytest.raises(ValueError, match=r"rollout.backend='sglang' names no engine; known: hf, vllm"):
        engine_class("sglang")


def test_registry_picks_the_sharded_engine_for_several_shards_whatever_the_backend():
    assert engine_class_for(RolloutSection()).__name__ == "VLLMEngine"
    assert engine_class_for(RolloutSection(backend="hf")).__name__ == "HFEngine"
    assert engine_class_for(RolloutSection(shards=2)).__name__ == "ShardedEngine"
    assert engine_class_for(RolloutSection(backend="hf", shards=2)).__name__ == "ShardedEngine"


def test_each_engine_names_its_own_logprobs_mode():
    # The vLLM value is what storage/schemas.py documents and every existing run directory holds.
    assert engine_class("vllm").logprobs_mode == "processed_logprobs"
    assert engine_class("hf").logprobs_mode == "hf_processed_scores"


def _unstarted_vllm(model_dir, dtype="float32"):
    """A VLLMEngine's state without starting vLLM: enough for compatible()."""
    e = object.__new__(engine_class("vllm"))
    e.__dict__.update(model_dir=str(model_dir), cfg=RolloutSection(), dtype=dtype, can_sleep=False, sleeps=False)
    return e


def test_live_engine_is_reused_only_for_its_own_class_and_settings(tiny_model_dir):
    from tasks.engines.live import reusable

    e = _unstarted_vllm(tiny_model_dir)
    assert reusable(e, tiny_model_dir, RolloutSection(temperature=0.5), "float32")  # sampling settings: per call
    assert not reusable(e, tiny_model_dir, RolloutSection(backend="hf"), "float32")  # another backend's class
    assert not reusable(e, tiny_model_dir, RolloutSection(shards=2), "float32")  # Ray actors
    assert not reusable(e, tiny_model_dir, RolloutSection(max_model_len=256), "float32")  # the engine's shape
    assert not reusable(e, tiny_model_dir, RolloutSection(), "bfloat16")


def test_rollout_rows_record_the_serving_engines_logprobs_mode(tmp_path, monkeypatch):
    import tasks.rollout as rollout_mod
    from configs.loader import resolve, run_id
    from storage.handles import FileRef
    from storage.layout import RunLayout
    from storage.parquet import write_parquet
    from storage.schemas import PROMPTS

    class HFLikeEngine:
        logprobs_mode, replicas = "hf_processed_scores", 1

        def generate(self, requests, *, temperature, top_p, stop=(), progress=True):
            return [Completion([7, 8], [-0.5, -0.25], "stop", "x") for _ in requests]

    prompts = tmp_path / "train.parquet"
    write_parquet(
        [
            {
                "run_id": "x",
                "split": "train",
                "prompt_id": f"q{i}",
                "question": "1+2",
                "reference": "3",
                "solution": "",
                "prompt_text": "1+2",
                "prompt_token_ids": [5, 6],
            }
            for i in range(4)
        ],
        PROMPTS,
        prompts,
    )
    cfg = resolve("default", overrides=["rollout.prompts_per_iteration=2", "rollout.samples_per_prompt=3"])
    monkeypatch.setattr(rollout_mod, "get_engine", lambda *a, **k: (HFLikeEngine(), {}))
    layout = RunLayout(runs_dir=str(tmp_path / "runs"), run_id=run_id(cfg))
    out = rollout_mod.generate_rollouts.fn(cfg, layout, FileRef.of(prompts), 0, FileRef.of(prompts), 1, "v")
    rows = pq.read_table(out.artifact.path).to_pylist()
    assert len(rows) == 6 and {r["logprobs_mode"] for r in rows} == {"hf_processed_scores"}


def test_vllm_env_defaults_fill_only_what_the_environment_lacks(monkeypatch):
    from tasks.engines.vllm_engine import vllm_env_defaults

    for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CONFIGURE_LOGGING", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(k, raising=False)
    vllm_env_defaults()  # the CLI's call: no KV-cache size yet, the engine sets it from rollout.kv_cache_gib
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["VLLM_CONFIGURE_LOGGING"] == "0"
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    vllm_env_defaults(kv_cache_gib=2.6)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"  # whole GiB
    vllm_env_defaults(kv_cache_gib=8)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"  # a value already set (by the user, or first) wins
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    vllm_env_defaults(kv_cache_gib=0.25)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"  # never 0 (vLLM's own default would apply)


SETS_VLLM_ENV = re.compile(r'environ\.setdefault\(\s*"VLLM_|environ\[\s*"VLLM_\w+"\s*\]\s*=[^=]')


def test_vllm_environment_is_set_in_the_vllm_engine_file_alone():
    setters = []
    for d in ("flows", "tasks", "bench", "tests", "storage", "configs"):
        for f in sorted((ROOT / d).rglob("*.py")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if SETS_VLLM_ENV.search(line):
                    setters.append(f"{f.relative_to(ROOT)}:{n}")
    assert setters and all(s.startswith("tasks/engines/vllm_engine.py:") for s in setters), setters
