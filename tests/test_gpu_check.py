"""bench/gpu_check.py at its small shape on the CPU, the way a GPU machine without the orchestration
stack runs it: with vLLM, Prefect, DuckDB, pydantic and pyarrow unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("vllm", "prefect", "duckdb", "pydantic", "pyarrow")
# sys.modules[name] = None makes `import name` (and its submodules) raise ImportError in that process.
RUN = (
    "import runpy, sys\n"
    f"for m in {BLOCKED!r}: sys.modules[m] = None\n"
    "sys.argv = ['gpu_check.py', '--small', '--device', 'cpu']\n"
    "runpy.run_path('bench/gpu_check.py', run_name='__main__')\n"
)


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_blocker_really_blocks():
    probe = subprocess.run(
        [sys.executable, "-c", RUN.split("sys.argv")[0] + "import prefect"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "ModuleNotFoundError: import of prefect halted" in probe.stderr


def test_gpu_check_runs_without_the_orchestration_stack_and_the_master_moves():
    proc = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("result: ")][-1]
    r = json.loads(line.removeprefix("result: "))
    assert r["shape"] == "small" and r["steps"] == 4 and r["peak_gpu_gib"] is None
    assert r["master_changed"] >= 0.99 and r["changed_master_norm"] >= 0.99  # lr 1e-6 reaches the float32 master
    assert r["changed_bf16_copy"] < 0.5  # ... while its bf16 cast moves far less: why stale_update reads the master
    assert r["bf16_in_place_changed"] < 0.1  # the old behaviour loses the update
    assert r["resume_master_exact"] and r["engine_weights_are_master_cast"]
    assert r["train_tokens_per_s"] > 0
    assert "master entries changed: 0.99" in proc.stdout


def test_its_memory_arithmetic_is_readmes():
    """The figure gpu_check prints beside the measured peak is the one README states for its batch."""
    mod = _module()
    assert mod.param_count(mod.QWEN05B) == 494_032_768  # Qwen2.5-0.5B's published size
    _, prompt, completion, _, micro = mod.BATCH["qwen05b"]
    gib = mod.readme_estimate_gib(mod.QWEN05B, micro, prompt + completion, mod.TRAIN["logprob_chunk"])
    assert f"{gib:.1f} GiB" in (ROOT / "README.md").read_text()  # 21.1 GiB


def test_its_train_settings_are_valid_train_section_keys():
    """gpu_check spells out its train settings (configs.schema needs pydantic): they must still be keys and
    values the schema accepts."""
    from configs.schema import TrainSection

    section = TrainSection(**_module().TRAIN, mini_batch_size=8, micro_batch_size=4)
    assert section.lr == 1e-6 and section.lora_rank == 0
