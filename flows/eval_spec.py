"""What `segflow eval` evaluates (EvalSpec) and its id. Its own module so flows/notify.py can name an
evaluation's directory without importing the evaluate flow, which imports notify for its failure hook."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from configs.schema import DataSection
from tasks.datasets.registry import EVAL_DATASETS, TASK_NAMES

EXECUTION_FIELDS = ("shards", "ray_address")  # EvalSpec fields left out of the eval id


class EvalSpec(BaseModel):
    """What `segflow eval` evaluates. Hashes to the eval id."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    checkpoints: tuple[str, ...] = Field(min_length=1)
    datasets: tuple[str, ...] = ("arith",)
    samples: int = Field(0, ge=0, description="k sampled answers per problem (avg@k, pass@k, maj@k); 0 = greedy only.")
    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    budgets: tuple[int, ...] = Field(
        (), description="Context budgets (total tokens); empty = default_budget of the checkpoints."
    )
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="First N problems of each dataset.")
    price_in: float = Field(0.0, ge=0, description="USD per million prompt tokens (cost-of-pass).")
    price_out: float = Field(0.0, ge=0, description="USD per million generated tokens.")
    jsonl_task: Literal[TASK_NAMES] = Field("math", description="Grader for a local JSONL dataset.")
    # Where the engines run, not what they generate (like rollout.shards in a run): not in the eval id.
    shards: int = Field(1, ge=1, description="Ray engine actors sharing each cell's prompts; same answers as 1.")
    ray_address: str | None = Field(None, description="shards > 1: Ray cluster ('auto', 'ray://...'); null = local.")

    def eval_id(self) -> str:
        what = self.model_dump_json(exclude=set(EXECUTION_FIELDS))
        return "eval-" + hashlib.sha256(what.encode()).hexdigest()[:10]


def dataset_section(name: str, spec: EvalSpec) -> DataSection:
    """'arith' | 'gsm8k[=SOURCE]' | 'math500[=SOURCE]' | a local .jsonl file or directory (question/answer)."""
    from configs.loader import resolve

    key, _, source = name.partition("=")
    if key in EVAL_DATASETS:  # named datasets and the preset whose data section (source, fields, template) they use
        data = resolve(EVAL_DATASETS[key]).data
        if source:  # a local copy of the same dataset
            data = data.model_copy(update={"test_source" if data.test_source else "source": source})
        return data
    path = Path(name).expanduser()
    if not path.exists():
        raise ValueError(
            f"dataset {name!r}: not one of {', '.join(EVAL_DATASETS)} (optionally =LOCAL_COPY), "
            "nor an existing .jsonl file or directory"
        )
    return DataSection(task=spec.jsonl_task, source=str(path), test_split=path.stem if path.is_file() else "test")
