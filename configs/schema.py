"""Every default of segflow lives here.

Presets (configs/presets/*.yaml) and `--set` overrides only hold deltas against these models.
All models are frozen and reject unknown keys, so a typo fails at load time with the key named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.algos.registry import ESTIMATORS, EstimatorSpec, spec_of
from tasks.datasets.registry import TASK_NAMES, spec_of_task

# Registries that configs may name (house rule 3): the loader rejects anything else, listing these.
# ESTIMATORS, with each one's family, comes from tasks/algos/registry.py (stdlib only); TASK_NAMES from
# tasks/datasets/registry.py (stdlib only).
LOSS_AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "micro-batch-token-mean",
)
CLIP_MODES = ("none", "one-side", "two-side", "dual-clip")
TOKEN_WEIGHTS = ("none", "importance", "truncated")
REGULARIZERS = ("none", "k2", "forward-kl")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_AGGREGATIONS = ("loss_agg",) + LOSS_AGGREGATIONS  # loss_agg: the KL term aggregates as train.loss_agg
# Codes of the training health checks (tasks/algos/health.py), the names health.fail_on accepts.
HEALTH_FINDINGS = (
    "no_signal",
    "truncated",
    "unparseable",
    "logprob_mismatch",
    "clipping",
    "skipped_steps",
    "stale_update",
    "entropy_collapse",
    "eval_regression",
)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunSection(Section):
    preset: str = Field("default", description="Preset the run came from (set by --preset).")
    seed: int = Field(0, description="Seeds model init, SFT, prompt order and every sampling seed.")
    iterations: int = Field(
        40,
        ge=0,
        description="RL iterations (rollout -> grade -> advantage -> train). An execution key: rerunning a "
        "finished run with more continues it from its last checkpoint (the earlier iterations are cache hits). "
        "A linear lr schedule's horizon is train.schedule_iterations.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when present, else cpu.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads for training; 0 = all cores.")


class ArithSection(Section):
    """Synthetic running-sum task: `a + b - c ...`, solved step by step, GSM8K answer format."""

    n_train: int = Field(4000, ge=1, description="Training problems generated.")
    n_test: int = Field(256, ge=1, description="Held-out problems (the first n_test generated).")
    min_terms: int = Field(3, ge=2, description="Fewest operands in a problem.")
    max_terms: int = Field(4, ge=2, description="Most operands in a problem.")
    max_operand: int = Field(9, ge=1, description="Operands are drawn from 0..max_operand.")
    seed: int = Field(1234, description="Seeds problem generation (independent of run.seed, so runs share the data).")

    @model_validator(mode="after")
    def _terms_ordered(self) -> ArithSection:
        if self.max_terms < self.min_terms:
            raise ValueError(f"data.arith.max_terms={self.max_terms} is below min_terms={self.min_terms}")
        return self


class DataSection(Section):
    task: Literal[TASK_NAMES] = Field(
        "arith", description="Selects the grader and answer format (tasks/datasets/<task>.py)."
    )
    source: str = Field(
        "synthetic",
        description="'synthetic' (arith), a local directory/JSONL file, or a Hugging Face dataset id.",
    )
    subset: str | None = Field(None, description="Hub dataset configuration name (e.g. 'main' for openai/gsm8k).")
    test_source: str | None = Field(None, description="Source of the test split when it differs (e.g. MATH-500).")
    train_split: str = Field("train", description="Split name (hub split or <split>.jsonl) of the training problems.")
    test_split: str = Field("test", description="Split name (hub split or <split>.jsonl) of the held-out problems.")
    question_field: str = Field("question", description="Dataset column holding the question.")
    answer_field: str = Field("answer", description="Final answer; for GSM8K the text after `####` is used.")
    solution_field: str | None = Field(None, description="Worked solution column, if the dataset has one.")
    prompt_template: str = Field("{question}\n", description="Plain template; `{question}` is replaced.")
    use_chat_template: bool = Field(False, description="Wrap the prompt with the tokenizer's chat template.")
    max_prompt_tokens: int = Field(96, ge=1, description="Longer prompts are dropped at prep time.")
    train_limit: int | None = Field(None, ge=1, description="Keep the first N training problems; null = all.")
    test_limit: int | None = Field(None, ge=1, description="Keep the first N held-out problems; null = all.")
    on_bad_row: Literal["fail", "skip"] = Field(
        "fail",
        description="A bad dataset row (not JSON or not an object, non-UTF-8, missing or blank question/"
        "answer, duplicate id): fail stops with its file, line and value; skip drops it and counts it per "
        "reason in the prepare metrics (`train_skipped_bad_json`, ...).",
    )
    arith: ArithSection = ArithSection()


class TinyModelSection(Section):
    """Tiny Qwen2-architecture model built from scratch for the embedded default."""

    hidden_size: int = Field(64, description="Width of the residual stream.")
    num_layers: int = Field(2, description="Transformer blocks.")
    num_heads: int = Field(2, description="Attention heads (also key/value heads).")
    intermediate_size: int = Field(256, description="Width of the MLP hidden layer.")
    max_position_embeddings: int = Field(128, description="Longest sequence (prompt + response) the model takes.")


class ModelSection(Section):
    name_or_path: str = Field("tiny", description="'tiny' builds the embedded model; else hub id or local dir.")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "auto", description="auto = bfloat16 on CUDA with bf16 support, float32 elsewhere."
    )
    tiny: TinyModelSection = TinyModelSection()


class WarmStartSection(Section):
    """SFT on worked solutions (loss on completion tokens only). Only for the tiny model. Built once per runs
    directory for each set of inputs (this section, model.tiny, run.seed, the device, the training examples,
    the code version) under shared/warm_start/; every run with the same inputs, whatever its preset or
    run.iterations, starts from it (storage/layout.py)."""

    enabled: bool = Field(
        True, description="Run the SFT warm start (required by the tiny model, which starts untrained)."
    )
    steps: int = Field(350, ge=0, description="SFT optimiser steps.")
    batch_size: int = Field(64, ge=1, description="Examples per SFT step (sampled from the training split).")
    lr: float = Field(1e-3, gt=0, description="Peak SFT learning rate (AdamW, no weight decay).")
    min_lr_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="After a 20-step warmup the lr falls linearly towards 0 over the steps, floored at "
        "lr * min_lr_ratio; 1 = constant. A start annealed to a low lr sits in a narrow minimum that RL's noisy "
        "steps only leave (docs/learning.md).",
    )


class RolloutSection(Section):
    backend: Literal["vllm", "hf"] = Field("vllm", description="vllm, or hf (transformers generate; slow fallback).")
    prompts_per_iteration: int = Field(64, ge=1, description="Prompts (tree: questions) sampled per iteration.")
    samples_per_prompt: int = Field(16, ge=1, description="Responses per prompt: the group the estimators compare.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold; 1 = off (see spo.top_p_probs).")
    max_tokens: int = Field(48, ge=1, description="Response budget in tokens (also capped by max_model_len - prompt).")
    stop: tuple[str, ...] = Field((), description="Strings that end a response (rollouts, MC continuations, eval).")
    max_model_len: int = Field(128, ge=16, description="Context length of the engine: prompt + response tokens.")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the whole GPU one vLLM engine takes (weights, KV cache, CUDA graphs); "
        "the trainer gets the rest unless sleep_mode frees it (README, 'Memory on one GPU').",
    )
    enforce_eager: bool = Field(True, description="vLLM: run eagerly, without capturing CUDA graphs.")
    # Execution keys (EXECUTION_KEYS): where the engines run, never what they generate.
    shards: int = Field(
        1,
        ge=1,
        description="Rollout engines. > 1: each generation call is split across this many Ray actors, each "
        "holding its own engine across iterations; results equal the 1-engine run (per-request seeds).",
    )
    ray_address: str | None = Field(
        None,
        description="shards > 1: the Ray cluster for the engine actors ('auto', 'ray://head:10001'); null "
        "starts a local one.",
    )
    shard_cpus: float = Field(1.0, gt=0, description="shards > 1: CPUs Ray reserves per engine actor.")
    shard_gpus: float | None = Field(
        None,
        ge=0,
        description="shards > 1: GPUs per engine actor; null = 1 when this machine has CUDA, else 0. A "
        "fraction shares a GPU (0.5: two engines per GPU, each taking gpu_memory_utilization of it); above 1, whole "
        "GPUs only. A local cluster must have shards x shard_gpus GPUs (checked at start).",
    )
    placement_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="shards > 1: fail when Ray has not reserved every engine actor's CPUs and GPUs "
        "within this long (a cluster that lacks them would otherwise wait for good).",
    )
    sleep_mode: Literal["auto", True, False] = Field(
        "auto",
        description="Sleep the vLLM engine during train_policy (sleep(level=1): weights to host memory, KV "
        "cache freed) and wake it after, so the trainer has the GPU. auto = on where the engine can sleep (vLLM on "
        "CUDA, HF generate on CUDA), off on CPU; true = on, and an engine that cannot sleep fails at start; "
        "false = off.",
    )

    @model_validator(mode="after")
    def _shards_fit_a_gpu(self) -> RolloutSection:
        g = self.shard_gpus
        if self.shards == 1 or not g:
            return self
        if g > 1 and g != int(g):
            raise ValueError(f"rollout.shard_gpus={g:g}: above 1 GPU per engine actor Ray assigns whole GPUs only")
        sharing = min(self.shards, int(1 / g + 1e-9)) if g < 1 else 1
        if sharing * self.gpu_memory_utilization >= 1:
            raise ValueError(
                f"rollout.shard_gpus={g:g} puts {sharing} engines on one GPU, each taking "
                f"rollout.gpu_memory_utilization={self.gpu_memory_utilization:g} of it "
                f"({sharing * self.gpu_memory_utilization:g} in all): lower "
                f"gpu_memory_utilization below {1 / sharing:.2g} or raise shard_gpus"
            )
        return self


class RewardSection(Section):
    correct: float = Field(1.0, description="Score of a correct final answer.")
    wrong: float = Field(0.0, description="Score of a parsed but wrong final answer.")
    truncated: float = Field(0.0, description="Score of a response cut by max_tokens, whatever it contains.")
    no_answer: float = Field(0.0, description="Score when no final answer is found or it cannot be parsed.")
    multiple_answers: float | None = Field(
        None, description="SPO's guard: score when `####` appears more than once (the paper uses -2)."
    )


class AdvantageSection(Section):
    """Every field is also a named SQL parameter: storage/sql/adv_<estimator>.sql binds those it uses."""

    estimator: Literal[ESTIMATORS] = Field("grpo", description="storage/sql/adv_<estimator>.sql and its numpy twin.")
    eps: float = Field(1e-6, gt=0, description="Added to the group std before dividing (grpo, rec).")
    whiten_eps: float = Field(1e-8, gt=0, description="reinforce_pp_baseline: added to the batch variance.")
    rec_std_normalize: bool = Field(False, description="rec: divide by the kept group std (REC-*-IS/NoIS: false).")
    rec_drop: Literal["none", "balance"] = Field(
        "none", description="rec: RED-Drop 'balance' drops surplus negatives so a group has no more than its positives."
    )
    opmd_baseline: Literal["mean", "logavgexp"] = Field(
        "mean", description="opmd: group mean or tau*log-avg-exp(r/tau)."
    )
    opmd_tau: float = Field(1.0, gt=0, description="opmd: temperature of the log-avg-exp baseline.")
    asymre_shift: float = Field(-0.1, description="asymre: baseline = group mean + shift (negative leans positive).")

    @property
    def spec(self) -> EstimatorSpec:
        """The estimator's registry entry (tasks/algos/registry.py): family, SQL file, config section."""
        return spec_of(self.estimator)


