"""What every stage task shares: the cache policy, the code version, and `ensure`.

Cache key = task inputs + task source + CODE_VERSION (a digest of every .py/.sql file segflow ships),
never the flow run id, so a new run of the same command hits the cache (specs/prefect.md §1).
Prefect only hashes the task's own source, so CODE_VERSION is what invalidates a stage when a helper
it calls changes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.tasks import Task
from pydantic import BaseModel

from configs.schema import without_execution_keys
from storage.faults import crash_point
from storage.handles import FileRef

_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("configs", "storage", "tasks")  # the code stages run; flows only compose them


def _code_version() -> str:
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for f in sorted((_ROOT / pkg).rglob("*")):
            if f.suffix in {".py", ".sql"} and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(_ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


CODE_VERSION = _code_version()


@dataclass
class StageInputs(CachePolicy):
    """Prefect's INPUTS policy, except that a Config input, or a section of one (a RolloutSection), is hashed
    without its execution keys (configs/schema.EXECUTION_KEYS): changing rollout.shards keeps every cached
    stage. It wraps Inputs rather than subclassing it, because a compound policy replaces every Inputs by a
    plain one."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):
        inputs = {k: without_execution_keys(v) for k, v in (inputs or {}).items()}
        return Inputs().compute_key(task_ctx, inputs, flow_parameters, **kwargs)


STAGE = dict(cache_policy=StageInputs() + TASK_SOURCE, persist_result=True, cache_result_in_memory=False)


class StageOutput(BaseModel):
    """What a stage returns: its main artifact, its metrics file, state carried to the next iteration
    (the SPO-tree replay buffer), and a side file a later stage of the iteration reads (SPO-chain's Monte
    Carlo rollouts, trained with spo.mc_train)."""

    artifact: FileRef
    metrics: FileRef | None = None
    state: FileRef | None = None
    side: FileRef | None = None


def file_refs(obj: Any) -> Iterator[FileRef]:
    if isinstance(obj, FileRef):
        yield obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from file_refs(getattr(obj, name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from file_refs(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from file_refs(v)


def stage_run_name(task_name: str) -> Callable[..., str]:
    """Prefect's task_run_name callback: `generate_rollouts[it=3]` for a stage with an `iteration` parameter,
    else the bare task name, so the UI's timeline reads by iteration instead of random suffixes."""

    def name(parameters: dict[str, Any]) -> str:
        it = parameters.get("iteration")
        return task_name if it is None else f"{task_name}[it={it}]"

    return name


def ensure(task: Callable, *args: Any, **kwargs: Any) -> tuple[Any, bool]:
    """Run (or cache-hit) `task`; if a cached result points at a missing or changed file, log which file and
    why (missing, or expected vs found sha256) and recompute it.

    Prefect's cache does not know files exist (specs/prefect.md §1, "cache hits on deleted files").
    Returns (result, cached): `cached` is True when nothing was recomputed.
    """
    crash_point(f"stage:{task.name}")
    if isinstance(task, Task) and task.task_run_name is None:  # a UI label; no input, so no part of the cache key
        task = task.with_options(task_run_name=stage_run_name(task.name))
    state = task(*args, return_state=True, **kwargs)
    out = state.result()
    stale = [(ref.path, why) for ref in file_refs(out) if (why := ref.mismatch())]
    if not stale:
        return out, state.name == "Cached"
    log = _logger()
    for path, why in stale:  # a silent recompute looks like a cache bug; say which file and why
        log.warning("%s runs again: its artifact %s is %s", task.name, path, why)
    return task.with_options(refresh_cache=True)(*args, **kwargs), False


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (terminal and UI) inside a run, else segflow's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("segflow.cache")
