"""Every task, declared once: its name, whether its problems are generated, and its named eval datasets.

`data.task`, `segflow eval --jsonl-task` and `segflow grade --task` accept TASK_NAMES; code that differs
by task asks the spec (spec_of_task) or the task's module (task_module) instead of testing names
(tests/test_task_registry.py enforces it). Adding a task: a module tasks/datasets/<name>.py with
`reference`, `grade` and `extra_metrics`, and one TaskSpec below.

Stdlib only, so configs/schema.py imports it without pulling in numpy, sympy or math-verify; the task
modules, which do, are imported by name when first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class TaskSpec:
    name: str
    synthetic: bool  # problems are generated (data.source must be 'synthetic'), not read from a source
    # `segflow eval --dataset` names -> the preset whose data section (source, fields, template) they use
    eval_datasets: tuple[tuple[str, str], ...] = ()

    @property
    def module(self) -> str:
        """Its module: reference extraction, grader and extra metrics."""
        return f"tasks.datasets.{self.name}"


TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        TaskSpec("arith", synthetic=True, eval_datasets=(("arith", "default"),)),
        TaskSpec("gsm8k", synthetic=False, eval_datasets=(("gsm8k", "gsm8k_qwen05b"),)),
        TaskSpec("math", synthetic=False, eval_datasets=(("math500", "math500_r1distill"),)),
    )
}
TASK_NAMES = tuple(TASKS)  # the names data.task accepts
EVAL_DATASETS: dict[str, str] = {ds: preset for s in TASKS.values() for ds, preset in s.eval_datasets}
# `segflow eval --dataset` usage: a read dataset may name a local copy, a generated one may not
EVAL_DATASET_USAGE = " | ".join(
    ds if s.synthetic else f"{ds}[=LOCAL]" for s in TASKS.values() for ds, _ in s.eval_datasets
)


def spec_of_task(name: str) -> TaskSpec:
    """The registered spec of task `name`; ValueError naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task {name!r} is not registered; known: {', '.join(TASK_NAMES)}") from None


def task_module(name: str) -> ModuleType:
    """The module of task `name` (imported on first use; ValueError for an unknown task)."""
    return importlib.import_module(spec_of_task(name).module)