class SPOSection(Section):
    """SPO-chain (spo.md §1.1, §2.1): cutpoints, Monte Carlo segment values, advantage normalisation."""

    rho: float = Field(
        0.9, gt=0, le=1, description="A token with p < rho is a cutpoint (p at the sampling temperature)."
    )
    interval: int = Field(5, ge=1, description="Cutpoints per segment: a boundary before every interval-th cutpoint.")
    mc_samples: int = Field(9, ge=1, description="N: Monte Carlo continuations per (deduplicated) boundary prefix.")
    mc_samples_min: int | None = Field(
        None,
        ge=1,
        description="Adaptive N: every prefix first gets this many continuations, and only prefixes whose "
        "first rewards differ (or failed to grade) get the rest up to mc_samples; the others take V = their common "
        "reward (biased toward 0 and 1: spo_chain.agreed). Null = mc_samples for every prefix.",
    )
    prob_source: Literal["teacher_forced", "sampler"] = Field(
        "teacher_forced",
        description="Cutpoint probabilities: a forward pass of the policy, or the sampler's log-probs.",
    )
    normalize: Literal["batch", "micro_batch", "none"] = Field(
        "batch",
        description="Whiten segment advantages over the iteration's trained tokens, per micro-batch "
        "(the reference), or not at all.",
    )
    prompt_value: Literal["group", "reference"] = Field(
        "group",
        description="V(prompt): the group's mean reward, or as the reference (MC only when the first "
        "token is a cutpoint, else the first segment gets 0).",
    )
    whiten_eps: float = Field(
        1e-8, gt=0, description="Added to the variance before dividing when whitening segment or edge advantages."
    )
    high_prob_advantage: Literal["segment", "zero"] = Field(
        "segment",
        description="The raw advantage of a token that is not a cutpoint (p >= rho): its segment's "
        "(segflow), or 0 before whitening (the reference's generator), so without the probability mask "
        "(train.prob_mask_rho=null) only the whitening shift reaches it: the paper's 'without mask' ablation. "
        "With the mask on both train the same. zero needs spo.normalize micro_batch or none without the mask.",
    )
    top_p_probs: Literal["sampler", "recompute"] = Field(
        "sampler",
        description="With rollout.top_p < 1 the sampler's log-probs are renormalised over the top-p "
        "nucleus, which inflates p. recompute replaces them by a teacher-forced pass of the generating policy at "
        "the sampling temperature (the reference's probabilities) where SPO reads them: SPO-tree's pi_old and "
        "mask, spo.prob_source=sampler's cutpoints, spo.mc_train continuations' cutpoints. No effect at top_p = 1.",
    )
    mc_train: bool = Field(
        False,
        description="Also train on the Monte Carlo continuations: each is a sample (prefix = the boundary "
        "prefix) with A = its reward - V(prefix); those with A = 0 are skipped. They join the iteration's optimiser "
        "steps (mini-batches grow, the number of steps does not) and its advantage whitening.",
    )

    @model_validator(mode="after")
    def _adaptive(self) -> SPOSection:
        if self.mc_samples_min is not None and self.mc_samples_min > self.mc_samples:
            raise ValueError(
                f"spo.mc_samples_min={self.mc_samples_min} exceeds spo.mc_samples={self.mc_samples}: "
                "the first stage cannot sample more than the whole budget"
            )
        return self


