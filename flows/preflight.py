"""Checks that run before Prefect starts, so that a missing model, dataset or run fails in a second with one
line naming the config key, its value and what to do, instead of minutes of hub retries and tracebacks.

    problem = run_problems(cfg)        # None, or the message `segflow run` exits 2 with
    problem = checkpoint_problems(spec.checkpoints)   # segflow eval --checkpoint
    problem = eval_dataset_problems(spec)             # segflow eval --dataset
    problem = compare_problems(names, runs_dir)

Each returns the first problem as a message (the CLI passes it to `fail`) and imports neither Prefect nor
transformers. Rules:
- a value that looks like a path (starts with /, ./, ../ or ~, or ends in .jsonl) must exist; relative paths
  resolve from the current working directory;
- a hub id must be in the local Hugging Face cache, or the hub must list it within HUB_TIMEOUT_S (and
  HF_HUB_OFFLINE must be unset); unreachable and cached, it asks for HF_HUB_OFFLINE=1;
- local data files are read with the loader's own row checks (tasks/datasets/loader.load_records_checked), once,
  so a bad row is reported before Prefect starts and not again by each retry of prepare_dataset.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

from configs.schema import Config, DataSection
from flows.eval_spec import EvalSpec, dataset_section
from tasks.local_paths import check_model_dir, looks_like_path, missing_path

HUB_TIMEOUT_S = 3.0  # the hub probe's limit; a name lookup is bounded by the same wait (a daemon thread)
_TRUE = ("1", "on", "yes", "true")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@lru_cache(maxsize=16)
def hub_status(endpoint: str, repo_type: str, repo_id: str, timeout: float = HUB_TIMEOUT_S) -> int | None:
    """HTTP status of `HEAD <endpoint>/api/<repo_type>s/<repo_id>` (200: the repo exists and is readable), or
    None when nothing answers within `timeout` seconds. The request runs in a daemon thread, so that a name
    lookup that hangs (getaddrinfo ignores socket timeouts) cannot hold the CLI either."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if (token := _hf_token()) else {}
    request = urllib.request.Request(f"{endpoint}/api/{repo_type}s/{repo_id}", method="HEAD", headers=headers)
    answer: list[int] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                answer.append(r.status)
        except urllib.error.HTTPError as e:
            answer.append(e.code)
        except (OSError, ValueError):  # no route, no name, refused, timed out, a malformed endpoint
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return answer[0] if answer else None


def _hf_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _model_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # HFValidationError: not a valid repo id at all
        return False


def _dataset_cached(repo_id: str) -> bool:
    """In the datasets library's cache (<HF_DATASETS_CACHE>/<org>___<name>) or the hub's file cache."""
    from huggingface_hub import constants

    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    hub_snapshots = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    return (datasets_cache / repo_id.replace("/", "___")).is_dir() or (
        hub_snapshots.is_dir() and any(hub_snapshots.iterdir())
    )


def _hub_problem(key: str, value: str, cached: bool, kind: str, local: str | None = None) -> str | None:
    """None when the hub id `value` can be loaded (cached, or the hub has it), else what to do; `local` says
    how to use a local copy instead (default: set `key` to a local directory)."""
    fetch = (
        f"download it with `huggingface-cli download{' --repo-type dataset' if kind == 'dataset' else ''} "
        f"{value}`, or {local or f'set {key} to a local directory'}"
    )
    if _hub_offline():
        return (
            None
            if cached
            else f"{key}={value!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {fetch}"
        )
    status = hub_status(_endpoint(), kind, value)
    if status == 200 or (cached and status in (401, 403, 404)):  # a cached copy is the loader's to judge
        return None
    if status in (401, 403, 404):
        return (
            f"{key}={value!r}: the Hugging Face hub ({_endpoint()}) has no such {kind} (HTTP {status}): check "
            "the id; a private repository needs `huggingface-cli login` or HF_TOKEN"
        )
    if cached:
        return (
            f"{key}={value!r}: the Hugging Face hub ({_endpoint()}) is unreachable, but the {kind} is in the "
            f"local cache: set HF_HUB_OFFLINE=1 to use it"
        )
    return (
        f"{key}={value!r}: the Hugging Face hub ({_endpoint()}) is unreachable and the {kind} is not in the "
        f"local cache: {fetch}"
    )


def model_source_problem(key: str, value: str) -> str | None:
    """`value` (named `key` in the message) as tasks/models.resolve_model_dir loads it: a local model
    directory with config.json, or a loadable hub id; None when it is one, else the message."""
    try:
        if check_model_dir(value, key) is not None:
            return None
    except FileNotFoundError as e:
        return str(e)
    if Path(value).expanduser().exists():
        return f"{key}={value!r}: expected a model directory or a hub id"
    if looks_like_path(value):
        return missing_path(key, value)
    if value.count("/") > 1:  # org/name is the most a hub id has
        return missing_path(key, value) + "; with two '/' it is no hub id either"
    return _hub_problem(key, value, _model_cached(value), "model")


