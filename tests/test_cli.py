import json
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from flows.cli import app
from storage.parquet import read_parquet
from storage.schemas import ADVANTAGES
from tasks.algos import estimators

runner = CliRunner()


def test_grade_command(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"response": "3+5=8\n#### 8", "reference": "8"},
                {"response": "#### 8", "reference": "8", "finish_reason": "length"},
                {"response": "nothing", "reference": "8"},
            ]
        )
        + "\n"
    )
    res = runner.invoke(app, ["grade", "--task", "arith", "--input", str(f), "--set", "truncated=-1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert [(r["score"], r["status"]) for r in rows] == [(1.0, "ok"), (-1.0, "truncated"), (0.0, "no_answer")]
    out = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["grade", "--task", "arith", "--input", str(f), "--out", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def test_grade_command_rejects_bad_input(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"response": "x"}\n')
    res = runner.invoke(app, ["grade", "--task", "gsm8k", "--input", str(f)])
    assert res.exit_code == 2 and "in.jsonl:1" in res.output and "reference" in res.output
    res = runner.invoke(app, ["grade", "--task", "poetry", "--input", str(f)])
    assert res.exit_code == 2


def test_grade_input_keeps_unicode_line_separators_inside_strings(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028, U+2029 and U+0085 raw; only "\n" ends a JSONL line.
    rows = [{"response": f"3+5=8{sep}so\n#### 8", "reference": "8"} for sep in ("\u2028", "\u2029", "\u0085")]
    f = tmp_path / "in.jsonl"
    f.write_bytes(("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode())
    assert len(f.read_text().splitlines()) > 3  # the old reader would have cut these lines
    res = runner.invoke(app, ["grade", "--task", "arith", "--input", str(f)])
    assert res.exit_code == 0, res.output
    assert [(json.loads(x)["score"], json.loads(x)["status"]) for x in res.output.splitlines()] == [(1.0, "ok")] * 3


def test_grade_input_not_utf8_names_line_and_byte(tmp_path):
    f = tmp_path / "in.jsonl"
    bad = b'{"response": "caf\xe9 #### 8", "reference": "8"}'
    f.write_bytes(b'{"response": "#### 8", "reference": "8"}\n' + bad + b"\n")
    res = runner.invoke(app, ["grade", "--task", "arith", "--input", str(f)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    offset = bad.index(b"\xe9")  # 17
    assert f"error: {f}:2: not UTF-8 (byte 0xe9 at offset {offset}) (the file must be UTF-8)" in res.output.replace(
        "\n", ""
    )


def test_grade_input_utf16_says_save_as_utf8(tmp_path):
    text = json.dumps({"response": "#### 8", "reference": "8"}) + "\n"
    f = tmp_path / "in.jsonl"
    f.write_bytes(text.encode("utf-16"))  # with a BOM: ff fe
    res = runner.invoke(app, ["grade", "--task", "arith", "--input", str(f)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert (
        "in.jsonl:1: not UTF-8 (byte 0xff at offset 0) (the file looks UTF-16: save it as UTF-8)"
        in res.output.replace("\n", "")
    )
    f.write_bytes(text.encode("utf-16-le"))  # no BOM: "{" then a NUL byte
    res = runner.invoke(app, ["grade", "--task", "arith", "--input", str(f)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert "in.jsonl:1: NUL byte at offset 1 (the file looks UTF-16: save it as UTF-8)" in res.output.replace("\n", "")


def _by_sample(path):
    t = read_parquet(path, ADVANTAGES)
    return [a for _, a in sorted(zip(t["sample_index"].to_pylist(), t["advantage"].to_pylist()))]


def test_advantages_command_recomputes_with_any_estimator(tmp_path):
    from tests.test_estimators import _write_batch

    scores, groups = [1.0, 0.0, 0.0, 1.0, 1.0], ["a", "a", "a", "b", "b"]
    _write_batch(tmp_path, scores, groups, [1] * 5, [4, 3, 2, 1, 0])
    out = tmp_path / "adv.parquet"
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "rloo",
            "--rollouts",
            str(tmp_path / "rollouts.parquet"),
            "--grades",
            str(tmp_path / "grades.parquet"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(_by_sample(out), estimators.rloo(scores, groups))
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "ppo",
            "--rollouts",
            str(tmp_path / "rollouts.parquet"),
            "--grades",
            str(tmp_path / "grades.parquet"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 2 and "advantage.estimator='ppo': Input should be 'grpo'" in res.output
    # estimator options: RED-Drop drops sample 2 (the negative with the smallest seed) of group a
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "rec",
            "--rollouts",
            str(tmp_path / "rollouts.parquet"),
            "--grades",
            str(tmp_path / "grades.parquet"),
            "--out",
            str(out),
            "--set",
            "rec_drop=balance",
        ],
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(_by_sample(out), [0.5, -0.5, 0.0, 0.0, 0.0])
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "rec",
            "--rollouts",
            str(tmp_path / "rollouts.parquet"),
            "--grades",
            str(tmp_path / "grades.parquet"),
            "--out",
            str(out),
            "--set",
            "rec_drop=sometimes",
        ],
    )
    assert res.exit_code == 2 and "rec_drop='sometimes'" in res.output


def test_advantages_command_for_spo_chain_segments(tmp_path):
    from storage.parquet import write_parquet
    from storage.schemas import SEGMENT_ADVANTAGES, SEGMENTS

    rows = [
        {
            "run_id": "r",
            "iteration": 1,
            "prompt_id": "p",
            "sample_index": 0,
            "prefix_id": None,
            "segment_index": i,
            "start_token": 2 * i,
            "end_token": 2 * i + 2,
            "num_cutpoints": 1,
            "cutpoints": [2 * i],
            "v_start": a,
            "n_start": 4,
            "v_end": b,
            "n_end": 4,
        }
        for i, (a, b) in enumerate([(0.5, 0.25), (0.25, 1.0)])
    ]
    write_parquet(rows, SEGMENTS, tmp_path / "segments.parquet")
    out = tmp_path / "seg_adv.parquet"
    res = runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "spo_chain",
            "--segments",
            str(tmp_path / "segments.parquet"),
            "--out",
            str(out),
            "--set",
            "normalize=none",
        ],
    )
    assert res.exit_code == 0, res.output
    t = read_parquet(out, SEGMENT_ADVANTAGES)
    assert sorted(zip(t["segment_index"].to_pylist(), t["advantage"].to_pylist())) == [(0, -0.25), (1, 0.75)]
    res = runner.invoke(app, ["advantages", "--estimator", "spo_chain", "--out", str(out)])
    assert res.exit_code == 2 and "--segments" in res.output


def test_run_rejects_bad_config_before_any_work(tmp_path):
    res = runner.invoke(app, ["run", "--set", "train.lrr=1", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown key 'train.lrr'" in res.output
    assert list(tmp_path.iterdir()) == []


def _tree_run(tmp_path):
    """A run directory holding one iteration's SPO-tree (the hand-built EARLY tree of test_spo_tree)."""
    from storage.parquet import write_parquet
    from storage.schemas import TREE_NODES
    from tests.test_spo_tree import EARLY, nodes_table

    root = tmp_path / "runs" / "spo_tree-x"
    (root / "iterations" / "0001").mkdir(parents=True)
    (root / "config.yaml").write_text("advantage:\n  estimator: spo_tree\n")
    nodes = root / "iterations" / "0001" / "tree_nodes.parquet"
    write_parquet(nodes_table({k.replace("r", "q7", 1): v for k, v in EARLY.items()}), TREE_NODES, nodes)
    return root, nodes


def test_advantages_command_for_spo_tree_nodes(tmp_path):
    from storage.schemas import TREE_ADVANTAGES

    _, nodes = _tree_run(tmp_path)
    out = tmp_path / "tree_adv.parquet"
    res = runner.invoke(
        app,
        ["advantages", "--estimator", "spo_tree", "--nodes", str(nodes), "--out", str(out), "--set", "value=children"],
    )
    assert res.exit_code == 0, res.output
    adv = dict(zip(*(read_parquet(out, TREE_ADVANTAGES)[c].to_pylist() for c in ("node_id", "advantage"))))
    assert np.isclose(adv["q7/0"], 1 / 3) and np.isclose(adv["q7/1"], -1 / 3)  # the reference's mean of children
    res = runner.invoke(
        app,
        ["advantages", "--estimator", "spo_tree", "--nodes", str(nodes), "--out", str(out), "--set", "value=median"],
    )
    assert res.exit_code == 2 and "value" in res.output and "median" in res.output


def test_tree_command_draws_values_and_advantages(tmp_path):
    root, nodes = _tree_run(tmp_path)
    res = runner.invoke(app, ["tree", str(root), "--iteration", "1", "--question", "q7", "--no-text"])
    assert res.exit_code == 2 and "tree_nodes + tree_advantages" in res.output  # advantages not computed yet
    runner.invoke(
        app,
        [
            "advantages",
            "--estimator",
            "spo_tree",
            "--nodes",
            str(nodes),
            "--out",
            str(nodes.parent / "tree_advantages.parquet"),
        ],
    )
    res = runner.invoke(app, ["tree", "spo_tree-x", "--runs-dir", str(root.parent), "-k", "1", "-q", "q7", "--no-text"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("q7  V=0.50 (4 leaves)")
    assert any(line.startswith("├── /0  *A=+0.50  V=1.00") and "leaf 1.00 ok" in line for line in lines)
    assert any("/1/2  *A=+0.67  V=1.00" in line for line in lines)
    res = runner.invoke(app, ["tree", str(root), "-k", "1"])
    assert res.exit_code == 0 and res.output.startswith("q7  V=0.50")
    res = runner.invoke(app, ["tree", str(root), "-k", "1", "-q", "nope"])
    assert res.exit_code == 2 and "nope" in res.output and "q7" in res.output


def test_run_refuses_a_run_another_process_is_writing(tmp_path):
    import subprocess
    import sys

    from configs.loader import resolve, run_id

    run_dir = tmp_path / run_id(resolve("default"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom storage.run_lock import run_lock\n"
            f"with run_lock({str(run_dir)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = runner.invoke(app, ["run", "--runs-dir", str(tmp_path)])
        assert res.exit_code == 2, res.output
        assert f"locked by pid {holder.pid}" in res.output and str(run_dir) in res.output
        assert not (run_dir / "config.yaml").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()


def test_console_script_keeps_exit_codes_and_output_through_its_quick_exit(tmp_path):
    """flows.cli.main ends the process from its last exit handler: codes and buffered output must survive."""
    import subprocess

    def run(*args):
        code = "import sys; from flows.cli import main; sys.argv = ['segflow', *sys.argv[1:]]; main()"
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parent.parent,
        )

    ok = run("presets")
    assert ok.returncode == 0 and "spo_tree" in ok.stdout.split()
    bad = run("run", "--preset", "no_such_preset", "--runs-dir", str(tmp_path))
    assert bad.returncode == 2 and "no_such_preset" in bad.stderr
    usage = run("run", "--no-such-option")
    assert usage.returncode == 2