class TreeSection(Section):
    """SPO-tree (spo.md §1.2, §2.2): tree rollouts per question, edge advantages, replay buffer.
    Advantage normalisation is spo.normalize; questions per iteration are rollout.prompts_per_iteration."""

    branching: tuple[int, ...] = Field(
        (6, 6, 6),
        min_length=1,
        description="Children per node at each level (6-6-6: 258 nodes, 216 leaves per question).",
    )
    segment_tokens: int = Field(
        30,
        ge=1,
        description="M: new tokens per interior level; the last level runs to rollout.max_tokens.",
    )
    value: Literal["leaves", "children"] = Field(
        "leaves",
        description="V(node): mean reward of the leaves below it, or the reference's mean of children's values.",
    )
    sibling_std: bool = Field(False, description="Divide A = V(node) - V(parent) by the std of the siblings' values.")
    eps: float = Field(1e-8, gt=0, description="Added to the sibling std before dividing.")
    drop_zero: bool = Field(True, description="Edges with A = 0 are not trained (the reference's rule).")
    buffer_age: int = Field(8, ge=1, description="A: replay-buffer edges older than this many iterations are dropped.")
    edges_per_question: int = Field(32, ge=1, description="E: at most this many edges per question per iteration.")
    edges_per_iteration: int | None = Field(
        None,
        ge=1,
        description="Cap on edges trained per iteration (null = every offered edge); the rest stay buffered.",
    )
    old_logprobs: Literal["generation", "recompute"] = Field(
        "generation",
        description="pi_old of the ratio: the sampler's at generation time (buffered edges stay "
        "off-policy-corrected), or recomputed by the current policy.",
    )
    grade_truncated: bool = Field(
        False,
        description="Grade a leaf cut by the response or context budget on its text, as the reference "
        "does (it can earn reward from an answer its text already holds); false = it scores reward.truncated.",
    )

    @model_validator(mode="after")
    def _positive(self) -> TreeSection:
        if any(b < 1 for b in self.branching):
            raise ValueError(f"tree.branching={list(self.branching)}: every level needs at least one child")
        return self


