"""Multi-process training (tasks/distributed.py): torchrun on gloo gives the single-process update.

The torchrun tests are marked slow: each launch starts fresh Python processes that import torch and
transformers (~15 s for 1 process, ~35 s for 2 on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from configs.schema import TinyModelSection, TrainSection
from tasks import tiny_model
from tasks.distributed import (
    OPTIMIZER_FILE,
    RANKS_FILE,
    TrainJob,
    ddp_rl_update,
    launch,
    write_job,
)
from tasks.sample import Sample
from tasks.train_samples import read_samples, write_samples
from tasks.trainer import make_scheduler, rl_update

CPU = torch.device("cpu")
CFG = TrainSection(lr=3e-3, mini_batch_size=8, micro_batch_size=2, epochs=2)
TOTAL_STEPS = 10


def _samples() -> list[Sample]:
    """8 samples: prompts and completions of varied lengths, mixed advantages, some per-token advantages."""
    out = []
    for i in range(8):
        prompt = [5 + (i + j) % 20 for j in range(2 + i % 3)]
        completion = [30 + (3 * i + j) % 40 for j in range(1 + (5 * i) % 7)]
        adv = (1.0, -1.0, 0.5, -0.25, 2.0, -1.5, 0.75, -0.5)[i]
        tok = [adv * (1 + 0.1 * j) for j in range(len(completion))] if i in (2, 5) else None
        out.append(Sample(prompt, completion, [-3.0 - 0.01 * j for j in range(len(completion))], adv, None, tok))
    return out


def _model():
    tok = tiny_model.build_tokenizer()
    return tiny_model.build_model(TinyModelSection(), len(tok), seed=0), tok


def _in_process(update, samples, cfg=CFG, **kw):
    model, _ = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stats = update(
        model,
        opt,
        make_scheduler(opt, cfg, TOTAL_STEPS),
        samples,
        cfg,
        temperature=1.0,
        pad_id=0,
        device=CPU,
        seed=0,
        **kw,
    )
    return model, opt, stats


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a) trainer.rl_update in this process (1 thread, as the children), (b) torchrun with 1 process,
    (c) torchrun with 2 processes, on one job."""
    root = tmp_path_factory.mktemp("ddp")
    model, tok = _model()
    tiny_model.save(model, tok, root / "model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_model, ref_opt, ref_stats = _in_process(rl_update, _samples())
    finally:
        torch.set_num_threads(threads)
    out, seconds = {}, {}
    for n in (1, 2):
        job = write_job(
            root / f"job{n}",
            _samples(),
            TrainJob(
                train=CFG,
                model_dir=root / "model",
                output_dir=root / f"out{n}",
                temperature=1.0,
                pad_id=0,
                seed=0,
                total_steps=TOTAL_STEPS,
            ),
        )
        t0 = time.perf_counter()
        out[n] = launch(job, nprocs=n, timeout_s=300)
        seconds[n] = time.perf_counter() - t0
    return SimpleNamespace(
        root=root, ref_model=ref_model, ref_opt=ref_opt, ref_stats=ref_stats, metrics=out, seconds=seconds
    )


def test_samples_round_trip_through_parquet(tmp_path):
    samples = _samples() + [Sample([1, 2], [3], [], 0.1, [-0.5], None)]
    write_samples(tmp_path / "s.parquet", samples)
    assert read_samples(tmp_path / "s.parquet") == samples


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {
            "cfg": TrainSection(
                lr=1e-3,
                mini_batch_size=4,
                micro_batch_size=2,
                epochs=2,
                entropy_coef=0.01,
                regularizer="k2",
                prob_mask_rho=0.99,
                loss_agg="seq-mean-token-mean",
            )
        },
        {"whiten_micro_batch": True, "old_from_sampler": True, "norm_len": 16.0},
    ],
    ids=["default", "entropy-k2-mask", "whiten-sampler-old"],
)
def test_without_a_process_group_it_is_rl_update_exactly(kw):
    """Guards the copy of rl_update's loop in ddp_rl_update against drift: one process, same bits."""
    a_model, _, a = _in_process(rl_update, _samples(), **kw)
    b_model, _, b = _in_process(ddp_rl_update, _samples(), **kw)
    a.pop("train_tokens_per_second"), b.pop("train_tokens_per_second")
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(a_model.parameters(), b_model.parameters()))


def test_nan_steps_are_skipped_the_same_way():
    bad = _samples()
    bad[3].advantage = math.nan
    cfg = TrainSection(lr=3e-3, mini_batch_size=4, micro_batch_size=2, epochs=2, max_consecutive_skips=5)
    a = _in_process(rl_update, bad, cfg=cfg, log=lambda _m: None)[2]
    b = _in_process(ddp_rl_update, bad, cfg=cfg, log=lambda _m: None)[2]
    assert a["skipped_steps"] == b["skipped_steps"] == 2 and a["optimizer_steps"] == b["optimizer_steps"] == 2


