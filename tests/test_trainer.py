import torch

from configs.schema import TinyModelSection, TrainSection
from tasks import tiny_model
from tasks.sample import Sample
from tasks.sft import sft, warm_start_lr_factor
from tasks.trainer import completion_logprobs, make_scheduler, pack, rl_update


def _model():
    tok = tiny_model.build_tokenizer()
    return tiny_model.build_model(TinyModelSection(), len(tok), seed=0)


def test_pack_aligns_predicting_positions():
    b = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], 0, torch.device("cpu"))
    assert b.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert b.position_ids[1].tolist()[:4] == [0, 1, 2, 3]
    # position p predicts token p+1: prompt_len-1+j predicts completion token j
    assert list(zip(b.pred_rows.tolist(), b.pred_cols.tolist())) == [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert b.comp_mask.tolist() == [[True, True, False], [True, True, True]]


def test_right_padding_does_not_change_logprobs():
    model = _model().eval()
    alone = pack([[5, 6, 7]], [[9, 10]], 0, torch.device("cpu"))
    padded = pack([[5, 6, 7], [8, 8, 8, 8, 8, 8]], [[9, 10], [11, 12, 13, 14]], 0, torch.device("cpu"))
    with torch.no_grad():
        a = completion_logprobs(model, alone, 0.7, 3)[0, :2]
        b = completion_logprobs(model, padded, 0.7, 3)[0, :2]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _update(rho):
    torch.manual_seed(0)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainSection(lr=1e-3, mini_batch_size=4, micro_batch_size=2, prob_mask_rho=rho)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    samples = [Sample([5, 6, 7], [9, 10, 11], [], a) for a in (1.0, -1.0, 0.5, -0.5)]
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, cfg, 10),
        samples,
        cfg,
        temperature=1.0,
        pad_id=0,
        device=torch.device("cpu"),
        seed=0,
    )
    moved = any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    return stats, moved


def test_probability_mask_selects_trained_tokens():
    stats, moved = _update(rho=1e-9)  # every token has p >= rho: nothing carries gradient
    assert stats["frac_tokens_trained"] == 0.0 and not moved
    stats, moved = _update(rho=1.0)  # an untrained model gives every token p < 1
    assert stats["frac_tokens_trained"] == 1.0 and moved
    stats, moved = _update(rho=None)
    assert stats["frac_tokens_trained"] == 1.0 and moved


def _samples(with_ref=False):
    # one prompt, a rewarded and a penalised completion of different lengths (token-mean weights them)
    ref = (lambda n: [-2.0] * n) if with_ref else (lambda n: None)
    return [
        Sample([5, 6, 7], [9, 10, 11], [], 1.0, ref(3)),
        Sample([5, 6, 7], [12, 13], [], -1.0, ref(2)),
        Sample([5, 8], [9, 14, 15, 16], [], 0.5, ref(4)),
        Sample([5, 8], [17], [], -0.5, ref(1)),
    ]


def _seq_logprob(model, prompt, completion):
    with torch.no_grad():
        return completion_logprobs(model, pack([prompt], [completion], 0, torch.device("cpu")), 1.0, 64).sum().item()


def test_updates_raise_rewarded_and_lower_penalised_completions():
    torch.manual_seed(0)
    model = _model()
    cfg = TrainSection(lr=3e-3, mini_batch_size=4, micro_batch_size=2, epochs=5)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    samples = _samples()
    before = [_seq_logprob(model, s.prompt_ids, s.completion_ids) for s in samples]
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, cfg, 10),
        samples,
        cfg,
        temperature=1.0,
        pad_id=0,
        device=torch.device("cpu"),
        seed=0,
    )
    after = [_seq_logprob(model, s.prompt_ids, s.completion_ids) for s in samples]
    assert after[0] > before[0] and after[2] > before[2]  # positive advantage: more likely
    assert after[1] < before[1] and after[3] < before[3]  # negative advantage: less likely
    assert stats["optimizer_steps"] == 5 and stats["grad_norm"] > 0 and stats["entropy"] > 0


def test_micro_batching_gives_the_full_batch_update():
    results = []
    for micro in (4, 1):
        torch.manual_seed(0)
        model = _model()
        cfg = TrainSection(
            lr=1e-3,
            mini_batch_size=4,
            micro_batch_size=micro,
            loss_agg="token-mean",
            regularizer="k2",
            entropy_coef=0.01,
        )
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        rl_update(
            model,
            opt,
            make_scheduler(opt, cfg, 10),
            _samples(),
            cfg,
            temperature=1.0,
            pad_id=0,
            device=torch.device("cpu"),
            seed=0,
        )
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_kl_penalty_in_the_loss_needs_and_uses_reference_logprobs():
    import pytest

    model = _model()
    cfg = TrainSection(lr=1e-3, mini_batch_size=4, micro_batch_size=2, kl_coef=0.1, kl_estimator="k3")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    with pytest.raises(ValueError, match="reference log-probs"):
        rl_update(
            model,
            opt,
            make_scheduler(opt, cfg, 10),
            _samples(),
            cfg,
            temperature=1.0,
            pad_id=0,
            device=torch.device("cpu"),
            seed=0,
        )
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, cfg, 10),
        _samples(with_ref=True),
        cfg,
        temperature=1.0,
        pad_id=0,
        device=torch.device("cpu"),
        seed=0,
    )
    assert stats["kl_ref"] > 0  # an untrained model is far from a reference at log p = -2 per token


