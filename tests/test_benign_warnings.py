"""Known-benign vLLM warnings are hidden by default and shown with SEGFLOW_VERBOSE=1 (`segflow run --verbose`)."""

from __future__ import annotations

import logging

import pytest

from tasks.engines import vllm_engine

LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"


@pytest.fixture
def layerwise_logger():
    logger = logging.getLogger(LAYERWISE)
    saved = list(logger.filters)
    for f in saved:
        logger.removeFilter(f)
    yield logger
    for f in list(logger.filters):
        logger.removeFilter(f)
    for f in saved:
        logger.addFilter(f)


def _logged(logger, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LAYERWISE):
        # As vLLM logs it (layerwise.py): the layer's class name as an argument.
        logger.warning("%s: Failed to load weights", "RotaryEmbedding")
        logger.warning("%s: Failed to load weights", "QKVParallelLinear")  # a real failure: must show
    return [r.getMessage() for r in caplog.records if r.name == LAYERWISE]


def test_rotary_embedding_reload_warning_is_dropped_and_others_kept(layerwise_logger, caplog, monkeypatch):
    monkeypatch.delenv("SEGFLOW_VERBOSE", raising=False)
    vllm_engine.quiet_benign_vllm_warnings()
    vllm_engine.quiet_benign_vllm_warnings()  # once per engine start: one filter, not one per start
    assert sum(isinstance(f, vllm_engine.DropMessages) for f in layerwise_logger.filters) == 1
    assert _logged(layerwise_logger, caplog) == ["QKVParallelLinear: Failed to load weights"]


def test_verbose_shows_the_rotary_embedding_warning(layerwise_logger, caplog, monkeypatch):
    monkeypatch.setenv("SEGFLOW_VERBOSE", "1")
    vllm_engine.quiet_benign_vllm_warnings()
    assert _logged(layerwise_logger, caplog) == [
        "RotaryEmbedding: Failed to load weights",
        "QKVParallelLinear: Failed to load weights",
    ]


def test_segflow_run_verbose_sets_segflow_verbose(monkeypatch):
    import os

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("SEGFLOW_VERBOSE", "0")  # restored (removed) after the test
    result = CliRunner().invoke(app, ["run", "--preset", "no_such_preset", "--verbose"])
    assert result.exit_code == 2  # the preset fails, after --verbose took effect and before any engine
    assert os.environ["SEGFLOW_VERBOSE"] == "1"


def test_engine_start_deprecations_ignored_unless_verbose(monkeypatch):
    import warnings

    def raised() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vllm_engine.quiet_benign_vllm_warnings()
            warnings.warn(
                "`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning, stacklevel=1
            )
            warnings.warn("`torch.jit.script_method` is deprecated. Please switch", DeprecationWarning, stacklevel=1)
            warnings.warn(
                "`torch.distributed.reduce_op` is deprecated", DeprecationWarning, stacklevel=1
            )  # other category
        return [f"{w.category.__name__}: {w.message}" for w in caught]

    monkeypatch.delenv("SEGFLOW_VERBOSE", raising=False)
    assert raised() == ["DeprecationWarning: `torch.distributed.reduce_op` is deprecated"]
    monkeypatch.setenv("SEGFLOW_VERBOSE", "1")
    assert len(raised()) == 3
