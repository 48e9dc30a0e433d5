"""GPU check of the mixed-precision trainer (issue 29): does an update at lr 1e-6 reach the weights?

    python bench/gpu_check.py            # Qwen2.5-0.5B shape on the GPU, a few minutes on one H100
    python bench/gpu_check.py --small    # a tiny shape, on the CPU unless --device says otherwise

Needs only torch, transformers, peft and safetensors: no vLLM, Prefect, DuckDB or pydantic, and no
network (tests/test_gpu_check.py runs it with those imports blocked). It builds a randomly initialised
Qwen2-architecture policy of the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
MLP 4864, vocabulary 151936, tied embeddings) in float32, and runs one iteration of segflow's own RL
update (tasks/trainer.rl_update: the pi_old pass, then 4 AdamW steps at lr 1e-6) on random token
sequences shaped like the gsm8k_qwen05b preset's (prompt 256 + completion 768 tokens, micro-batch 8),
in the mixed-precision path (float32 master, bf16 autocast). It prints
  * the share of master entries the iteration changed (expected >= 0.99), overall and for the MLP
    matrices, the attention matrices, the RMSNorm weights and the embedding, and the share of the bf16
    copy's entries that changed (what the engine sees: only a few percent at lr 1e-6, issue 29);
  * the same iteration with the policy held in bf16 and stepped in place (segflow before issue 29):
    the share the stale_update health check flags (issue 29 measured ~2% of an MLP matrix);
  * whether a checkpoint written and read back (tasks/checkpoints.py) restores the master bit for bit
    and holds its bf16 cast for the engine;
  * peak GPU memory (torch.cuda.max_memory_allocated) of the update, beside README's arithmetic for the
    same batch ("Memory on one GPU": 16N + 2N + activations + LM head, `readme_estimate_gib`); and
    train tokens/s.
The last line is `result: {json}` with every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks.checkpoints import MASTER_DIR, load_master, restore_optimizer, write_checkpoint  # noqa: E402
from tasks.sample import Sample  # noqa: E402
from tasks.trainer import rl_update  # noqa: E402

QWEN05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    tie_word_embeddings=True,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)
# (sequences, prompt tokens, completion tokens, mini-batch, micro-batch): 2 epochs of 2 mini-batches = 4 steps.
BATCH = {"qwen05b": (64, 256, 768, 32, 8), "small": (16, 8, 24, 8, 4)}

# The train section of gsm8k_qwen05b where it matters here (lr, micro-batch, epochs), else the schema's
# defaults; spelled out because configs.schema needs pydantic. tests/test_gpu_check.py validates it
# against configs.schema.TrainSection, so a renamed or new key is caught on the CPU.
TRAIN = dict(
    lr=1e-6,
    weight_decay=0.0,
    epochs=2,
    clip_mode="one-side",
    clip_eps=0.2,
    clip_eps_high=None,
    dual_clip_c=3.0,
    weight="importance",
    truncate_max=2.0,
    regularizer="none",
    regularizer_coef=0.1,
    kl_coef=0.0,
    kl_estimator="k3",
    kl_placement="loss",
    entropy_coef=0.0,
    grad_clip=1.0,
    max_consecutive_skips=3,
    warmup_steps=0,
    schedule="constant",
    loss_agg="token-mean",
    logprob_chunk=256,
    gradient_checkpointing=False,
    lora_rank=0,
    prob_mask_rho=None,
    whiten_advantages="none",
    kl_agg="loss_agg",
    log_ratio_clamp=20.0,
    kl_k3_max=10.0,
    skip_ratio_above=None,
)


class _NoTokenizer:
    """A random policy has no tokenizer; write_checkpoint's call to save one is a no-op here."""

    def save_pretrained(self, _out) -> None:
        pass


