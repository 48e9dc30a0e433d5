"""The fallback rollout backend (rollout.backend=hf): Hugging Face `generate`, the engine interface of
tasks/engines/base.py.

Used where vLLM is unavailable and as the baseline of bench/rollout_throughput.py. Requests are
batched (left-padded); each batch is seeded from its requests' seeds, so the same requests in the
same order give the same completions. Log-probs are log_softmax of `generate`'s `output_scores`: the
logits after its temperature and top-p warpers (raw logits when greedy). That follows the convention of
vLLM's `processed_logprobs` but is computed by other code, so rollout rows name it apart (`LOGPROBS_MODE`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from configs.schema import RolloutSection
from tasks.algos.seeding import derive_seed
from tasks.engines.base import (
    Completion,
    Request,
    release_cached_gpu_memory,
    reload_in_place,
    resolve_sleep,
)

LOGPROBS_MODE = "hf_processed_scores"  # log_softmax of transformers generate's processed scores


@dataclass
class HFEngine:
    model_dir: str
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 64
    sleeps: bool = False  # rollout.sleep_mode resolved: park the model in host memory while the trainer runs
    start_seconds: float = 0.0
    loaded: str = ""
    reloads: list[float] = field(default_factory=list)
    logprobs_mode: ClassVar[str] = LOGPROBS_MODE
    replicas: ClassVar[int] = 1

    @classmethod
    def from_config(cls, model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> HFEngine:
        """On CUDA when there is one, else CPU; `seed` is unused (every request carries its own)."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model_dir, dtype=dtype, device=device, sleeps=resolve_sleep(cfg.sleep_mode, device == "cuda"))

    def __post_init__(self) -> None:
        from tasks.tokens import load_tokenizer

        t0 = time.perf_counter()
        self.tokenizer = load_tokenizer(self.model_dir)
        self._load(self.model_dir)
        self.start_seconds = time.perf_counter() - t0

    def _load(self, model_dir: str) -> None:
        from transformers import AutoModelForCausalLM

        dt = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt, use_safetensors=True, trust_remote_code=False)
            .to(self.device)
            .eval()
        )
        self.loaded = model_dir

    def load_weights(self, model_dir) -> float:
        return reload_in_place(self, model_dir, self._load)

    def generate(
        self,
        requests: Sequence[Request],
        *,
        temperature: float,
        top_p: float,
        stop: Sequence[str] = (),
        progress: bool = True,
    ) -> list[Completion]:
        out: list[Completion] = []
        for s in range(0, len(requests), self.batch_size):
            out += self._batch(requests[s : s + self.batch_size], temperature, top_p, stop)
        return out

    @torch.no_grad()
    def _batch(
        self, reqs: Sequence[Request], temperature: float, top_p: float, stop: Sequence[str]
    ) -> list[Completion]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(r.prompt_token_ids) for r in reqs)
        ids = torch.full((len(reqs), width), pad, dtype=torch.long)
        att = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
            att[i, width - len(r.prompt_token_ids) :] = 1
        greedy = temperature == 0.0
        torch.manual_seed(derive_seed("hf-batch", *[r.seed for r in reqs]))
        sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
        gen = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=att.to(self.device),
            do_sample=not greedy,
            **sampling,
            max_new_tokens=max(r.max_tokens for r in reqs),
            eos_token_id=tok.eos_token_id,
            pad_token_id=pad,
            output_scores=True,
            return_dict_in_generate=True,
            stop_strings=list(stop) or None,
            tokenizer=tok if stop else None,
        )
        new = gen.sequences[:, width:].cpu()
        logp = torch.stack([torch.log_softmax(s.float(), -1) for s in gen.scores], 1).cpu()  # [B, T, V]
        out = []
        for i, r in enumerate(reqs):
            toks, lps, reason = [], [], "length"
            for t in range(min(new.shape[1], r.max_tokens)):
                tid = int(new[i, t])
                toks.append(tid)
                lps.append(float(logp[i, t, tid]))
                if tid == tok.eos_token_id:
                    reason = "stop"
                    break
            text = tok.decode(toks, skip_special_tokens=True)
            if reason == "length" and stop and any(text.endswith(s) for s in stop):
                reason = "stop"
            out.append(Completion(toks, lps, reason, text))
        return out

    def compatible(self, cfg: RolloutSection, dtype: str) -> bool:
        return dtype == self.dtype and resolve_sleep(cfg.sleep_mode, self.device == "cuda") == self.sleeps

    def sleep(self) -> bool:
        """Move the model to host memory for training (only when `sleeps`). Returns whether it moved."""
        if not self.sleeps:
            return False
        self.model.to("cpu")
        release_cached_gpu_memory()
        return True

    def wake_up(self) -> None:
        release_cached_gpu_memory()
        self.model.to(self.device)

    def shutdown(self) -> None:
        self.model = None
