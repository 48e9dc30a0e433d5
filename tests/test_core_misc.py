import ast
from pathlib import Path

import pytest

from tasks.algos import arith
from tasks.algos.metrics import step_metrics
from tasks.algos.seeding import derive_seed, iteration_prompts

ALGOS = Path(__file__).resolve().parent.parent / "tasks" / "algos"
FORBIDDEN = {"prefect", "duckdb", "vllm", "pyarrow", "storage", "transformers", "flows"}


def test_pure_core_imports_nothing_impure():
    for f in ALGOS.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{f.name} imports {n}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                pytest.fail(f"{f.name} does file I/O")


def test_arith_solution_is_correct_and_formatted():
    p = arith.solve([3, 5, 2, 7], ["+", "-", "+"])
    assert p.question == "3+5-2+7"
    assert p.solution == "3+5=8\n8-2=6\n6+7=13\n#### 13"
    assert p.answer == 13


def test_arith_steps_match_only_the_worked_running_total():
    solution = "3+5=8\n8-2=6\n6+7=13\n#### 13"
    assert arith.steps_match(solution, solution)
    assert arith.steps_match("3 + 5 = 8\n\n8-2=6\n6+7=13\n#### 13\n", solution)  # spacing is not a step
    # the right answer by luck: a wrong step, then a wrong step that cancels it
    assert not arith.steps_match("3+5=9\n9-2=6\n6+7=13\n#### 13", solution)
    assert not arith.steps_match("3+5=8\n8-2=6\n#### 13", solution)  # a step skipped
    assert not arith.steps_match("#### 13", solution)
    assert not arith.steps_match("", solution)


def test_step_metrics_count_unfaithful_correct_answers():
    statuses = ["ok", "ok", "ok", "wrong", "ok", "truncated"]
    steps_ok = [True, False, True, False, False, True]
    assert step_metrics(statuses, steps_ok) == {"frac_ok_wrong_steps": 2 / 4}  # wrong answers do not count
    assert step_metrics(["wrong"], [False]) == {"frac_ok_wrong_steps": 0.0}  # no correct answer at all


def test_arith_generation_deterministic_distinct_and_disjoint():
    a = arith.generate(300, 3, 4, 9, seed=5)
    assert a == arith.generate(300, 3, 4, 9, seed=5)
    assert len({p.question for p in a}) == 300
    train, test = arith.split(a, 50)
    assert not {p.question for p in train} & {p.question for p in test}
    for p in a:
        assert eval(p.question) == p.answer  # noqa: S307 - the question is digits and +-


def test_arith_too_many_problems_fails_clearly():
    with pytest.raises(ValueError, match="distinct problems"):
        arith.generate(1000, 2, 2, 1, seed=0)


def test_seeds_are_stable_and_distinct():
    assert derive_seed("run", 1, "p", 0) == derive_seed("run", 1, "p", 0)
    assert len({derive_seed("run", 1, "p", s) for s in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**63


def test_iteration_prompts_cover_each_epoch_once():
    seen = [i for it in range(1, 6) for i in iteration_prompts(20, 8, it, seed=0)][:40]
    assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:40]) == list(range(20))
    assert iteration_prompts(20, 8, 3, seed=0) == iteration_prompts(20, 8, 3, seed=0)
    with pytest.raises(ValueError, match=r"rollout\.prompts_per_iteration=8 is more than the 5 training prompts"):
        iteration_prompts(5, 8, 1, seed=0)