def build_policy(shape: dict, device: torch.device, seed: int = 0):
    """A randomly initialised Qwen2 causal LM of `shape`, float32, built on `device` directly."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=1, pad_token_id=0, attn_implementation="sdpa")
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.float().eval()


def make_samples(n: int, prompt: int, completion: int, vocab: int, seed: int = 0) -> list[Sample]:
    """Random token sequences with advantages +-1 (half each), no sampler log-probs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, prompt + completion), generator=g).tolist()
    return [Sample(row[:prompt], row[prompt:], [], 1.0 if i % 2 == 0 else -1.0) for i, row in enumerate(ids)]


def _kind(name: str) -> str:
    if "mlp" in name:
        return "mlp"
    if "self_attn" in name:
        return "attention"
    if "norm" in name:
        return "norm"
    return "embedding"


def changed_shares(before: dict[str, torch.Tensor], model) -> dict[str, float]:
    """Share of entries that changed since `before` (CPU copies): overall and by kind, for the master, and
    for its bf16 cast (`bf16_copy`)."""
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        now, was = p.detach().cpu(), before[name]
        for key, n in (
            ("master", int((now != was).sum())),
            (f"master_{_kind(name)}", int((now != was).sum())),
            ("bf16_copy", int((now.bfloat16() != was.bfloat16()).sum())),
        ):
            c = counts.setdefault(key, [0, 0])
            c[0] += n
            c[1] += was.numel()
    return {k: c / max(1, t) for k, (c, t) in counts.items()}


