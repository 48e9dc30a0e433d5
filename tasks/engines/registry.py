"""rollout.backend name -> engine class, as "module:Class" strings: looking a backend up imports its module
then, so importing the registry imports no engine (nor vLLM, transformers or Ray). rollout.shards > 1 runs
the backend's engine on Ray actors (tasks/engines/ray_engine.py) whatever the backend."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from configs.schema import RolloutSection
    from tasks.engines.base import Engine

ENGINES: dict[str, str] = {
    "vllm": "tasks.engines.vllm_engine:VLLMEngine",
    "hf": "tasks.engines.hf_engine:HFEngine",
}
SHARDED = "tasks.engines.ray_engine:ShardedEngine"


def _load(target: str) -> type[Engine]:
    module, name = target.split(":")
    return getattr(import_module(module), name)


def engine_class(backend: str) -> type[Engine]:
    """The in-process engine class of rollout.backend `backend`."""
    if backend not in ENGINES:
        raise ValueError(f"rollout.backend={backend!r} names no engine; known: {', '.join(sorted(ENGINES))}")
    return _load(ENGINES[backend])


def engine_class_for(cfg: RolloutSection) -> type[Engine]:
    """The class that serves rollout section `cfg`: the sharded engine when rollout.shards > 1, else the backend's."""
    return _load(SHARDED) if cfg.shards > 1 else engine_class(cfg.backend)


def build_engine(model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> Engine:
    """A new, started engine for `cfg` with `model_dir`'s weights."""
    return engine_class_for(cfg).from_config(model_dir, cfg, dtype, seed)
