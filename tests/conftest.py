"""Shared fixtures. Environment is set before prefect/vllm are imported anywhere in the session:
an isolated PREFECT_HOME and result storage (the harness isolates the DB but not the cache,
specs/prefect.md §6) and the in-process vLLM engine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="segflow-tests-"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect-home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_TMP / "prefect-results")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tasks.engines.vllm_engine import vllm_env_defaults  # noqa: E402

vllm_env_defaults(kv_cache_gib=1)  # the in-process engine with a 1 GiB CPU KV cache, before vllm is imported

from configs.loader import resolve  # noqa: E402

# A run small enough for tests: a few hundred problems, a short SFT, two RL iterations.
SMALL = [
    "data.arith.n_train=200",
    "data.arith.n_test=32",
    "warm_start.steps=60",
    "run.iterations=2",
    "rollout.prompts_per_iteration=8",
    "rollout.samples_per_prompt=4",
    "train.mini_batch_size=32",
    "train.micro_batch_size=16",
    "eval.every=1",
]


@pytest.fixture(scope="session")
def small_config():
    return resolve("default", overrides=SMALL)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained tiny model directory (HF format) with the character tokenizer."""
    from configs.schema import TinyModelSection
    from tasks import tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    tok = tiny_model.build_tokenizer()
    tiny_model.save(tiny_model.build_model(TinyModelSection(), len(tok), seed=0), tok, out)
    return out


@pytest.fixture(scope="session")
def live_engine(tiny_model_dir):
    """The process-wide vLLM engine (the one flows use), started once for the session."""
    from configs.schema import RolloutSection
    from tasks.engines.live import get_engine, shutdown_engine

    engine, _ = get_engine(tiny_model_dir, RolloutSection(), "float32", 0)
    yield engine
    shutdown_engine()