def one_iteration(model, samples, train, device, compute_dtype):
    """segflow's update on `model` (its parameters are the master), timed; (stats, seconds)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched, _ = restore_optimizer(train, params, None, device, total_steps=100)
    t0 = time.perf_counter()
    stats = rl_update(
        model,
        opt,
        sched,
        samples,
        train,
        temperature=1.0,
        pad_id=0,
        device=device,
        seed=0,
        compute_dtype=compute_dtype,
        log=lambda msg: print(f"  {msg}"),
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return stats, time.perf_counter() - t0, opt, sched


def checkpoint_round_trip(model, opt, sched, train, device, dtype) -> dict[str, bool]:
    """Write a checkpoint and read the master back: is it the master bit for bit, and are the weights the
    engine loads its cast to `dtype`?"""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        write_checkpoint(
            out, model, None, _NoTokenizer(), opt, sched, consecutive_skips=0, dtype=dtype, gradient_checkpointing=False
        )
        again, _ = load_master(out, train, dtype=dtype, device=device)
        exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        engine = load_file(str(out / "model.safetensors"))
        state = model.state_dict()
        cast = all(t.dtype == dtype and torch.equal(t.to(device), state[n].to(dtype)) for n, t in engine.items())
        has_master = (out / MASTER_DIR / "model.safetensors").exists()
        del again
    return {"resume_master_exact": exact and has_master, "engine_weights_are_master_cast": cast}


def param_count(shape: dict) -> int:
    """Parameters of a Qwen2 causal LM of `shape` (q/k/v projections with biases, tied embeddings counted once)."""
    h, i, layers, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h
    per_layer = attention + 3 * h * i + 2 * h
    return v * h * (1 if shape["tie_word_embeddings"] else 2) + layers * per_layer + h


def readme_estimate_gib(shape: dict, micro: int, tokens: int, chunk: int) -> float:
    """README's "Memory on one GPU" arithmetic for the trainer, GiB: 16N (float32 master, gradient, AdamW
    moments) + 2N (bf16 casts under autocast) + b*T*L*2(16h + 4I) (activations, no checkpointing) +
    3*chunk*V*4 (the chunked LM head)."""
    n, h, i = param_count(shape), shape["hidden_size"], shape["intermediate_size"]
    activations = micro * tokens * shape["num_hidden_layers"] * 2 * (16 * h + 4 * i)
    return (18 * n + activations + 3 * chunk * shape["vocab_size"] * 4) / 2**30


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a tiny shape (CPU-sized) instead of Qwen2.5-0.5B's")
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bf16-in-place comparison run")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu" and args.small:
        torch.set_num_threads(1)  # matrices this small gain nothing from threads, and lose much on a busy machine
    name = "small" if args.small else "qwen05b"
    shape = SMALL if args.small else QWEN05B
    n, prompt, completion, mini, micro = BATCH[name]
    train = SimpleNamespace(**TRAIN, mini_batch_size=mini, micro_batch_size=micro)
    dtype = torch.bfloat16
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({gpu}), torch {torch.__version__}, transformers {transformers.__version__}")

    t0 = time.perf_counter()
    model = build_policy(shape, device)
    params = sum(p.numel() for p in model.parameters())
    assert params == param_count(shape), (params, param_count(shape))
    print(
        f"policy: {name} shape, {params / 1e6:.1f}M parameters, float32 master (built in "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    samples = make_samples(n, prompt, completion, shape["vocab_size"])
    steps = TRAIN["epochs"] * -(-n // mini)
    print(
        f"batch: {n} sequences x {prompt + completion} tokens (prompt {prompt} + completion {completion}), "
        f"mini-batch {mini}, micro-batch {micro}: {steps} AdamW steps at lr {TRAIN['lr']:g}"
    )
    before = {k: p.detach().to("cpu", copy=True) for k, p in model.named_parameters()}

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stats, seconds, opt, sched = one_iteration(model, samples, train, device, dtype)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    shares = changed_shares(before, model)
    result = {
        "device": str(device),
        "gpu": gpu,
        "shape": name,
        "parameters": params,
        "steps": int(stats["optimizer_steps"]),
        "master_changed": stats["frac_master_changed"],
        **{f"changed_{k}": v for k, v in shares.items()},
        "train_tokens_per_s": stats["train_tokens_per_second"],
        "iteration_seconds": seconds,
        "peak_gpu_gib": peak,
        "readme_estimate_gib": readme_estimate_gib(shape, micro, prompt + completion, TRAIN["logprob_chunk"]),
    }
    assert abs(shares["master"] - stats["frac_master_changed"]) < 1e-12  # the trainer's metric, cross-checked
    print("mixed precision (float32 master, bf16 autocast):")
    print(
        f"  master entries changed: {shares['master']:.4f} (mlp {shares['master_mlp']:.4f}, attention "
        f"{shares['master_attention']:.4f}, norm {shares['master_norm']:.4f}, embedding "
        f"{shares['master_embedding']:.4f}); bf16 copy changed: {shares['bf16_copy']:.4f}"
    )
    print(
        f"  train tokens/s: {stats['train_tokens_per_second']:.0f} (update steps only; the iteration with "
        f"its pi_old pass took {seconds:.1f} s)"
    )
    if peak is not None:
        print(
            f"  peak GPU memory: {peak:.2f} GiB; README's arithmetic for this batch (16N + 2N + activations at "
            f"micro-batch {micro} x {prompt + completion} tokens + LM head): {result['readme_estimate_gib']:.1f} GiB"
        )
    result.update(checkpoint_round_trip(model, opt, sched, train, device, dtype))
    print(
        f"  checkpoint: master restored bit for bit: {result['resume_master_exact']}; engine weights are "
        f"its bf16 cast: {result['engine_weights_are_master_cast']}"
    )
    del model, opt, sched

    if not args.no_baseline:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        old = build_policy(shape, device)
        old.load_state_dict({k: v.to(device) for k, v in before.items()}, strict=False)
        old.to(dtype)
        stats, _, opt, sched = one_iteration(old, samples, train, device, None)
        result["bf16_in_place_changed"] = stats["frac_master_changed"]
        mlp = changed_shares({k: v.to(dtype) for k, v in before.items()}, old)["master_mlp"]
        result["bf16_in_place_changed_mlp"] = mlp
        print("bf16 weights stepped in place (segflow before issue 29; health check stale_update fires below 0.5):")
        print(f"  entries changed: {stats['frac_master_changed']:.4f} (mlp {mlp:.4f})")
    print("result: " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
