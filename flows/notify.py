"""Failure notifications: the flows' on_failure / on_crashed hook.

The hook finds the failed stage (the flow run's failed task run), the error and the run directory, and
POSTs them as JSON to $SEGFLOW_NOTIFY_WEBHOOK (a Slack-compatible body: `text` plus the fields), or logs
them when the variable is unset. The URL comes from the environment, never from the config, so it is not
part of the run id, config.yaml or any artifact.

    {"text": "segflow rl_train failed in train_policy: RuntimeError: ...", "flow": "rl_train",
     "flow_run": "<id>", "stage": "train_policy", "error": "...", "run_dir": "runs/<run_id>"}
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path

ENV = "SEGFLOW_NOTIFY_WEBHOOK"
# The Crashed state's message when Ctrl-C (KeyboardInterrupt) stopped the flow (prefect.states.
# exception_to_crashed_state): the user cancelled the run, so nothing failed and no message is sent.
INTERRUPTED = "Execution was aborted by an interrupt signal."
log = logging.getLogger("segflow.notify")


def _failed_stage(flow_run_id) -> str | None:
    """The name of the flow run's last failed or crashed task run (the stage), if any."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    failed = sorted(
        (r for r in runs if r.state_type is not None and r.state_type.value in ("FAILED", "CRASHED")),
        key=lambda r: str(r.end_time or r.expected_start_time or ""),
    )
    return failed[-1].name.rsplit("-", 1)[0] if failed else None


def run_dir(parameters: dict) -> str | None:
    """The run (or evaluation) directory a flow run writes, from its parameters."""
    from configs.loader import run_id

    runs_dir = parameters.get("runs_dir")
    if runs_dir is None:
        return None
    cfg, spec = parameters.get("cfg"), parameters.get("spec")
    try:
        if cfg is not None:
            from configs.schema import Config

            return str(Path(runs_dir) / run_id(cfg if isinstance(cfg, Config) else Config(**cfg)))
        if spec is not None:
            from flows.eval_spec import EvalSpec

            return str(Path(runs_dir) / "evals" / (spec if isinstance(spec, EvalSpec) else EvalSpec(**spec)).eval_id())
    except Exception:  # noqa: BLE001 - a notification must never fail on its own
        pass
    return str(runs_dir)


def message(flow_name: str, flow_run_id, stage: str | None, error: str, directory: str | None) -> dict:
    where = f" in {stage}" if stage else ""
    return {
        "text": f"segflow {flow_name} failed{where}: {error}" + (f" ({directory})" if directory else ""),
        "flow": flow_name,
        "flow_run": str(flow_run_id),
        "stage": stage,
        "error": error,
        "run_dir": directory,
    }


def describe(exc: BaseException, directory: str | None = None) -> str:
    """The error as the message says it: `Type: text`, except a full disk, which is said as what to do
    (`no space left on <mount> while writing <artifact>; free space and rerun the same command`)."""
    from storage.disk import reported_disk_full

    full = reported_disk_full(exc, directory or ".")
    return str(full) if full is not None else f"{type(exc).__name__}: {exc}"


def send(body: dict, url: str | None = None, timeout: float = 10.0) -> bool:
    """POST `body` to the webhook (True when it answered 2xx); without a URL, log it."""
    url = url or os.environ.get(ENV)
    if not url:
        log.error(body["text"])
        return False
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own webhook URL
            return 200 <= resp.status < 300
    except OSError as e:
        log.error("%s (webhook failed: %s)", body["text"], e)
        return False


def _failed_subflow(flow_run_id) -> bool:
    """Did a subflow of this flow run fail? (It has reported itself, with its stage and run directory.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
    return any(r.state_type is not None and r.state_type.value in ("FAILED", "CRASHED") for r in children)


def interrupted(state) -> bool:
    """Did Ctrl-C (SIGINT) end this flow run? Prefect records it as Crashed with INTERRUPTED."""
    return str(getattr(state, "message", "") or "").startswith(INTERRUPTED)


class _DropInterruptCrash(logging.Filter):
    """Drops Prefect's `Crash detected! Execution was aborted by an interrupt signal.` error: after Ctrl-C,
    `segflow run` says `interrupted; rerun the same command to resume` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or INTERRUPTED not in record.getMessage()


def quiet_interrupt_crashes() -> None:
    """Install _DropInterruptCrash on the loggers Prefect's flow and task engines log crashes to (idempotent)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropInterruptCrash) for f in logger.filters):
            logger.addFilter(_DropInterruptCrash())


def notify_failure(flow, flow_run, state) -> None:
    """Prefect state hook (on_failure, on_crashed). An entry-point flow (flows/deploy.py) whose subflow
    failed stays silent: the subflow's own hook sent the message that names the stage. So does a run
    stopped by Ctrl-C: that is a cancellation, which `segflow run` reports itself."""
    if interrupted(state):
        log.info("%s: interrupted (Ctrl-C); no failure notification", flow.name)
        return
    try:
        if _failed_subflow(flow_run.id):
            return
        error = str(state.message or state.name)
        try:
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, BaseException):
                error = describe(exc, run_dir(flow_run.parameters))
        except Exception:  # noqa: BLE001 - the result may not be retrievable (crash); keep the state message
            pass
        body = message(flow.name, flow_run.id, _failed_stage(flow_run.id), error[:2000], run_dir(flow_run.parameters))
        send(body)
    except Exception as e:  # noqa: BLE001 - never let a notification hide the original failure
        log.error("failure notification itself failed: %s", e)
