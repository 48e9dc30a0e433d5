"""Rollout engines on Ray: with rollout.shards = N, N actors each hold one engine across iterations.

Every request carries its own seed (tasks/engines/base.py), so a completion does not depend on which engine
serves it or what else is in that engine's batch: splitting a call across engines changes wall time
only, and the results equal the single-engine run's. Requests that share a prompt (a prompt's n samples,
a tree node's children) stay on one engine, so they still share its prefix cache.

Ray is the scheduler here, not something segflow reimplements: a local cluster is started when
rollout.ray_address is null, otherwise the actors go to the named cluster. Each actor needs the model
directory at the same path (one machine, or shared storage on a cluster). Before any actor starts, a
placement group reserves every actor's CPUs and GPUs at once: a local cluster that lacks the GPUs fails at
once (tasks/placement.py), any cluster that cannot place them within rollout.placement_timeout_seconds fails
then, naming the keys, instead of waiting for good.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from configs.schema import RolloutSection
from tasks.engines.base import Completion, Request, reload_in_place, same_keys
from tasks.engines.registry import engine_class
from tasks.engines.vllm_engine import VLLM_SHAPE_KEYS, vllm_env_defaults
from tasks.placement import check_shards, gpus_per_shard, visible_gpus


class ShardPlacementError(ValueError):
    """Ray could not reserve the engine actors' resources in time (a config the cluster cannot serve)."""


def split_contiguous(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Cut items with the given sizes into at most `parts` contiguous [start, end) runs of about equal
    total size, in order. Runs are never empty; fewer items than parts give fewer runs."""
    total, runs, start, acc = sum(sizes), [], 0, 0
    for i, s in enumerate(sizes):
        acc += s
        left_items, left_parts = len(sizes) - i - 1, parts - len(runs) - 1
        # close the run once it reaches its share, or when each remaining part needs one item
        if left_parts > 0 and (acc * parts >= total * (len(runs) + 1) or left_items <= left_parts):
            runs.append((start, i + 1))
            start = i + 1
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def prompt_groups(requests: Sequence[Request]) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive requests with the same prompt token ids."""
    groups, start = [], 0
    for i in range(1, len(requests) + 1):
        if i == len(requests) or requests[i].prompt_token_ids != requests[start].prompt_token_ids:
            groups.append((start, i))
            start = i
    return groups


def shard_requests(requests: Sequence[Request], shards: int) -> list[tuple[int, int]]:
    """[start, end) request ranges, one per engine: whole prompt groups, balanced by the tokens each
    group can generate (its requests' max_tokens)."""
    groups = prompt_groups(requests)
    sizes = [sum(r.max_tokens for r in requests[a:b]) for a, b in groups]
    return [(groups[a][0], groups[b - 1][1]) for a, b in split_contiguous(sizes, shards)]


class EngineHost:
    """What one Ray actor runs: an engine, started once, kept until the flow shuts it down."""

    def __init__(self, model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> None:
        vllm_env_defaults()  # the engine lives in the actor itself
        self.engine = engine_class(cfg.backend).from_config(
            model_dir, cfg.model_copy(update={"shards": 1}), dtype, seed
        )

    def start_seconds(self) -> float:
        return self.engine.start_seconds

    def load_weights(self, model_dir: str) -> float:
        return self.engine.load_weights(model_dir)

    def sleep(self) -> bool:
        return self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def generate(self, requests: list[Request], kwargs: dict) -> list[Completion]:
        return self.engine.generate(requests, progress=False, **kwargs)

    def shutdown(self) -> None:
        self.engine.shutdown()


def _connect(cfg: RolloutSection) -> bool:
    """Initialise Ray if needed. Returns True when this call started a local cluster (ours to stop)."""
    import ray

    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **common)
        return False
    need = cfg.shards * cfg.shard_cpus
    ray.init(num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), object_store_memory=512 * 2**20, **common)
    return True


