"""The estimator registry (tasks/algos/registry.py) is the only place that knows estimator families."""

import ast
import importlib
from pathlib import Path

import pytest

from configs.loader import resolve
from configs.schema import Config
from storage.catalog import SQL_DIR
from tasks.algos.registry import ESTIMATORS, REGISTRY, Family, names, spec_of, twin

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("flows", "tasks", "storage", "configs")
REGISTRY_FILE = ROOT / "tasks" / "algos" / "registry.py"
FAMILY_TUPLE_NAMES = {"RESPONSE_ESTIMATORS", "SEGMENT_ESTIMATORS", "TREE_ESTIMATORS", "ESTIMATOR_FAMILIES"}


def _is_name(node) -> bool:
    return isinstance(node, ast.Constant) and node.value in REGISTRY


def _family_tuple(node) -> bool:
    """A literal tuple/list/set of estimator names, or a reference to one of the old family tuples."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_name(e) for e in node.elts)
    if isinstance(node, ast.BinOp):  # SEGMENT_ESTIMATORS + TREE_ESTIMATORS
        return _family_tuple(node.left) or _family_tuple(node.right)
    return (isinstance(node, ast.Name) and node.id in FAMILY_TUPLE_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in FAMILY_TUPLE_NAMES
    )


def family_tests(source: str) -> list[str]:
    """Comparisons that decide an estimator's family by name (`est in SEGMENT_ESTIMATORS`, `est == "spo_tree"`),
    family tuples written out, and definitions of the old family tuple names, as 'line: code'."""
    found: dict[int, ast.AST] = {}  # one per line: ast.walk meets the outermost node (the comparison) first
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            hit = any(_is_name(x) or _family_tuple(x) for x in [node.left, *node.comparators])
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            hit = sum(map(_is_name, node.elts)) >= 2
        else:
            hit = isinstance(node, ast.Name) and node.id in FAMILY_TUPLE_NAMES
        if hit:
            found.setdefault(node.lineno, node)
    return [f"{line}: {ast.get_source_segment(source, n)}" for line, n in sorted(found.items())]


def test_the_checker_finds_each_kind_of_family_test():
    src = (
        "a = est in SEGMENT_ESTIMATORS\nb = est not in schema.TREE_ESTIMATORS + SEGMENT_ESTIMATORS\n"
        'c = est == "spo_tree"\nd = ("spo_chain", "spo_tree")\ne = est in ("spo_chain",)\n'
        "ok = spec.family is Family.TREE or spec.grows_trees\nmsg = \"use 'spo_chain'\"\n"
    )
    assert [f.split(":")[0] for f in family_tests(src)] == ["1", "2", "3", "4", "5"]


def test_no_estimator_family_test_outside_the_registry():
    offenders = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != REGISTRY_FILE and "__pycache__" not in path.parts:
                offenders += [f"{path.relative_to(ROOT)}:{hit}" for hit in family_tests(path.read_text())]
    assert not offenders, "ask tasks/algos/registry.py (spec_of / cfg.advantage.spec) instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_registered_estimator_has_its_sql_file_twin_and_config_section(name):
    spec = spec_of(name)
    sql = SQL_DIR / spec.sql_file
    assert sql.is_file(), f"{name}: no storage/sql/{spec.sql_file}"
    module, fn = spec.twin.split(":")
    assert callable(twin(name)), f"{name}: twin {spec.twin} is not a function"
    assert twin(name) is getattr(importlib.import_module(module), fn)
    header = "\n".join(line for line in sql.read_text().splitlines() if line.startswith("--"))
    assert f"{module.replace('.', '/')}.py::" in header and f"::{fn}" in header, (
        f"{spec.sql_file} does not name its numpy twin {spec.twin}"
    )
    assert spec.section in Config.model_fields, f"{name}: config has no section {spec.section!r}"


def test_every_sql_estimator_file_is_registered():
    files = {p.name for p in SQL_DIR.glob("adv_*.sql")}
    assert files == {spec.sql_file for spec in REGISTRY.values()}


def test_families_partition_the_registry_and_the_config_accepts_each_name():
    assert sorted(n for f in Family for n in names(f)) == sorted(ESTIMATORS)
    assert names(Family.SEGMENT) == ("spo_chain",) and names(Family.TREE) == ("spo_tree",)
    for name in ESTIMATORS:
        cfg = resolve("default", overrides=[f"advantage.estimator={name}"])
        assert cfg.advantage.spec is REGISTRY[name]


def test_an_unknown_estimator_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'ppo' is not registered; known: asymre, dr_grpo, grpo"):
        spec_of("ppo")


def test_family_properties_are_what_the_flow_asks():
    chain, tree, grpo = spec_of("spo_chain"), spec_of("spo_tree"), spec_of("grpo")
    assert (chain.reads_segments, chain.grows_trees, chain.monte_carlo_values) == (True, False, True)
    assert (tree.reads_segments, tree.grows_trees, tree.monte_carlo_values) == (False, True, True)
    assert (grpo.reads_segments, grpo.grows_trees, grpo.monte_carlo_values) == (False, False, False)
    assert (chain.section, tree.section, grpo.section) == ("spo", "tree", "advantage")
    assert (chain.inputs, tree.inputs, grpo.inputs) == (("segments",), ("nodes",), ("rollouts", "grades"))