def test_lora_trains_adapters_only_and_merges_to_the_same_policy(tmp_path):
    from configs.loader import resolve
    from tasks.train import add_lora

    cfg = resolve(
        "default",
        overrides=["train.lora_rank=4", "train.lr=1e-2", "train.mini_batch_size=4", "train.micro_batch_size=2"],
    )
    model = _model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = add_lora(cfg, model, None)
    params = [p for p in model.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in params) < sum(t.numel() for t in base.values()) / 10
    opt = torch.optim.AdamW(params, lr=cfg.train.lr)
    rl_update(
        model,
        opt,
        make_scheduler(opt, cfg.train, 10),
        _samples(),
        cfg.train,
        temperature=1.0,
        pad_id=0,
        device=torch.device("cpu"),
        seed=0,
    )
    tuned = _seq_logprob(model, [5, 6, 7], [9, 10, 11])
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    assert abs(_seq_logprob(merged, [5, 6, 7], [9, 10, 11]) - tuned) < 1e-4
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base[n])]
    assert changed and all(any(t in n for t in cfg.train.lora_targets) for n in changed)
    # the saved adapter reloads onto a fresh base to the same policy
    again = add_lora(cfg, _model(), tmp_path / "adapter")
    assert abs(_seq_logprob(again.merge_and_unload(), [5, 6, 7], [9, 10, 11]) - tuned) < 1e-4


def test_non_finite_steps_are_skipped_and_a_streak_fails_the_run():
    import math

    import pytest

    from tasks.trainer import NonFiniteTraining

    torch.manual_seed(0)
    model = _model()
    cfg = TrainSection(lr=3e-3, mini_batch_size=4, micro_batch_size=4, epochs=2, max_consecutive_skips=3)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    bad = _samples()
    bad[1].advantage = math.nan  # a NaN reward reaching the loss
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logged = []
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, cfg, 10),
        bad,
        cfg,
        temperature=1.0,
        pad_id=0,
        device=torch.device("cpu"),
        seed=0,
        log=logged.append,
    )
    assert stats["skipped_steps"] == 2 and stats["optimizer_steps"] == 0 and stats["consecutive_skips"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights untouched
    assert len(logged) == 2 and "loss=nan" in logged[0]
    # A good step resets the streak; a streak carried in from the last iteration counts.
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, cfg, 10),
        _samples(),
        cfg,
        temperature=1.0,
        pad_id=0,
        device=torch.device("cpu"),
        seed=0,
        consecutive_skips=2,
        log=logged.append,
    )
    assert stats["consecutive_skips"] == 0 and stats["optimizer_steps"] == 2
    with pytest.raises(NonFiniteTraining, match="max_consecutive_skips=3"):
        rl_update(
            model,
            opt,
            make_scheduler(opt, cfg, 10),
            bad,
            cfg,
            temperature=1.0,
            pad_id=0,
            device=torch.device("cpu"),
            seed=0,
            consecutive_skips=2,
            log=logged.append,
        )


def test_warm_start_schedule_warms_up_falls_and_floors():
    f = [warm_start_lr_factor(s, 100, 0.05) for s in range(100)]
    assert f[0] == 1 / 20 and f[19] == 0.81  # warmup reaches the linear fall at step 19
    assert f[50] == 0.5 and f[96] == f[99] == 0.05 and abs(f[95] - 0.05) < 1e-12  # floored from 95% on
    assert all(a >= b for a, b in zip(f[19:], f[20:]))
    assert [warm_start_lr_factor(s, 100, 1.0) for s in (0, 19, 60, 99)] == [1 / 20, 1.0, 1.0, 1.0]  # constant
    assert warm_start_lr_factor(90, 100, 0.3) == 0.3


def test_sft_lowers_the_loss_at_a_constant_lr():
    model, tok = _model(), tiny_model.build_tokenizer()
    examples = [
        (tok("1+2", add_special_tokens=False)["input_ids"], tok("1+2=3", add_special_tokens=False)["input_ids"])
    ]
    losses = []
    last50 = sft(
        model,
        examples,
        steps=30,
        batch_size=1,
        lr=1e-2,
        seed=0,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        min_lr_ratio=1.0,
        on_step=lambda step, loss: losses.append(loss),
    )
    assert len(losses) == 30 and losses[-1] < losses[0] / 2 and last50 < losses[0]


