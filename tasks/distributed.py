"""Multi-process training: the RL update sharded over a torch.distributed process group, run by torchrun.

Data parallelism without the DDP wrapper. Every rank holds the whole sample list and takes the same
shuffled order (same seed), so the mini-batches and their micro-batches are the ones a single process
forms; rank r runs micro-batches r, r+W, r+2W, ... of each mini-batch. The loss already divides by the
*global* mini-batch normalisers (`num_tokens`, `num_seqs`), so a SUM all-reduce of the per-rank gradients
is the single-process gradient (up to float summation order). Gradient clipping, the NaN/inf skip test
and the AdamW step then run on identical gradients on every rank, so the weights stay in sync without
ever being broadcast (`ranks_in_sync` checks that). DDP itself is not used because `completion_logprobs`
calls `model.model(...)` and `model.lm_head.weight` directly, past DDP's forward hooks, and because the
sum (not DDP's mean) is what keeps the math equal. The pi_old pass is sharded the same way and gathered.

A job is a directory, no pickle: `job.json` (the TrainSection and the update's arguments, see
`write_job`) and `samples.parquet`. `python -m tasks.distributed --job DIR` is the torchrun entry point;
every rank loads the float32 master and rank 0 writes the checkpoint to the job's output directory, both
through tasks/checkpoints.py (the single-process stage's path), and `metrics.json` to the job directory.
`launch()` runs torchrun as a
subprocess with a timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel

from configs.schema import TrainSection
from tasks.checkpoints import OPTIMIZER_FILE, load_master, restore_optimizer, write_checkpoint  # noqa: F401
from tasks.sample import Sample
from tasks.train_samples import read_samples, write_samples
from tasks.trainer import Collective, NonFiniteTraining, resolve_device, resolve_dtype, rl_update

JOB_FILE, SAMPLES_FILE, METRICS_FILE, ERROR_FILE, RANKS_FILE = (
    "job.json",
    "samples.parquet",
    "metrics.json",
    "error.json",
    "ranks.json",
)
STDOUT_LOG, STDERR_LOG = "torchrun.stdout.log", "torchrun.stderr.log"
_MARKER = "SEGFLOW_TRAIN_JOB"  # env var every process of one launch inherits, to find them all on timeout
_REPO = Path(__file__).resolve().parents[1]
_BUCKET = 1 << 24  # gradient elements per all-reduce (64 MiB of float32)


def _rank_world(group=None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


class TorchCollective(Collective):
    """trainer.Collective over a torch.distributed process group (gloo on CPU, nccl on GPU)."""

    def __init__(self, group=None, device: torch.device | None = None):
        self.group, self.device = group, device
        self.rank, self.world = _rank_world(group)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def sum_grads(self, params: list[torch.Tensor], sums: list[float]) -> list[float]:
        """Sum .grad and the step's metric sums over ranks, in place. A parameter no rank gave a gradient
        keeps grad None (as one process would: AdamW then leaves it, and its weight decay, alone)."""
        device = self.device or (params[0].device if params else torch.device("cpu"))
        has = [float(p.grad is not None) for p in params]
        head = self.sum_(torch.tensor(sums + has, dtype=torch.float64, device=device))
        sums, anyone = head[: len(sums)].tolist(), (head[len(sums) :] > 0).tolist()
        live = [p for p, a in zip(params, anyone) if a]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []

        def flush() -> None:
            if bucket:
                flat = self.sum_(torch._utils._flatten_dense_tensors([p.grad for p in bucket]))
                for p, g in zip(bucket, torch._utils._unflatten_dense_tensors(flat, [p.grad for p in bucket])):
                    p.grad.copy_(g)
                bucket.clear()

        for p in live:  # same-dtype buckets of bounded size
            if bucket and (p.grad.dtype != bucket[0].grad.dtype or sum(b.numel() for b in bucket) >= _BUCKET):
                flush()
            bucket.append(p)
        flush()
        return sums


def ddp_rl_update(
    model, optimizer, scheduler, samples: Sequence[Sample], cfg: TrainSection, *, group=None, **kwargs
) -> dict[str, float]:
    """trainer.rl_update over the ranks of `group` (default: the default process group, else one process)."""
    return rl_update(model, optimizer, scheduler, samples, cfg, collective=TorchCollective(group), **kwargs)


# ---------------------------------------------------------------------------------------------- job files


class TrainJob(BaseModel):
    """What every rank of a distributed update reads (job.json): the train section, where the policy is and where
    its checkpoint goes, and rl_update's arguments (tasks/trainer.py)."""

    train: TrainSection
    model_dir: Path  # the policy; with LoRA, the base (and adapter_dir the trained adapter, if any)
    output_dir: Path  # rank 0 writes the checkpoint here
    temperature: float
    pad_id: int
    seed: int
    total_steps: int  # the lr schedule's length (make_scheduler)
    optimizer_state: Path | None = None  # an optimizer.pt to continue from
    adapter_dir: Path | None = None
    norm_len: float | None = None
    whiten_micro_batch: bool = False
    old_from_sampler: bool = False
    consecutive_skips: int = 0  # carried in from the previous iteration when optimizer_state has none
    device: str = "cpu"
    dtype: str = "float32"
    torch_threads: int | None = None
    collective_timeout_s: float = 1800.0