@pytest.mark.slow
def test_two_processes_give_the_single_process_weights(runs):
    ref = {n: p.detach() for n, p in runs.ref_model.named_parameters()}
    diffs = {}
    for n in (1, 2):
        got = _weights(runs.root / f"out{n}")
        assert set(got) == set(ref)
        diffs[n] = max((got[k] - ref[k]).abs().max().item() for k in ref)
        for k, want in ref.items():
            torch.testing.assert_close(got[k], want, atol=1e-5, rtol=0)
    one, two = _weights(runs.root / "out1"), _weights(runs.root / "out2")
    diffs["1v2"] = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - _weights(runs.root / "model")[k]).abs().max().item() for k in one)
    print(
        f"\nmax |w - w_ref|: 1 proc {diffs[1]:.3g}, 2 procs {diffs[2]:.3g}, 1 vs 2 procs {diffs['1v2']:.3g} "
        f"(update moved weights by up to {moved:.3g}); launch seconds {runs.seconds}"
    )
    assert moved > 1e-3  # the comparison is not vacuous
    # every rank ended on the same bytes, without a broadcast
    assert runs.metrics[2]["world_size"] == 2.0 and runs.metrics[2]["ranks_in_sync"] == 1.0
    digests = json.loads((runs.root / "job2" / RANKS_FILE).read_text())["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.slow
def test_metrics_and_optimizer_state_match(runs):
    ref = runs.ref_stats
    for n in (1, 2):
        got = runs.metrics[n]
        for k in (
            "loss",
            "clipfrac",
            "ratio_mean",
            "approx_kl",
            "grad_norm",
            "entropy",
            "logprob_gap_mean",
            "logprob_gap_max",
            "optimizer_steps",
            "trained_tokens",
            "frac_tokens_trained",
            "lr",
        ):
            assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), (n, k)
        assert got["optimizer_steps"] == 2.0 and got["skipped_steps"] == 0.0
        files = {f.name for f in (runs.root / f"out{n}").iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", OPTIMIZER_FILE} <= files
        assert "metrics.json" not in files  # the checkpoint holds the checkpoint only
        state = torch.load(runs.root / f"out{n}" / OPTIMIZER_FILE, weights_only=True)
        assert state["scheduler"]["last_epoch"] == 2 and state["consecutive_skips"] == 0
        moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
        ref_moments = [s["exp_avg"] for s in runs.ref_opt.state_dict()["state"].values()]
        for a, b in zip(moments, ref_moments):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def _alive_with(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries `tag`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if (
                    tag.encode() in (d / "environ").read_bytes().split(b"\0")
                    and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                ):
                    found.append(int(d.name))
            except (OSError, IndexError):
                continue
    return found


# Each worker: note that it started, ignore SIGTERM (so only the SIGKILL escalation can end it), hang.
def _job(tmp_path, samples, cfg: TrainSection, model_dir):
    """A one-step job in tmp_path/job that writes its checkpoint to tmp_path/out."""
    job = TrainJob(
        train=cfg, model_dir=model_dir, output_dir=tmp_path / "out", temperature=1.0, pad_id=0, seed=0, total_steps=1
    )
    return write_job(tmp_path / "job", samples, job)


HANG = ("--no-python", "sh", "-c", 'trap "" TERM; touch "$2/started.$RANK"; sleep 600', "sh")


@pytest.mark.slow
def test_timeout_kills_torchrun_and_its_workers(tmp_path):
    job = _job(tmp_path, _samples()[:2], CFG, tmp_path / "none")
    tag = f"SEGFLOW_TEST_TAG={uuid.uuid4().hex}"
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"train job .*job \(2 processes\) did not finish within 12 s"):
        launch(job, nprocs=2, timeout_s=12, entry=HANG, env=dict([tag.split("=")]), grace_s=1)
    assert time.perf_counter() - t0 < 40  # the 12 s, a 1 s grace, the kill
    assert sorted(p.name for p in job.glob("started.*")) == ["started.0", "started.1"]  # workers were running
    assert _alive_with(tag) == []  # torchrun, both SIGTERM-proof workers and their sleeps are gone


@pytest.mark.slow
def test_a_failing_job_raises_with_the_stderr_tail(tmp_path):
    job = _job(tmp_path, _samples()[:2], CFG, tmp_path / "none")
    tag = f"SEGFLOW_TEST_TAG={uuid.uuid4().hex}"
    fail = ("--no-python", "sh", "-c", 'echo "rank $RANK: no such model" >&2; exit 3', "sh")
    with pytest.raises(RuntimeError, match=r"(?s)\(2 processes\) failed with exit code 1.*rank 0: no such model"):
        launch(job, nprocs=2, timeout_s=300, entry=fail, env=dict([tag.split("=")]))
    assert _alive_with(tag) == []


@pytest.mark.slow
def test_non_finite_training_in_the_workers_is_raised_as_such(tmp_path):
    from tasks.trainer import NonFiniteTraining

    model, tok = _model()
    tiny_model.save(model, tok, tmp_path / "model")
    bad = _samples()
    bad[0].advantage = math.nan
    cfg = TrainSection(lr=3e-3, mini_batch_size=8, micro_batch_size=2, max_consecutive_skips=1)
    job = _job(tmp_path, bad, cfg, tmp_path / "model")
    with pytest.raises(NonFiniteTraining, match="max_consecutive_skips=1"):
        launch(job, nprocs=2, timeout_s=300)
    assert not (tmp_path / "out" / "model.safetensors").exists()
