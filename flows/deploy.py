"""Deployable entry points and `segflow serve`.

`train` and `evaluate_models` take plain parameters (a preset name, `--set` overrides, a runs directory),
so a deployment, its schedule and the UI's "Custom run" form stay short; they resolve the config and run
the `rl_train` / `evaluate` flows as subflows. prefect.yaml deploys the same two entry points to work
pools; `segflow serve` registers them with schedules from a YAML file and runs them in this process:

    deployments:
      - name: nightly-grpo            # deployment name (flow name is train or evaluate_models)
        flow: train
        preset: grpo
        set: [run.iterations=20]
        runs_dir: runs
        cron: "0 2 * * *"             # or interval: 3600 (seconds)
      - name: weekly-eval
        flow: evaluate_models
        checkpoints: [runs/grpo-0123456789]
        datasets: [arith]
        samples: 8
        interval: 604800
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.notify import notify_failure


@flow(name="train", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def train(preset: str = "default", overrides: list[str] | None = None, runs_dir: str = "runs") -> dict:
    """rl_train on `preset` with `overrides` (section.key=value), like `segflow run`."""
    from configs.loader import resolve
    from flows.rl_train import rl_train

    return rl_train(resolve(preset, overrides=overrides or []), runs_dir)


@flow(name="evaluate_models", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def evaluate_models(
    checkpoints: list[str],
    datasets: list[str] | None = None,
    samples: int = 0,
    budgets: list[int] | None = None,
    seed: int = 0,
    limit: int | None = None,
    runs_dir: str = "runs",
    shards: int = 1,
    ray_address: str | None = None,
) -> dict:
    """The evaluate flow, like `segflow eval`."""
    from flows.evaluate import EvalSpec, evaluate

    spec = EvalSpec(
        checkpoints=tuple(checkpoints),
        datasets=tuple(datasets or ("arith",)),
        samples=samples,
        budgets=tuple(budgets or ()),
        seed=seed,
        limit=limit,
        shards=shards,
        ray_address=ray_address,
    )
    return evaluate(spec, runs_dir)


class ServeEntry(BaseModel):
    """One deployment of a `segflow serve` file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    flow: str = Field(pattern="^(train|evaluate_models)$")
    cron: str | None = None
    interval: float | None = Field(None, gt=0)
    runs_dir: str = "runs"
    preset: str = "default"
    overrides: list[str] = Field(default_factory=list, alias="set")
    checkpoints: list[str] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=lambda: ["arith"])
    samples: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_schedule(self) -> ServeEntry:
        if (self.cron is None) == (self.interval is None):
            raise ValueError(f"deployment {self.name!r}: give exactly one of cron or interval")
        if self.flow == "evaluate_models" and not self.checkpoints:
            raise ValueError(f"deployment {self.name!r}: evaluate_models needs checkpoints")
        return self

    def parameters(self) -> dict:
        if self.flow == "train":
            from configs.loader import resolve

            resolve(self.preset, overrides=self.overrides)  # fail now, not at 2 a.m.
            return {"preset": self.preset, "overrides": self.overrides, "runs_dir": self.runs_dir}
        return {
            "checkpoints": self.checkpoints,
            "datasets": self.datasets,
            "samples": self.samples,
            "runs_dir": self.runs_dir,
        }


def read_serve_file(path: Path) -> list[ServeEntry]:
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("deployments")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a top-level 'deployments:' list")
    out = []
    for i, e in enumerate(entries):
        try:
            out.append(ServeEntry(**e))
        except Exception as err:  # noqa: BLE001 - name the entry, then the pydantic message
            raise ValueError(f"{path}: deployments[{i}]: {err}") from err
    return out


def deployments(entries: list[ServeEntry]) -> list:
    """RunnerDeployments for prefect.serve."""
    flows = {"train": train, "evaluate_models": evaluate_models}
    return [
        flows[e.flow].to_deployment(
            name=e.name, parameters=e.parameters(), **({"cron": e.cron} if e.cron else {"interval": e.interval})
        )
        for e in entries
    ]