def model_problem(name_or_path: str) -> str | None:
    """model.name_or_path: 'tiny' (built by the flow), a local model directory, or a loadable hub id."""
    return None if name_or_path == "tiny" else model_source_problem("model.name_or_path", name_or_path)


def checkpoint_problems(checkpoints: list[str] | tuple[str, ...]) -> str | None:
    """`segflow eval --checkpoint` values: the first that cannot be loaded, or None. A run directory (a
    config.yaml beside checkpoints/, as flows/evaluate.checkpoint_dir tells them apart) is left to the flow,
    which picks its latest finished checkpoint; anything else is a model directory or a hub id."""
    for value in checkpoints:
        run = Path(value).expanduser()
        if (run / "config.yaml").exists() and (run / "checkpoints").is_dir():
            continue
        if problem := model_source_problem("--checkpoint", value):
            return problem
    return None


def data_problem(cfg: Config) -> str | None:
    """data.source / data.test_source of each split: a local copy whose every row passes the loader's
    checks, or a loadable hub dataset. A synthetic task (arith) reads no source."""
    return next(filter(None, (split_problem(cfg.data, s) for s in (cfg.data.train_split, cfg.data.test_split))), None)


def split_problem(data: DataSection, split: str, local: str | None = None, skip_hint: bool = True) -> str | None:
    """Why one split of `data` cannot be read (a bad row, a missing path, an uncached hub dataset offline), or
    None; always None for a synthetic task (arith), which reads no source. `local` says how to point at a local
    copy (default: the data key); `skip_hint` suggests data.on_bad_row=skip for a bad row."""
    from tasks.datasets.loader import BadRow, load_records_checked, split_source
    from tasks.datasets.registry import spec_of_task

    if spec_of_task(data.task).synthetic:  # generated problems: no source to read
        return None
    key, source = split_source(data, split)
    if Path(source).expanduser().exists():
        try:
            load_records_checked(data, split)
        except BadRow as e:  # file, line and value; raised under data.on_bad_row=fail only
            return f"{e} (to drop bad rows and count them instead: --set data.on_bad_row=skip)" if skip_hint else str(e)
        except (ValueError, OSError) as e:  # an empty split, an unreadable file, a directory without train.jsonl
            return str(e)
    elif looks_like_path(source):
        return missing_path(key, source)
    else:
        return _hub_problem(key, source, _dataset_cached(source), "dataset", local)
    return None


def eval_dataset_problems(spec: EvalSpec) -> str | None:
    """`segflow eval --dataset` values that name no dataset, or whose test split cannot be read, or None."""
    for name in spec.datasets:
        try:
            data = dataset_section(name, spec)
        except ValueError as e:  # "dataset 'x': not one of ..."
            return f"--{e}"
        local = f"pass a local copy: --dataset {name.partition('=')[0]}=LOCAL_COPY"
        if problem := split_problem(data, data.test_split, local=local, skip_hint=False):
            return f"--dataset {name!r}: {problem}"
    return None


def run_problems(cfg: Config) -> str | None:
    """The first reason `segflow run` with `cfg` would fail on its model or data, or None."""
    return model_problem(cfg.model.name_or_path) or data_problem(cfg)


def compare_problems(names: list[str], runs_dir: Path) -> str | None:
    """`segflow compare` names that are neither a run nor an evaluation (by directory or id), or None.
    Whether a run has finished is left to the compare flow; this only catches names that match nothing."""
    unknown = [
        n
        for n in names
        if not any(
            (c / "config.yaml").is_file() or (c / "summary.json").is_file()
            for c in (Path(n), runs_dir / n, runs_dir / "evals" / n)
        )
    ]
    if not unknown:
        return None
    import difflib

    known = sorted(p.name for p in runs_dir.glob("*") if (p / "config.yaml").is_file()) + sorted(
        p.name for p in (runs_dir / "evals").glob("*") if (p / "summary.json").is_file()
    )
    msgs = []
    for n in unknown:
        close = difflib.get_close_matches(n, known, n=3, cutoff=0.6)
        listed = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") or "none"
        hint = f"did you mean {', '.join(close)}?" if close else f"runs and evaluations under {runs_dir}: {listed}"
        msgs.append(f"no run or evaluation {n!r} (tried {n}, {runs_dir / n} and {runs_dir / 'evals' / n}); {hint}")
    return "; ".join(msgs)