class TrainSection(Section):
    lr: float = Field(1e-4, gt=0, description="Peak lr of the RL updates (AdamW). Real presets set their own (1e-6).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the RL updates.")
    epochs: int = Field(1, ge=1, description="Passes over the iteration's samples.")
    mini_batch_size: int = Field(256, ge=1, description="Sequences per optimiser step.")
    micro_batch_size: int = Field(64, ge=1, description="Sequences per forward pass (gradient accumulation).")
    clip_mode: Literal[CLIP_MODES] = Field(
        "one-side",
        description="Clip mask on the ratio (tasks/algos/policy_loss.py). one-side + importance = PPO-clip.",
    )
    clip_eps: float = Field(0.2, gt=0, description="eps_low: the ratio's lower clip is 1 - clip_eps.")
    clip_eps_high: float | None = Field(None, gt=0, description="eps_high (DAPO uses 0.28); null = clip_eps.")
    dual_clip_c: float = Field(
        3.0, gt=1, description="dual-clip: negative-advantage tokens with ratio > c get no gradient."
    )
    weight: Literal[TOKEN_WEIGHTS] = Field(
        "importance",
        description="Per-token weight: none (NoIS), importance ratio, or truncated ratio.",
    )
    truncate_max: float = Field(2.0, gt=0, description="weight=truncated: w = min(ratio, truncate_max).")
    regularizer: Literal[REGULARIZERS] = Field(
        "none",
        description="k2: c (log pi - log pi_old)^2 (OPMD); forward-kl: -c log pi (AsymRE).",
    )
    regularizer_coef: float = Field(0.1, ge=0, description="c of train.regularizer.")
    kl_coef: float = Field(
        0.0, ge=0, description="KL penalty to the reference (start) policy; 0 = off, no reference pass."
    )
    kl_estimator: Literal[KL_ESTIMATORS] = Field(
        "k3", description="k1 = d, k2 = d^2/2, k3 = exp(-d) - 1 + d; d = log pi - log pi_ref."
    )
    kl_placement: Literal["loss", "reward"] = Field(
        "loss",
        description="loss: + kl_coef * Agg(KL); reward: score - kl_coef * sum_t KL before the estimator.",
    )
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus: loss -= entropy_coef * Agg(H).")
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient norm to this before each step.")
    max_consecutive_skips: int = Field(
        3,
        ge=1,
        description="A step with a NaN/inf loss or gradient is skipped; this many in a row (across "
        "iterations) fail the run.",
    )
    warmup_steps: int = Field(0, ge=0, description="Linear lr warmup over the run's first this many optimiser steps.")
    schedule: Literal["constant", "linear"] = Field(
        "constant",
        description="lr after warmup: constant, or linear decay to 0 at the last optimiser step of "
        "iteration train.schedule_iterations.",
    )
    schedule_iterations: int | None = Field(
        None,
        ge=0,
        description="schedule=linear: the iterations the decay spans; null = run.iterations, filled in "
        "when the config is resolved, so the horizon is part of the run id (run.iterations itself is not: "
        "raising it continues a constant-schedule run, while a linear one with null starts a new run). Set it to "
        "keep a linear run's id while changing run.iterations. Unused by schedule=constant.",
    )
    loss_agg: Literal[LOSS_AGGREGATIONS] = Field("token-mean", description="See tasks/algos/losses.py::aggregate.")
    logprob_chunk: int = Field(
        256,
        ge=1,
        description="Positions per chunk in the log-prob pass: one [chunk x vocab] logit block at a time.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory).")
    lora_rank: int = Field(0, ge=0, description="LoRA rank (peft); 0 = full fine-tuning.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (updates scale by alpha / rank).")
    lora_targets: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), description="Module names that get LoRA adapters."
    )
    prob_mask_rho: float | None = Field(
        None,
        gt=0,
        le=1,
        description="SPO probability mask: only tokens with p_old < rho carry gradient (0.9 in the paper); null = off.",
    )
    whiten_advantages: Literal["none", "micro_batch"] = Field(
        "none",
        description="micro_batch: whiten every estimator's advantages over each micro-batch's trained "
        "tokens in the trainer, (A - mean) / sqrt(var_unbiased + 1e-8), as the SPO reference does for GRPO and "
        "RLOO too (spo.md §3.3); none: as the estimator made them (SPO's own whitening is spo.normalize).",
    )
    kl_agg: Literal[KL_AGGREGATIONS] = Field(
        "loss_agg",
        description="Aggregation of the KL term: loss_agg = with the policy-gradient term; "
        "seq-mean-token-sum = beta * mean over sequences of the sum over trained tokens (the SPO reference).",
    )
    log_ratio_clamp: float = Field(
        20.0,
        gt=0,
        description="log pi - log pi_old (the ratio) and, for the KL in the loss, log pi - log pi_ref "
        "are clamped to +-this (verl: 20, the SPO reference: 10).",
    )
    kl_k3_max: float | None = Field(
        10.0,
        gt=0,
        description="k3 in the loss is clamped to [-this, this] (verl, OpenRLHF: 10); null = only to "
        "k3 >= 0 (the SPO reference).",
    )
    skip_ratio_above: float | None = Field(
        None,
        gt=0,
        description="A micro-batch whose mean ratio pi/pi_old over its trained tokens exceeds this "
        "contributes no loss (the SPO reference: 10); metric skipped_micro_batches. null = off.",
    )
    processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes: > 1 runs the update under torchrun (gloo on CPU, "
        "nccl on GPU, one GPU each) in a subprocess (tasks/distributed.py); 1 = in the flow's process.",
    )
    timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="processes > 1: kill the training subprocesses after this long and fail the "
        "stage; null = no limit.",
    )


