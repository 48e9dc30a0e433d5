"""The task registry (tasks/datasets/registry.py) is the only place that lists task names; what differs by
task is in the task's module (tasks/datasets/<task>.py)."""

import ast
import json
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from configs.loader import resolve
from configs.schema import Config, DataSection
from flows.cli import app
from flows.eval_spec import EvalSpec
from tasks.algos.grading import RewardScheme
from tasks.datasets import arith
from tasks.datasets.graders import grade_all
from tasks.datasets.registry import EVAL_DATASET_USAGE, EVAL_DATASETS, TASK_NAMES, TASKS, spec_of_task, task_module
from tasks.datasets.rows import BadRow

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("flows", "tasks", "storage", "configs")
# The registry and the task modules may name tasks; nothing else may.
ALLOWED = {ROOT / "tasks" / "datasets" / f"{n}.py" for n in ("registry", *TASK_NAMES)}
OLD_LIST_NAMES = {"NUMERIC_TASKS", "DATASET_PRESETS"}
SCHEME = RewardScheme(correct=1.0, wrong=0.0, no_answer=0.0, truncated=-0.5, multiple_answers=None)


def _is_task(node) -> bool:
    return isinstance(node, ast.Constant) and node.value in TASK_NAMES


def _task_list(node) -> bool:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task(e) for e in node.elts)
    return (isinstance(node, ast.Name) and node.id in OLD_LIST_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in OLD_LIST_NAMES
    )


def task_tests(source: str) -> list[str]:
    """Comparisons against a task name (`task == "arith"`, `task in ("arith", "gsm8k")`, `case "math":`),
    and task names written out as a list (a tuple/list/set/Literal of 2+, or dict keys), as 'line: code'."""
    found: dict[int, ast.AST] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            hit = any(_is_task(x) or _task_list(x) for x in [node.left, *node.comparators])
        elif isinstance(node, ast.MatchValue):
            hit = _is_task(node.value)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            hit = sum(map(_is_task, node.elts)) >= 2
        elif isinstance(node, ast.Dict):
            hit = sum(map(_is_task, node.keys)) >= 2
        else:
            hit = isinstance(node, ast.Name) and node.id in OLD_LIST_NAMES
        if hit:
            found.setdefault(node.lineno, node)
    return [f"{line}: {ast.get_source_segment(source, n)}" for line, n in sorted(found.items())]


def test_the_checker_finds_each_kind_of_task_test():
    src = (
        'a = cfg.data.task == "arith"\nb = task in ("arith", "gsm8k")\nc = task in NUMERIC_TASKS\n'
        'd: Literal["arith", "gsm8k", "math"] = "arith"\ne = {"gsm8k": 1, "math": 2}\n'
        'match task:\n    case "math":\n        pass\n'
        'ok = spec_of_task(task).synthetic\ndefault = "arith"\nmsg = f"the {task} task"\nimport math\n'
    )
    assert [f.split(":")[0] for f in task_tests(src)] == ["1", "2", "3", "4", "5", "7"]


def test_no_task_name_test_outside_the_registry_and_task_modules():
    offenders = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path not in ALLOWED and "__pycache__" not in path.parts:
                offenders += [f"{path.relative_to(ROOT)}:{hit}" for hit in task_tests(path.read_text())]
    assert not offenders, "ask tasks/datasets/registry.py (spec_of_task / task_module) instead:\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_registered_task_has_its_module_interface(name):
    module = task_module(name)
    assert module.__name__ == f"tasks.datasets.{name}"
    for fn in ("reference", "grade", "extra_metrics") + (("synthetic_records",) if TASKS[name].synthetic else ()):
        assert callable(getattr(module, fn, None)), f"tasks/datasets/{name}.py has no {fn}()"


def test_config_and_eval_accept_exactly_the_registered_tasks():
    assert typing.get_args(DataSection.model_fields["task"].annotation) == TASK_NAMES == ("arith", "gsm8k", "math")
    assert typing.get_args(EvalSpec.model_fields["jsonl_task"].annotation) == TASK_NAMES


@pytest.mark.parametrize("dataset", sorted(EVAL_DATASETS))
def test_every_named_eval_dataset_resolves_to_a_preset_of_its_task(dataset):
    owner = next(s.name for s in TASKS.values() if dataset in dict(s.eval_datasets))
    assert resolve(EVAL_DATASETS[dataset]).data.task == owner


def test_eval_dataset_usage_offers_local_copies_only_of_read_datasets():
    assert EVAL_DATASET_USAGE == "arith | gsm8k[=LOCAL] | math500[=LOCAL]"


def test_unknown_task_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"task 'poetry' is not registered; known: arith, gsm8k, math"):
        spec_of_task("poetry")
    with pytest.raises(ValueError, match="known: arith, gsm8k, math"):
        grade_all("poetry", ["#### 1"], ["1"], ["stop"], SCHEME)


def test_grade_cli_names_the_bad_task_before_reading_the_input(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"response": "#### 3", "reference": "3"}) + "\n")
    res = CliRunner().invoke(app, ["grade", "--task", "poetry", "--input", str(f)])
    assert res.exit_code == 2 and "--task: task 'poetry' is not registered; known: arith, gsm8k, math" in res.output


def test_synthetic_task_rejects_a_data_source():
    with pytest.raises(ValueError, match=r"data.source='x.jsonl': the arith task is synthetic only"):
        Config(data={"task": "arith", "source": "x.jsonl"})


def test_arith_extra_metrics_count_right_answers_with_wrong_steps():
    sol = "3 + 4 = 7\n7 - 2 = 5\n#### 5"
    texts = [sol, "3+4=7\n7-2=5\n#### 5", "3 + 2 = 5\n#### 5", "#### 4", "#### 5"]
    statuses = ["ok", "ok", "ok", "wrong", "ok"]
    # of the 3 ok responses with a solution (the last has none), one took other steps
    assert arith.extra_metrics(statuses, texts, [sol, sol, sol, sol, ""]) == {"frac_ok_wrong_steps": 1 / 3}
    assert arith.extra_metrics(statuses, texts, [""] * 5) == {}
    assert task_module("gsm8k").extra_metrics(statuses, texts, [sol] * 5) == {}


def test_gsm8k_reference_is_the_tail_after_hashes_and_the_rest_the_solution():
    cfg = DataSection(task="gsm8k", source="x")
    ref, sol = task_module("gsm8k").reference({"answer": "2*3=6\n#### 6"}, cfg, "", "line 1")
    assert (ref, sol) == ("6", "2*3=6\n#### 6")
    with pytest.raises(BadRow, match=r"line 4: field 'answer' has nothing after '####'"):
        task_module("gsm8k").reference({"answer": "2*3=6\n####  "}, cfg, "", "line 4")


def test_math_reference_falls_back_to_the_last_boxed_answer_of_the_solution():
    cfg = DataSection(task="math", source="x", solution_field="solution")
    sol = r"So $x=\boxed{2}$, hence $\boxed{\frac{1}{2}}$."
    assert task_module("math").reference({"solution": sol}, cfg, sol, "row 0") == (r"\frac{1}{2}", sol)
    assert task_module("math").reference({"answer": "3", "solution": sol}, cfg, sol, "row 0") == ("3", sol)
    with pytest.raises(BadRow, match=r"row 2: no field 'answer' and no \\boxed\{\} answer"):
        task_module("math").reference({"solution": "no box"}, cfg, "no box", "row 2")
