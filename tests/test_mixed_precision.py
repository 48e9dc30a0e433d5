"""Mixed precision (issue 29 item 1): float32 master weights and AdamW state, bf16 compute under autocast,
checkpoints in the model dtype plus what exact resume needs, LoRA merged in float32. bf16 autocast runs
on the CPU, so all of it is checked here with the tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from configs.loader import resolve
from configs.schema import TinyModelSection, TrainSection
from flows.rl_train import health_settings
from storage.handles import FileRef
from tasks import tiny_model
from tasks.algos.health import Settings, diagnose
from tasks.checkpoints import MASTER_DIR, OPTIMIZER_FILE, cast_state, merge_lora
from tasks.sample import Sample
from tasks.train import add_lora, load_trainable, restore_optimizer, save_checkpoint
from tasks.trainer import make_scheduler, rl_update

CPU = torch.device("cpu")
BF16 = ["model.dtype=bfloat16", "run.device=cpu", "train.mini_batch_size=4", "train.micro_batch_size=2"]
LIMITS = health_settings(resolve("default")).limits
S = Settings(
    samples_per_prompt=4, temperature=1.0, max_tokens=48, truncated_reward=-0.5, lr=1e-6, task="arith", limits=LIMITS
)


def _vocab() -> int:
    return len(tiny_model.build_tokenizer())


def _model():
    return tiny_model.build_model(TinyModelSection(), _vocab(), seed=0)


def _samples() -> list[Sample]:
    """Four samples whose tokens cover the whole vocabulary: an embedding row no sample uses gets no
    gradient and keeps its value, which would cap the changed share below 1 for a reason unrelated to
    precision."""
    ids = list(range(_vocab()))
    quarter = len(ids) // 4 + 1
    parts = [ids[i * quarter : (i + 1) * quarter] for i in range(4)]
    return [Sample(p[: len(p) // 2], p[len(p) // 2 :], [], a) for p, a in zip(parts, (1.0, -1.0, 0.5, -0.5))]


def _iteration(model, opt, sched, cfg: TrainSection, seed: int, compute_dtype) -> dict[str, float]:
    return rl_update(
        model,
        opt,
        sched,
        _samples(),
        cfg,
        temperature=1.0,
        pad_id=0,
        device=CPU,
        seed=seed,
        compute_dtype=compute_dtype,
    )


def test_lr_1e6_in_bf16_changes_99_percent_of_the_master_and_stale_update_stays_quiet():
    cfg = TrainSection(lr=1e-6, mini_batch_size=4, micro_batch_size=2, epochs=2)
    model = _model()  # float32: the master
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    stats = _iteration(model, opt, make_scheduler(opt, cfg, 10), cfg, seed=0, compute_dtype=torch.bfloat16)
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    total = sum(b.numel() for b in before)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
    assert stats["frac_master_changed"] == changed / total >= 0.99
    assert [f.code for f in diagnose({**stats, "frac_adv_zero": 0.0}, S)] == []


def test_stale_update_fires_on_bf16_weights_updated_in_place():
    """The behaviour before issue 29: the policy held in bf16 and AdamW stepping it directly."""
    cfg = TrainSection(lr=1e-6, mini_batch_size=4, micro_batch_size=2, epochs=2)
    model = _model().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    stats = _iteration(model, opt, make_scheduler(opt, cfg, 10), cfg, seed=0, compute_dtype=None)
    assert stats["optimizer_steps"] == 2 and stats["frac_master_changed"] < 0.05  # measured: ~0.01
    (finding,) = diagnose({**stats, "frac_adv_zero": 0.0}, S)
    assert finding.code == "stale_update" and "health.stale_update_frac=0.5" in finding.message


def test_autocast_computes_in_bf16_and_float32_is_untouched():
    """With compute_dtype bf16 the log-probs are those of the bf16-cast weights (what the engine gets),
    up to autocast keeping norms in float32; with float32 or None autocast is off, bit for bit."""
    from tasks.trainer import completion_logprobs, mixed_precision, pack

    model = _model().eval()
    batch = pack([[5, 6, 7]], [[9, 10, 11]], 0, CPU)
    with torch.no_grad():
        plain = completion_logprobs(model, batch, 1.0, 64)
        with mixed_precision(CPU, torch.float32):
            assert torch.equal(completion_logprobs(model, batch, 1.0, 64), plain)
        with mixed_precision(CPU, torch.bfloat16):
            mixed = completion_logprobs(model, batch, 1.0, 64)
        cast = completion_logprobs(copy.deepcopy(model).to(torch.bfloat16), batch, 1.0, 64)
    assert not torch.equal(mixed, plain)
    torch.testing.assert_close(mixed, cast, atol=2e-2, rtol=0)


@pytest.fixture()
def start(tmp_path):
    tiny_model.save(_model(), tiny_model.build_tokenizer(), tmp_path / "start")
    return FileRef.of(tmp_path / "start")


def _fresh(cfg, policy: FileRef, start: FileRef, total_steps: int = 10):
    model, peft_model, tok, device = load_trainable(cfg, start, policy)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched, _ = restore_optimizer(cfg, params, Path(policy.path) / OPTIMIZER_FILE, device, total_steps)
    return model, peft_model, tok, opt, sched


def test_a_bf16_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(tmp_path, start):
    cfg = resolve("default", overrides=BF16 + ["train.lr=1e-4"])
    dtype = torch.bfloat16

    model, _, _, opt, sched = _fresh(cfg, start, start)
    for it in (1, 2):
        _iteration(model, opt, sched, cfg.train, seed=it, compute_dtype=dtype)
    straight = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, peft_model, tok, opt, sched = _fresh(cfg, start, start)
    steps = _iteration(model, opt, sched, cfg.train, seed=1, compute_dtype=dtype)["optimizer_steps"]
    save_checkpoint(cfg, tmp_path / "ckpt1", model, peft_model, tok, opt, sched, consecutive_skips=0)
    model, _, _, opt, sched = _fresh(cfg, FileRef.of(tmp_path / "ckpt1"), start)
    assert model.dtype == torch.float32 and sched.last_epoch == steps > 0
    _iteration(model, opt, sched, cfg.train, seed=2, compute_dtype=dtype)
    resumed = dict(model.named_parameters())
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
    # The bf16 weights alone would not do: the master carries bits the cast drops.
    assert any(not torch.equal(t, t.bfloat16().float()) for t in straight.values())


def test_a_bf16_checkpoint_is_bf16_for_the_engine_and_keeps_the_float32_master(tmp_path, start):
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = resolve("default", overrides=BF16)
    model, peft_model, tok, opt, sched = _fresh(cfg, start, start)
    _iteration(model, opt, sched, cfg.train, seed=1, compute_dtype=torch.bfloat16)
    master = {n: p.detach().clone() for n, p in model.state_dict().items()}
    save_checkpoint(cfg, tmp_path / "ckpt", model, peft_model, tok, opt, sched, consecutive_skips=0)
    ckpt = tmp_path / "ckpt"

    weights = load_file(str(ckpt / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert all(torch.equal(weights[n], master[n].bfloat16()) for n in weights)
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(ckpt).dtype == torch.bfloat16  # what from_pretrained users get
    kept = load_file(str(ckpt / MASTER_DIR / "model.safetensors"))
    assert all(torch.equal(kept[n], master[n]) for n in kept) and set(kept) == set(weights)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # saving left the master alone


def test_a_float32_checkpoint_has_no_master_copy(tmp_path, start):
    cfg = resolve("default", overrides=["model.dtype=float32", "run.device=cpu"])
    model, peft_model, tok, opt, sched = _fresh(cfg, start, start)
    save_checkpoint(cfg, tmp_path / "ckpt", model, peft_model, tok, opt, sched, consecutive_skips=0)
    assert not (tmp_path / "ckpt" / MASTER_DIR).exists()


@pytest.mark.parametrize("adapter_dtype", [torch.float32, torch.bfloat16])
def test_a_bf16_lora_merge_equals_the_float32_merge_cast_to_bf16(adapter_dtype):
    """The trained adapter is float32 (add_lora); one loaded in bf16 (peft with autocast_adapter_dtype off)
    must merge to the same rule: W + B A * scale in float32, rounded to bf16 once."""
    cfg = resolve("default", overrides=["train.lora_rank=4"])
    peft_model = add_lora(cfg, _model().to(torch.bfloat16), None)
    g = torch.Generator().manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            assert p.dtype == torch.float32  # add_lora's adapter is LoRA's master
            p.data = (torch.randn(p.shape, generator=g) * 0.05).to(adapter_dtype)  # a delta of ~1e-3 per entry
    reference = copy.deepcopy(peft_model).to(torch.float32).merge_and_unload()  # float32 merge ...
    expected = {n: t.to(torch.bfloat16) for n, t in reference.state_dict().items()}  # ... then cast
    naive = copy.deepcopy(peft_model).merge_and_unload().state_dict()  # peft's merge in the base dtype
    merged = cast_state(merge_lora(peft_model), torch.bfloat16)
    assert set(merged) == set(expected)
    assert all(torch.equal(merged[n], expected[n]) for n in expected)
    changed = sum(
        int((merged[n] != t.to(torch.bfloat16)).sum()) for n, t in _model().to(torch.bfloat16).state_dict().items()
    )
    assert changed > 0  # the delta reached the merged weights
    if adapter_dtype == torch.bfloat16:  # peft rounds the bf16 delta, then the sum: a different result
        assert any(not torch.equal(naive[n], expected[n]) for n in expected)