def test_a_lora_checkpoint_resumes_to_the_same_policy_and_optimizer_state(tmp_path):
    """train_policy's pieces: a checkpoint written after one iteration's update is what the next iteration
    loads (start policy + adapter, AdamW moments, schedule position, skipped-step streak), and its plain
    weights are the merged policy that the engine and from_pretrained read."""
    from transformers import AutoModelForCausalLM

    from configs.loader import resolve
    from storage.handles import FileRef
    from tasks.train import OPTIMIZER_FILE, load_trainable, restore_optimizer, save_checkpoint

    cfg = resolve(
        "default",
        overrides=["train.lora_rank=4", "train.lr=1e-2", "train.mini_batch_size=4", "train.micro_batch_size=2"],
    )
    _model().save_pretrained(tmp_path / "start")
    tiny_model.build_tokenizer().save_pretrained(tmp_path / "start")
    start = FileRef.of(tmp_path / "start")

    model, peft_model, tok, device = load_trainable(cfg, start, start)  # first iteration: no adapter yet
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched, skips = restore_optimizer(cfg, params, tmp_path / "start" / OPTIMIZER_FILE, device, total_steps=10)
    assert skips == 0 and sched.last_epoch == 0
    before = _seq_logprob(model, [5, 6, 7], [9, 10, 11])
    rl_update(model, opt, sched, _samples(), cfg.train, temperature=1.0, pad_id=0, device=device, seed=0)
    tuned = _seq_logprob(model, [5, 6, 7], [9, 10, 11])
    assert abs(tuned - before) > 1e-3
    moments = {k: v["exp_avg"].clone() for k, v in opt.state_dict()["state"].items()}
    save_checkpoint(cfg, tmp_path / "ckpt", model, peft_model, tok, opt, sched, consecutive_skips=1)

    again, _, _, _ = load_trainable(cfg, start, FileRef.of(tmp_path / "ckpt"))
    assert abs(_seq_logprob(again, [5, 6, 7], [9, 10, 11]) - tuned) < 1e-4
    params = [p for p in again.parameters() if p.requires_grad]
    opt2, sched2, skips2 = restore_optimizer(cfg, params, tmp_path / "ckpt" / OPTIMIZER_FILE, device, total_steps=10)
    assert skips2 == 1 and sched2.last_epoch == sched.last_epoch > 0
    assert all(torch.equal(opt2.state_dict()["state"][k]["exp_avg"], m) for k, m in moments.items())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", use_safetensors=True)
    assert abs(_seq_logprob(merged, [5, 6, 7], [9, 10, 11]) - tuned) < 1e-4


def test_a_tokenizer_without_a_pad_token_pads_with_eos_through_training(tmp_path):
    """Issue 29 item 5: pack() got pad_id=None (TypeError) when the tokenizer had no pad token. Every
    stage loads its tokenizer through tasks/tokens.load_tokenizer, which now pads with EOS."""
    import pytest
    from transformers import PreTrainedTokenizerFast

    from configs.loader import resolve
    from storage.handles import FileRef
    from tasks.train import load_trainable
    from tasks.trainer import sequence_logprobs

    tok = tiny_model.build_tokenizer()
    tok.pad_token = None
    tiny_model.save(_model(), tok, tmp_path / "nopad")
    assert PreTrainedTokenizerFast.from_pretrained(tmp_path / "nopad").pad_token_id is None  # really none saved
    with pytest.raises(TypeError):
        pack([[5]], [[6, 7], [8]], None, torch.device("cpu"))  # what training did with it

    cfg = resolve("default", overrides=["run.device=cpu", "train.mini_batch_size=4", "train.micro_batch_size=4"])
    model, _, loaded, device = load_trainable(cfg, FileRef.of(tmp_path / "nopad"), FileRef.of(tmp_path / "nopad"))
    assert loaded.pad_token_id == loaded.eos_token_id == 1
    samples = _samples()  # completions of 1 to 4 tokens: every micro-batch is padded
    kwargs = dict(device=device, temperature=1.0, chunk=64, micro_batch=4)
    by_eos = sequence_logprobs(
        model,
        [x.prompt_ids for x in samples],
        [x.completion_ids for x in samples],
        pad_id=loaded.pad_token_id,
        **kwargs,
    )
    by_zero = sequence_logprobs(
        model, [x.prompt_ids for x in samples], [x.completion_ids for x in samples], pad_id=0, **kwargs
    )
    assert by_eos == by_zero  # padding is masked: the pad id changes no log-prob
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    stats = rl_update(
        model,
        opt,
        make_scheduler(opt, cfg.train, 10),
        samples,
        cfg.train,
        temperature=1.0,
        pad_id=loaded.pad_token_id,
        device=device,
        seed=0,
    )
    assert stats["optimizer_steps"] == 1 and stats["grad_norm"] > 0


def test_a_tokenizer_with_neither_pad_nor_eos_fails_naming_it():
    import pytest

    from tasks.tokens import with_pad_token

    tok = tiny_model.build_tokenizer()
    tok.pad_token, tok.eos_token = None, None
    with pytest.raises(ValueError, match=r"tokenizer of '/m' has neither a pad nor an EOS token"):
        with_pad_token(tok, "/m")