class EvalSection(Section):
    every: int = Field(10, ge=1, description="Evaluate every k iterations (and always at the end).")
    limit: int | None = Field(None, ge=1, description="Evaluate on the first N held-out problems.")
    max_tokens: int = Field(
        48, ge=1, description="Answer budget in tokens (also capped by rollout.max_model_len - prompt)."
    )
    samples: int = Field(
        0,
        ge=0,
        description=(
            "k sampled answers per problem for avg@k and pass@k (besides greedy); 0 = greedy only. "
            "Their seeds derive from run.seed, prompt and sample index, so runs with the same run.seed draw the same "
            "samples for the same checkpoint."
        ),
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the k samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus threshold of the k samples; 1 = off.")


class HealthSection(Section):
    """Training health checks (tasks/algos/health.py): when each finding fires, and which stop the run.

    Execution keys: the checks judge stored metrics, so a changed threshold keeps the run id and every
    cached stage, and a rerun re-judges the finished iterations. The defaults raise nothing on healthy
    runs of the embedded default (measurements in the module docstring)."""

    no_signal_frac: float = Field(0.999, gt=0, le=1, description="no_signal: share of zero advantages.")
    truncated_frac: float = Field(
        0.5, gt=0, le=1, description="truncated: share of responses cut by rollout.max_tokens."
    )
    unparseable_frac: float = Field(0.5, gt=0, le=1, description="unparseable: share graded no_answer or parse_error.")
    logprob_gap_nats: float = Field(
        0.05,
        gt=0,
        description="logprob_mismatch: mean |trainer - sampler| log-prob per token, same weights "
        "(~1e-5 in fp32; bf16 on GPU runs wider).",
    )
    clip_frac: float = Field(0.3, gt=0, le=1, description="clipping: share of trained tokens clipped.")
    entropy_ratio: float = Field(
        0.1, gt=0, lt=1, description="entropy_collapse: entropy below this share of the first iteration's."
    )
    stale_update_frac: float = Field(
        0.5,
        ge=0,
        le=1,
        description="stale_update: share of the trained (float32 master) weight entries an "
        "iteration changed, below which it fires (float32 master weights: > 0.99 on the embedded model; bf16 "
        "weights updated in place at lr 1e-6: ~0.01); 0 turns it off.",
    )
    eval_drop_std: float = Field(
        3.0,
        gt=0,
        description="eval_regression: held-out accuracy below the start by more than this many "
        "standard deviations of evaluation noise.",
    )
    fail_on: tuple[str, ...] = Field(
        (),
        description="Findings that stop the run (the flow fails, naming the finding) instead of only warning; "
        f"any of {', '.join(HEALTH_FINDINGS)}. Finished stages stay cached for the rerun.",
    )

    @model_validator(mode="after")
    def _known_findings(self) -> HealthSection:
        unknown = [c for c in self.fail_on if c not in HEALTH_FINDINGS]
        if unknown:
            raise ValueError(
                f"health.fail_on: unknown finding {unknown[0]!r}; choose from {', '.join(HEALTH_FINDINGS)}"
            )
        return self


class Config(Section):
    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    warm_start: WarmStartSection = WarmStartSection()
    rollout: RolloutSection = RolloutSection()
    reward: RewardSection = RewardSection()
    advantage: AdvantageSection = AdvantageSection()
    spo: SPOSection = SPOSection()
    tree: TreeSection = TreeSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    health: HealthSection = HealthSection()

    @model_validator(mode="before")
    @classmethod
    def _linear_horizon(cls, data: Any) -> Any:
        """train.schedule_iterations=null under schedule=linear becomes run.iterations here, before anything
        hashes the config: run.iterations is an execution key, but a linear schedule's horizon changes every
        step's lr, so it must reach the run id and the stages' cache keys."""
        if not isinstance(data, dict):
            return data
        train, iterations = data.get("train", {}), _raw(data.get("run", {}), RunSection, "iterations")
        if (
            _raw(train, TrainSection, "schedule") == "linear"
            and _raw(train, TrainSection, "schedule_iterations") is None
            and isinstance(iterations, int)
            and not isinstance(iterations, bool)
        ):
            if isinstance(train, TrainSection):
                train = train.model_copy(update={"schedule_iterations": iterations})
            elif isinstance(train, dict):
                train = {**train, "schedule_iterations": iterations}
            data = {**data, "train": train}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.train.mini_batch_size % self.train.micro_batch_size:
            raise ValueError(
                f"train.mini_batch_size={self.train.mini_batch_size} must be a multiple of "
                f"train.micro_batch_size={self.train.micro_batch_size}"
            )
        spec = self.advantage.spec
        if spec.monte_carlo_values and self.train.kl_coef > 0 and self.train.kl_placement == "reward":
            raise ValueError(
                f"advantage.estimator={self.advantage.estimator!r} takes its values from Monte Carlo "
                "rollouts: train.kl_placement='reward' is not supported, use 'loss'"
            )
        if self.spo.mc_train and not spec.reads_segments:
            raise ValueError(
                f"spo.mc_train=true trains SPO-chain's Monte Carlo continuations, but "
                f"advantage.estimator={self.advantage.estimator!r} makes none: use 'spo_chain'"
            )
        # SPO-chain whitens over the cutpoints (p < spo.rho) when the mask is on: they must be the tokens
        # the mask trains (p_old < train.prob_mask_rho). Without the mask it weighs every token, so any rho.
        rho, mask_rho = self.spo.rho, self.train.prob_mask_rho
        if spec.reads_segments and mask_rho is not None and mask_rho != rho:
            raise ValueError(
                f"spo.rho={rho} differs from train.prob_mask_rho={mask_rho}: SPO-chain whitens over "
                "the cutpoints (p < spo.rho), so they must be the tokens the mask trains; set both to "
                "the same value (or train.prob_mask_rho=null for no mask)"
            )
        if spec.monte_carlo_values and self.train.whiten_advantages == "micro_batch" and self.spo.normalize == "batch":
            raise ValueError(
                f"train.whiten_advantages='micro_batch' with spo.normalize='batch' would whiten "
                f"{self.advantage.estimator}'s advantages twice: set spo.normalize to micro_batch or none"
            )
        if (
            spec.reads_segments
            and self.spo.high_prob_advantage == "zero"
            and mask_rho is None
            and self.spo.normalize == "batch"
        ):
            raise ValueError(
                "spo.high_prob_advantage='zero' zeroes raw advantages before whitening, but "
                "spo.normalize='batch' whitens them first (in the advantage stage) when "
                "train.prob_mask_rho=null: set spo.normalize to micro_batch (the reference) or none"
            )
        if self.data.max_prompt_tokens >= self.rollout.max_model_len:
            raise ValueError(
                f"data.max_prompt_tokens={self.data.max_prompt_tokens} leaves no room for a response "
                f"under rollout.max_model_len={self.rollout.max_model_len}: lower the first or raise the second"
            )
        if spec_of_task(self.data.task).synthetic and self.data.source != "synthetic":
            raise ValueError(f"data.source={self.data.source!r}: the {self.data.task} task is synthetic only")
        return self


# Keys that say where work runs, not what it computes. They are left out of the run id (and so of every
# derived seed) and of each stage's cache key: a run scaled out to more engines, or given a timeout,
# resumes in the same directory with its cached stages and produces the same artifacts. The health
# checks only judge stored metrics (their findings are rebuilt on every invocation).
EXECUTION_KEYS: dict[str, set[str]] = {
    "run": {"iterations"},  # a longer run continues the shorter one; train.schedule_iterations is the lr horizon
    "rollout": {"shards", "ray_address", "shard_cpus", "shard_gpus", "placement_timeout_seconds", "sleep_mode"},
    "train": {"timeout_seconds"},
    "health": set(HealthSection.model_fields),
}


def _raw(section: Any, model: type[Section], key: str) -> Any:
    """`key` of a section as given to Config (a mapping or a section model) before validation, else its default;
    None for anything else (validation names it)."""
    if isinstance(section, model):
        return getattr(section, key)
    if isinstance(section, dict):
        return section.get(key, model.model_fields[key].default)
    return None


def without_execution_keys(obj):
    """`obj` (a Config, or one of its sections) with every EXECUTION_KEYS entry at its default: what the run
    id and cache keys see. Anything else is returned as is."""
    if isinstance(obj, Config):
        return obj.model_copy(update={s: without_execution_keys(getattr(obj, s)) for s in EXECUTION_KEYS})
    keys = _EXECUTION_KEYS_BY_SECTION.get(type(obj))
    if keys is None:
        return obj
    return obj.model_copy(update={k: type(obj).model_fields[k].default for k in keys})


_EXECUTION_KEYS_BY_SECTION = {Config.model_fields[s].annotation: keys for s, keys in EXECUTION_KEYS.items()}
