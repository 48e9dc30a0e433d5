"""Will the engines and training processes fit this machine's GPUs? Checked before any work starts.

A placement that cannot happen otherwise shows up late and badly: Ray keeps an engine actor that asks for
a GPU nobody has pending for good, and torchrun with more processes than GPUs dies on an invalid device
ordinal (or runs NCCL twice on one GPU). Only the local machine is checked here; the GPUs of a Ray
cluster named by rollout.ray_address are the cluster's, and rollout.placement_timeout_seconds guards those.
"""

from __future__ import annotations

import math

from configs.schema import Config, RolloutSection, TrainSection


def visible_gpus() -> int:
    """CUDA devices this process can use (CUDA_VISIBLE_DEVICES applies); 0 on a CPU-only install."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpus_per_shard(cfg: RolloutSection, gpus: int) -> float:
    """rollout.shard_gpus, or its default: one GPU per engine actor where GPUs exist, CPU actors where not."""
    if cfg.shard_gpus is not None:
        return cfg.shard_gpus
    return 1.0 if gpus else 0.0


def gpus_needed(shards: int, per_shard: float) -> int:
    """GPUs that `shards` actors of `per_shard` GPUs each occupy: whole GPUs above 1 each, and below 1 as many
    actors per GPU as fit whole (Ray never splits one actor's fraction across two GPUs): 3 x 0.4 -> 2."""
    if per_shard <= 0:
        return 0
    if per_shard >= 1:
        return shards * math.ceil(per_shard)
    per_gpu = int(1 / per_shard + 1e-9)
    return math.ceil(shards / per_gpu)


def check_shards(cfg: RolloutSection, gpus: int) -> None:
    """Fail when rollout.shards engine actors cannot all be placed on this machine's `gpus` GPUs."""
    if cfg.shards == 1 or cfg.ray_address:
        return
    per_shard = gpus_per_shard(cfg, gpus)
    need = gpus_needed(cfg.shards, per_shard)
    if need > gpus:
        raise ValueError(
            f"rollout.shards={cfg.shards} engine actors with rollout.shard_gpus={per_shard:g} GPU each need {need} "
            f"GPU(s), but this machine has {gpus} visible: lower rollout.shards, share GPUs with a fraction "
            "(rollout.shard_gpus=0.5 puts two engines on one GPU, each taking rollout.gpu_memory_utilization of it), "
            "or name a cluster with more in rollout.ray_address"
        )


def check_processes(train: TrainSection, device: str, gpus: int) -> None:
    """Fail when train.processes > 1 on CUDA asks for more GPUs than are visible (nccl: one GPU per process)."""
    cuda = device == "cuda" or (device == "auto" and gpus > 0)
    if train.processes > 1 and cuda and train.processes > gpus:
        raise ValueError(
            f"train.processes={train.processes} needs one GPU per process on CUDA, but {gpus} GPU(s) are visible: "
            f"set train.processes to at most {max(gpus, 1)}, or run.device=cpu to train on CPU processes (gloo)"
        )


def check_placement(cfg: Config, gpus: int | None = None) -> None:
    """Both checks for a run's config against `gpus` (default: this machine's)."""
    gpus = visible_gpus() if gpus is None else gpus
    check_shards(cfg.rollout, gpus)
    check_processes(cfg.train, cfg.run.device, gpus)