def write_job(job_dir: str | Path, samples: Sequence[Sample], job: TrainJob) -> Path:
    """Write `job.json` + `samples.parquet` (TRAIN_SAMPLES). An optimizer_state file that does not exist (the
    first iteration) is written as none."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_samples(job_dir / SAMPLES_FILE, samples)
    if job.optimizer_state is not None and not job.optimizer_state.exists():
        job = job.model_copy(update={"optimizer_state": None})
    (job_dir / JOB_FILE).write_text(job.model_dump_json(indent=1))
    return job_dir


def read_job(job_dir: Path) -> TrainJob:
    return TrainJob.model_validate_json((job_dir / JOB_FILE).read_text())


def weights_digest(model) -> str:
    """sha256 of every parameter's bytes, in named_parameters order."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------- torchrun entry point


def run_job(job_dir: Path) -> dict[str, float] | None:
    """One rank's part of a job (the process group is initialised). Rank 0 returns the metrics."""
    from tasks.tokens import load_tokenizer

    job = read_job(job_dir)
    cfg = job.train
    rank, world = _rank_world()
    device = resolve_device(job.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    dtype = resolve_dtype(job.dtype, device)
    model, peft_model = load_master(job.model_dir, cfg, dtype=dtype, device=device, adapter_dir=job.adapter_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    state_file = job.optimizer_state
    opt, sched, skips = restore_optimizer(cfg, params, state_file, device, job.total_steps)
    if state_file is None or not state_file.exists():
        skips = job.consecutive_skips
    samples = read_samples(job_dir / SAMPLES_FILE)
    t0 = time.perf_counter()
    stats = ddp_rl_update(
        model,
        opt,
        sched,
        samples,
        cfg,
        temperature=job.temperature,
        pad_id=job.pad_id,
        device=device,
        seed=job.seed,
        norm_len=job.norm_len,
        whiten_micro_batch=job.whiten_micro_batch,
        old_from_sampler=job.old_from_sampler,
        consecutive_skips=skips,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        compute_dtype=dtype,
    )
    stats["train_seconds"] = time.perf_counter() - t0
    stats["trainable_parameters"] = float(sum(p.numel() for p in params))
    stats["world_size"] = float(world)
    # Weights were never broadcast: check every rank ended on the same bytes.
    mine = torch.tensor(list(bytes.fromhex(weights_digest(model))), dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    digests = [bytes(t.cpu().tolist()).hex() for t in every]
    stats["ranks_in_sync"] = float(len(set(digests)) == 1)
    if rank != 0:
        return None
    out = job.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(
        out,
        model,
        peft_model,
        load_tokenizer(job.model_dir),
        opt,
        sched,
        consecutive_skips=int(stats["consecutive_skips"]),
        dtype=dtype,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    (job_dir / RANKS_FILE).write_text(json.dumps({"weights_sha256": digests}))
    (job_dir / METRICS_FILE).write_text(json.dumps(stats, indent=1))  # last: its presence means complete
    return stats


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tasks.distributed", description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True, type=Path, help="job directory (job.json + samples.parquet)")
    job_dir = ap.parse_args(argv).job
    job = read_job(job_dir)
    backend = "nccl" if resolve_device(job.device).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=job.collective_timeout_s))
    try:
        run_job(job_dir)
    except NonFiniteTraining as e:  # every rank raises it on the same step; rank 0 tells launch() which error
        if dist.get_rank() == 0:
            (job_dir / ERROR_FILE).write_text(json.dumps({"type": "NonFiniteTraining", "message": str(e)}))
        raise
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- launch


def _marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries this launch's marker (torchrun, its workers, theirs)."""
    needle = f"{_MARKER}={marker}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if (
                needle in (d / "environ").read_bytes().split(b"\0")
                and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                found.append(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _terminate(proc: subprocess.Popen, marker: str, grace_s: float) -> None:
    """SIGTERM torchrun's group and every marked process, SIGKILL what is left after `grace_s`; wait until
    none is alive. Workers run in sessions of their own (torchrun's start_new_session), hence the marker."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _signal(_marked_pids(marker), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (proc.poll() is None or _marked_pids(marker)):
        time.sleep(0.1)
    for _ in range(50):
        left = _marked_pids(marker)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not left and proc.poll() is not None:
            break
        _signal(left, signal.SIGKILL)
        time.sleep(0.1)
    proc.wait()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch(
    job_dir: str | Path,
    nprocs: int,
    timeout_s: float | None,
    *,
    entry: Sequence[str] = ("-m", "tasks.distributed"),
    env: dict[str, str] | None = None,
    grace_s: float = 10.0,
) -> dict[str, float]:
    """Run `python -m torch.distributed.run --standalone --nproc_per_node=nprocs *entry --job job_dir` (the
    venv's torchrun; `entry` is what each worker runs) and return the job's metrics. Children get
    OMP_NUM_THREADS=1 unless `env` says otherwise; their output goes to job_dir/torchrun.{stdout,stderr}.log.

    Raises TimeoutError after `timeout_s` (None: no limit; every process of the launch is killed first),
    NonFiniteTraining
    when the update gave up on NaN/inf steps, RuntimeError with the tail of stderr on any other failure.
    """
    job_dir = Path(job_dir).resolve()
    (job_dir / ERROR_FILE).unlink(missing_ok=True)
    metrics_file = job_dir / METRICS_FILE
    metrics_file.unlink(missing_ok=True)
    marker = uuid.uuid4().hex
    child_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **(env or {}),
        _MARKER: marker,
        "PYTHONPATH": os.pathsep.join([str(_REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nprocs}",
        *entry,
        "--job",
        str(job_dir),
    ]
    with open(job_dir / STDOUT_LOG, "wb") as out, open(job_dir / STDERR_LOG, "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=_REPO, env=child_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _terminate(proc, marker, grace_s)
            raise TimeoutError(
                f"train job {job_dir} ({nprocs} processes) did not finish within {timeout_s:g} s; "
                f"killed (logs: {job_dir / STDERR_LOG})"
            ) from None
        except BaseException:  # KeyboardInterrupt, a cancelled task: leave nothing behind
            _terminate(proc, marker, grace_s)
            raise
    if _marked_pids(marker):  # torchrun exited but a worker outlived it
        _terminate(proc, marker, grace_s)
    if rc != 0:
        error = job_dir / ERROR_FILE
        if error.exists() and json.loads(error.read_text()).get("type") == "NonFiniteTraining":
            raise NonFiniteTraining(json.loads(error.read_text())["message"])
        raise RuntimeError(
            f"train job {job_dir} ({nprocs} processes) failed with exit code {rc}; "
            f"stderr tail:\n{_tail(job_dir / STDERR_LOG)}"
        )
    if not metrics_file.exists():
        raise RuntimeError(
            f"train job {job_dir} exited 0 but wrote no {metrics_file}; stderr tail:\n{_tail(job_dir / STDERR_LOG)}"
        )
    return json.loads(metrics_file.read_text())


if __name__ == "__main__":
    main()