def reserve(cfg: RolloutSection, gpus_each: float):
    """A ready placement group with one bundle per engine actor ({CPU: shard_cpus, GPU: gpus_each}), packed
    onto as few nodes as fit. Raises ShardPlacementError when Ray has not placed it within
    rollout.placement_timeout_seconds (the group is removed: nothing stays pending)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cfg.shard_cpus, **({"GPU": gpus_each} if gpus_each else {})}
    group = placement_group([dict(bundle) for _ in range(cfg.shards)], strategy="PACK")
    try:
        ray.get(group.ready(), timeout=cfg.placement_timeout_seconds)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        raise ShardPlacementError(
            f"Ray could not place rollout.shards={cfg.shards} engine actors of {bundle} each (rollout.shard_cpus, "
            f"rollout.shard_gpus) within rollout.placement_timeout_seconds={cfg.placement_timeout_seconds:g}; the "
            f"cluster has {have} in all: lower rollout.shards or the per-actor resources, or add nodes"
        ) from None
    return group


class ShardedEngine:
    """The engine interface of tasks/engines/base.py over `cfg.shards` Ray actors, each running rollout.backend's
    engine. start_seconds is the wall time until every actor's engine was up."""

    model_dir: str
    start_seconds: float
    loaded: str
    reloads: list[float]

    @classmethod
    def from_config(cls, model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> ShardedEngine:
        return cls(model_dir, cfg, dtype, seed)

    def __init__(self, model_dir: str, cfg: RolloutSection, dtype: str, seed: int) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        t0 = time.perf_counter()
        self.model_dir, self.cfg, self.dtype = model_dir, cfg, dtype
        self.actors, self.group, self._owns_ray = [], None, False
        gpus = visible_gpus()
        check_shards(cfg, gpus)  # before a local cluster starts for actors it could never place
        gpus_each = gpus_per_shard(cfg, gpus)
        self._owns_ray = _connect(cfg)
        try:
            self.group = reserve(cfg, gpus_each)
            host = ray.remote(EngineHost)
            self.actors = [
                host.options(
                    num_cpus=cfg.shard_cpus,
                    num_gpus=gpus_each,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i),
                ).remote(model_dir, cfg, dtype, seed)
                for i in range(cfg.shards)
            ]
            ray.get([a.start_seconds.remote() for a in self.actors])  # surfaces a failed start here, not later
        except BaseException:
            self.shutdown()
            raise
        self.start_seconds = time.perf_counter() - t0
        self.loaded = model_dir
        self.reloads: list[float] = []

    @property
    def logprobs_mode(self) -> str:
        """The actors' engine's (every actor runs rollout.backend's engine)."""
        return engine_class(self.cfg.backend).logprobs_mode

    @property
    def replicas(self) -> int:
        return len(self.actors)

    def compatible(self, cfg: RolloutSection, dtype: str) -> bool:
        keys = ("backend", "shards", "ray_address", "shard_cpus", "shard_gpus", "sleep_mode", *VLLM_SHAPE_KEYS)
        return dtype == self.dtype and same_keys(cfg, self.cfg, keys)

    def sleep(self) -> bool:
        """Every actor's engine sleeps (rollout.sleep_mode), in parallel. Returns whether any did."""
        import ray

        return any(ray.get([a.sleep.remote() for a in self.actors]))

    def wake_up(self) -> None:
        import ray

        ray.get([a.wake_up.remote() for a in self.actors])

    def load_weights(self, model_dir) -> float:
        """Every actor loads the checkpoint in place, in parallel. Returns seconds; 0 if already loaded."""
        import ray

        return reload_in_place(self, model_dir, lambda d: ray.get([a.load_weights.remote(d) for a in self.actors]))

    def generate(
        self,
        requests: Sequence[Request],
        *,
        temperature: float,
        top_p: float,
        stop: Sequence[str] = (),
        progress: bool = True,
    ) -> list[Completion]:
        import ray
        from tqdm.auto import tqdm

        requests = list(requests)
        kwargs = {"temperature": temperature, "top_p": top_p, "stop": list(stop)}
        ranges = shard_requests(requests, len(self.actors))
        pending = {
            a.generate.remote(requests[s:e], kwargs): i for i, (a, (s, e)) in enumerate(zip(self.actors, ranges))
        }
        results: dict[int, list[Completion]] = {}
        with tqdm(
            total=len(requests), desc=f"generate on {len(ranges)} engines", unit="req", disable=not progress
        ) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                results[i] = ray.get(done[0])
                bar.update(len(results[i]))
        return [c for i in range(len(ranges)) for c in results[i]]

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=60)
            except Exception:  # noqa: BLE001, S110 - the actor is killed next either way
                pass
            ray.kill(a)
        self.actors = []
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)
            self.group = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
