"""The process's one live rollout engine. Tasks ask for it lazily, so a fully cached rerun never starts it; a
stage whose rollout settings the live engine cannot serve by a weight reload gets a new one (tasks/engines/registry.py
picks its class). Also the helpers every stage uses on it: prefix continuations, sleeping around training.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from configs.schema import RolloutSection
from tasks.engines.base import Completion, Engine, Request
from tasks.engines.registry import build_engine, engine_class_for

_ENGINE: Engine | None = None


# config.json keys that differ between checkpoints of one architecture without changing its shapes.
_NON_ARCHITECTURE_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}


def architecture(d: str | Path) -> dict:
    """The config that shapes an engine for model directory `d`: config.json as transformers reads it (the way
    vLLM reads it too), less the keys that differ between checkpoints of one architecture. Reading through
    transformers normalises spellings that change between its releases: a hub config.json written by
    transformers 4 (`rope_theta`, `sliding_window: 32768` with `use_sliding_window: false`) and the same
    config re-saved by transformers 5 (`rope_parameters`, `layer_types`, `sliding_window: null`) read alike.
    A config transformers cannot read (an unknown model_type) is compared as written."""
    import json

    f = Path(d) / "config.json"
    if not f.exists():
        return {}
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(d), trust_remote_code=False).to_dict()
    except (ValueError, KeyError, OSError):
        cfg = json.loads(f.read_text())
    return {k: v for k, v in cfg.items() if k not in _NON_ARCHITECTURE_KEYS}


def same_architecture(a: str | Path, b: str | Path) -> bool:
    """Can the weights of model directory `b` be loaded into an engine built for `a`? (`architecture` alike)."""
    return str(a) == str(b) or architecture(a) == architecture(b)


def reusable(engine: Engine, model_dir: str | Path, cfg: RolloutSection, dtype: str) -> bool:
    """Can `engine` serve `cfg` with `model_dir`'s weights by a reload alone: the class the registry picks for
    `cfg` (backend, shards), started with the same settings, for the same architecture."""
    return (
        type(engine) is engine_class_for(cfg)
        and engine.compatible(cfg, dtype)
        and same_architecture(engine.model_dir, model_dir)
    )


def get_engine(model_dir: str | Path, cfg: RolloutSection, dtype: str, seed: int) -> tuple[Engine, dict]:
    """The live engine with `model_dir`'s weights loaded, starting it on first use.

    Returns (engine, timings) with `engine_start_seconds` (0 unless started by this call) and
    `weight_load_seconds` (0 when the weights were already loaded).
    """
    global _ENGINE
    if _ENGINE is not None and not reusable(_ENGINE, model_dir, cfg, dtype):
        shutdown_engine()  # a different context length or model: a new engine, not a weight reload
    if _ENGINE is None:
        _ENGINE = build_engine(str(model_dir), cfg, dtype, seed)
        return _ENGINE, {"engine_start_seconds": _ENGINE.start_seconds, "weight_load_seconds": 0.0}
    load = _ENGINE.load_weights(model_dir)
    return _ENGINE, {"engine_start_seconds": 0.0, "weight_load_seconds": load}


def continue_prefixes(
    engine: Engine,
    prefixes: Sequence[Sequence[int]],
    n: int,
    *,
    seed_key: Sequence[object],
    max_tokens: int | Sequence[int],
    temperature: float,
    top_p: float,
    stop: Sequence[str] = (),
    max_model_len: int | None = None,
    prefix_keys: Sequence[object] | None = None,
    first_sample: int = 0,
) -> list[list[Completion]]:
    """`n` continuations of each token-id prefix (SPO's Monte Carlo values and tree levels use this).

    Seeds derive from (*seed_key, prefix key, j), the prefix key being its index unless `prefix_keys`
    names each prefix (then a prefix's samples do not depend on what else is in the batch), and j running
    from `first_sample` (a later call can add samples j >= n to a prefix without repeating 0..n-1).
    `max_tokens` is one budget or one per prefix; a prefix's budget is also capped at
    max_model_len - len(prefix). On vLLM, requests that share a prefix reuse its KV blocks through
    the prefix cache, so n samples cost one prefill. Returns one list of `n` completions per prefix.
    """
    from tasks.algos.seeding import derive_seed

    budgets = [max_tokens] * len(prefixes) if isinstance(max_tokens, int) else list(max_tokens)
    keys = list(range(len(prefixes))) if prefix_keys is None else list(prefix_keys)
    requests = []
    for i, (p, cap) in enumerate(zip(prefixes, budgets)):
        budget = cap if max_model_len is None else min(cap, max_model_len - len(p))
        if budget < 1:
            raise ValueError(f"prefix {i} has {len(p)} tokens: no room left under max_model_len={max_model_len}")
        requests += [
            Request(list(p), derive_seed(*seed_key, keys[i], j), budget) for j in range(first_sample, first_sample + n)
        ]
    outs = engine.generate(requests, temperature=temperature, top_p=top_p, stop=stop, progress=False)
    return [outs[i * n : (i + 1) * n] for i in range(len(prefixes))]


def current_engine() -> Engine | None:
    return _ENGINE


@contextmanager
def engine_asleep():
    """Around a stage that needs the GPU's memory (training): the live engine sleeps if rollout.sleep_mode
    resolved on for it, and wakes afterwards, also when the stage fails. No engine, or one that does not
    sleep: nothing happens."""
    engine = _ENGINE
    slept = engine is not None and engine.sleep()
    try:
        yield
    finally:
        if slept:
            engine.wake_up()


def shutdown_engine() -> None:
    global _ENGINE
    if _ENGINE is not None:
        _ENGINE.shutdown()
        _ENGINE = None
