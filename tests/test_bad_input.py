"""Bad input fails at once with the file, row or key and the bad value named, and exits non-zero.
(Dataset rows: tests/test_datasets.py; the table of messages: docs/errors.md.)"""

import json
import shutil

import pytest
from typer.testing import CliRunner

from flows.cli import app
from storage.parquet import CorruptArtifact, SchemaMismatch, read_parquet, write_parquet
from storage.schemas import GRADES, METRICS
from tasks.models import resolve_model_dir

runner = CliRunner()
ROW = {"run_id": "r", "iteration": 1, "stage": "s", "name": "n", "value": 1.0}


def test_truncated_corrupt_and_mismatched_parquet(tmp_path):
    good = tmp_path / "m.parquet"
    write_parquet([ROW], METRICS, good)
    (tmp_path / "half.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "junk.parquet").write_bytes(b"\xff\x00 not parquet" * 8)
    for name in ("half.parquet", "junk.parquet"):
        with pytest.raises(CorruptArtifact, match=f"{tmp_path / name}: not a readable Parquet file"):
            read_parquet(tmp_path / name, METRICS)
    with pytest.raises(SchemaMismatch, match=r"m.parquet: missing columns \['prompt_id'"):
        read_parquet(good, GRADES)
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "grpo",
            "--rollouts",
            str(tmp_path / "junk.parquet"),
            "--grades",
            str(good),
            "--out",
            str(tmp_path / "a.parquet"),
        ],
    )
    assert res.exit_code == 2 and "junk.parquet" in res.output
    assert not (tmp_path / "a.parquet").exists()  # nothing half-written


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    return d


def test_missing_and_partial_checkpoints(model_copy, tmp_path):
    assert resolve_model_dir(str(model_copy)) == model_copy.resolve()
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="model.safetensors: unreadable safetensors file"):
        resolve_model_dir(str(model_copy))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights"):
        resolve_model_dir(str(model_copy))
    (model_copy / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="never pickled .bin"):
        resolve_model_dir(str(model_copy))
    weights.write_bytes(data)
    (model_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match="lists model-00002-of-00002.safetensors but it is missing"):
        resolve_model_dir(str(model_copy))
    (model_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_dir(str(model_copy))


def test_tokenizer_that_does_not_match_its_model(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**cfg, "vocab_size": 8}))
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's vocab_size is 8"):
        resolve_model_dir(str(model_copy))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=abc", "train.lr='abc': Input should be a valid number"),
        ("train.lr=-1", "train.lr=-1: Input should be greater than 0"),
        ("train.lrr=1", "unknown key 'train.lrr'"),
        (
            "rollout.max_model_len=64",
            "data.max_prompt_tokens=96 leaves no room for a response under rollout.max_model_len=64",
        ),
    ],
)
def test_config_errors_name_the_key_and_value(tmp_path, override, expected):
    res = runner.invoke(app, ["run", "--set", override, "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and expected in res.output.replace("\n", " ")
    assert list(tmp_path.iterdir()) == []


def test_sql_command_refuses_writes(tmp_path):
    res = runner.invoke(app, ["sql", "copy (select 1) to 'x.csv'", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "read-only: statement 1 is COPY" in res.output
    assert not (tmp_path / "x.csv").exists()
