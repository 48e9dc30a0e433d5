"""Namespaced metric names (storage/metric_names.py): the list, its two mappings, the files they are stored in,
and old run directories (flat names) read by `segflow sql`, `segflow report` and `segflow compare` like new ones."""

from __future__ import annotations

import ast
import html
import json
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.catalog import query
from storage.layout import RunLayout
from storage.metric_names import ALL_METRICS, FAMILIES, NAMESPACES, UNLISTED, describe, flat, qualified
from storage.metrics import read_metrics, write_metrics
from storage.parquet import write_parquet
from storage.schemas import METRICS

ROOT = Path(__file__).resolve().parents[1]

# Written out by hand, not derived from the list: the names the issue asks for and one of each namespace.
PAIRS = [
    ("clipfrac", "actor/clipfrac"),
    ("approx_kl", "actor/approx_kl"),
    ("grad_norm", "actor/grad_norm"),
    ("entropy", "actor/entropy"),
    ("loss", "actor/loss"),
    ("adv_std", "adv/std"),
    ("adv_hist_09", "adv/hist_09"),
    ("frac_adv_zero", "adv/frac_zero"),
    ("frac_truncated", "rollout/truncated"),
    ("segments_per_response", "spo/segments_per_response"),
    ("eval_accuracy", "eval/accuracy"),
    ("eval_frac_truncated", "eval/truncated"),
    ("train_seconds", "perf/train_seconds"),
    ("tokens_per_second", "perf/generation_tokens_per_second"),
    ("reward_mean", "reward/mean"),
    ("accuracy", "reward/accuracy"),
    ("frac_no_answer", "reward/frac_no_answer"),
    ("kl_ref", "kl/ref"),
    ("kl_ref_sampled_per_token", "kl/ref_sampled_per_token"),
    ("nodes_per_tree", "tree/nodes_per_tree"),
    ("edges_trained", "replay/edges_trained"),
    ("test_skipped_bad_utf8", "data/test_skipped_bad_utf8"),
    ("sft_loss", "sft/loss"),
    ("frac_master_changed", "health/frac_master_changed"),
]


@pytest.mark.parametrize("legacy, name", PAIRS)
def test_qualified_and_flat_map_both_ways(legacy, name):
    assert qualified(legacy) == name and flat(name) == legacy
    assert qualified(name) == name and flat(legacy) == legacy  # either form goes in


def test_a_family_of_metrics_maps_each_member():
    assert qualified("buffer_age_0") == "replay/buffer_age_0" and qualified("buffer_age_12") == "replay/buffer_age_12"
    assert flat("replay/buffer_age_12") == "buffer_age_12"
    assert describe("buffer_age_3") is describe("replay/buffer_age_3") is describe("replay/buffer_age_<k>")
    assert qualified("buffer_age_x") == "other/buffer_age_x" and describe("buffer_age_x") is None


def test_families_never_overlap_a_listed_name_or_each_other():
    """The catalog's view joins each stored name to at most one entry (storage/sql/metrics_view.sql)."""
    for fam in FAMILIES:
        assert [m.legacy for m in ALL_METRICS if re.fullmatch(fam.legacy_regex, m.legacy) and m is not fam] == []
        example = fam.legacy.replace("<k>", "7")
        assert [f for f in FAMILIES if re.fullmatch(f.legacy_regex, example)] == [fam]


def test_an_unlisted_name_reads_as_other_and_back():
    assert qualified("brand_new_metric") == "other/brand_new_metric"
    assert flat("other/brand_new_metric") == "brand_new_metric"
    assert flat("vendor/thing") == "vendor/thing"  # namespaced but not ours: kept as it is


def test_every_metric_is_unique_namespaced_and_described():
    names = [m.name for m in ALL_METRICS]
    legacy = [m.legacy for m in ALL_METRICS]
    assert len(set(names)) == len(names) and len(set(legacy)) == len(legacy)
    assert {m.namespace for m in ALL_METRICS} == set(NAMESPACES)  # no namespace without a metric, or unlisted
    assert UNLISTED not in NAMESPACES
    for m in ALL_METRICS:
        assert re.fullmatch(r"[a-z]+/[a-z0-9_]+(<k>)?", m.name), m
        assert m.is_family == ("<k>" in m.name), m
        assert "/" not in m.legacy and m.description.strip(), m


def test_the_metrics_doc_is_current():
    from storage.metric_names import DOC, render

    assert DOC.read_text() == render(), "docs/metrics.md is stale: run `python -m storage.metric_names`"
    assert "| `actor/clipfrac` | `clipfrac` |" in DOC.read_text()


def family_keys() -> set[str]:
    """The names the stage helpers build from loops and f-strings: every grade status, skip reason, histogram
    bin and engine timing (rollout, evaluate's `eval_`, spo_values' `mc_`)."""
    from tasks.algos.grading import STATUSES
    from tasks.algos.metrics import advantage_metrics, grade_metrics, group_metrics, step_metrics
    from tasks.prepare import skip_metrics

    built = {
        **grade_metrics([1.0] * len(STATUSES), list(STATUSES)),
        **group_metrics([0.0, 1.0], ["p", "p"]),
        **step_metrics(["ok"], [False]),
        **advantage_metrics([float(i) for i in range(11)]),  # spread out: every histogram bin is written
        **skip_metrics("train", {}),
        **skip_metrics("test", {}),
    }
    timings = ("engine_start_seconds", "weight_load_seconds")  # tasks/engines/live.py get_engine
    built |= {f"{prefix}{t}": 0.0 for prefix in ("", "eval_", "mc_") for t in timings}
    built |= {f"{split}_{m}": 0.0 for split in ("train", "test") for m in ("prompts", "dropped_too_long")}  # prepare
    return set(built)


def test_the_metric_families_of_the_stage_helpers_are_listed():
    built = family_keys()
    assert "adv_hist_09" in built and "frac_parse_error" in built and "test_skipped_duplicate_id" in built
    assert sorted(k for k in built if qualified(k).startswith(f"{UNLISTED}/")) == []


# --- the stages' source: every literal key that reaches write_metrics ---------------------------------------


class MetricKeys:
    """Keys of the dicts that reach write_metrics, followed through the source with `ast`: dict literals (and
    their `**` parts), names assigned in the same function (`x = {...}`, `x["k"] = ...`, `x |= {...}`,
    `x.update(k=...)`), attributes assigned anywhere in the same module (`self.sums = ...`, class-level tuples),
    `dict.fromkeys(<tuple>)`, dict comprehensions over `x.items()`, and calls to functions of the scanned files
    (their return values; the n-th item of a returned tuple). Literal keys go to `keys`; f-string keys to
    `patterns` as regular expressions, each formatted value a `.+`."""

    def __init__(self, files: list[Path]):
        self.funcs: dict[str, list[ast.FunctionDef]] = defaultdict(list)
        self.in_file: dict[Path, list[ast.FunctionDef]] = defaultdict(list)
        self.module_of: dict[int, ast.Module] = {}
        for f in files:
            module = ast.parse(f.read_text(), str(f))
            for node in ast.walk(module):
                if isinstance(node, ast.FunctionDef):
                    self.funcs[node.name].append(node)
                    self.in_file[f.relative_to(ROOT)].append(node)
                    self.module_of[id(node)] = module
        self.keys: set[str] = set()
        self.patterns: set[str] = set()
        self._done: set[tuple] = set()

    def from_write_calls(self) -> set[str]:
        for fn in [f for fns in self.funcs.values() for f in fns]:
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and _called(node) == "write_metrics":
                    for a in node.args[4:5] + [k.value for k in node.keywords if k.arg == "values"]:
                        self.expr(a, fn)
        return self.keys

    def from_variable(self, file: str, var: str) -> set[str]:
        """Keys given to `var` in any function of `file`: metrics that reach write_metrics through a file (a
        JSON record or a training process's output), where the walk cannot follow them."""
        assert self.in_file[Path(file)], f"{file}: no functions found (moved?)"
        for fn in self.in_file[Path(file)]:
            self.ref(("name", var), fn)
        return self.keys

    def key(self, k: ast.expr | None) -> None:
        if isinstance(k, ast.Constant) and isinstance(k.value, str):
            self.keys.add(k.value)
        elif isinstance(k, ast.JoinedStr):
            parts = [re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in k.values]
            self.patterns.add("".join(parts))

    def expr(self, e: ast.expr, scope: ast.AST, item: int | None = None) -> None:
        if isinstance(e, ast.Dict):
            for k, v in zip(e.keys, e.values):
                self.expr(v, scope) if k is None else self.key(k)
        elif isinstance(e, ast.DictComp):
            self.key(e.key)
            it = e.generators[0].iter
            if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr == "items":
                self.expr(it.func.value, scope)
        elif isinstance(e, ast.Tuple) and item is not None and item < len(e.elts):
            self.expr(e.elts[item], scope)
        elif isinstance(e, ast.IfExp):
            self.expr(e.body, scope, item)
            self.expr(e.orelse, scope, item)
        elif isinstance(e, ast.BinOp) and isinstance(e.op, ast.BitOr):
            self.expr(e.left, scope)
            self.expr(e.right, scope)
        elif isinstance(e, ast.Name):
            self.ref(("name", e.id), scope)
        elif isinstance(e, ast.Attribute):
            self.ref(("attr", e.attr), self.module_of.get(id(scope), scope))
        elif isinstance(e, ast.Call):
            self.call(e, scope, item)

    def call(self, e: ast.Call, scope: ast.AST, item: int | None) -> None:
        name = _called(e)
        if name == "fromkeys" and e.args:
            self.strings(e.args[0], scope)
        elif name == "dict":
            self.keys.update(k.arg for k in e.keywords if k.arg)
        elif name in self.funcs and ("call", id(e), name) not in self._done:
            self._done.add(("call", id(e), name))
            for callee in self.funcs[name]:
                for node in ast.walk(callee):
                    if isinstance(node, ast.Return) and node.value is not None:
                        self.expr(node.value, callee, item)

    def ref(self, ref: tuple[str, str], scope: ast.AST) -> None:
        """Every value given to the variable or attribute `ref` in `scope`, and every key set on it."""
        if (id(scope), ref) in self._done:
            return
        self._done.add((id(scope), ref))
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value is not None:
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if _is_ref(t, ref):
                        self.expr(node.value, scope)
                    elif isinstance(t, ast.Tuple):
                        for i, elt in enumerate(t.elts):
                            if _is_ref(elt, ref):
                                self.expr(node.value, scope, item=i)
                    elif isinstance(t, ast.Subscript) and _is_ref(t.value, ref):
                        self.key(t.slice)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
                if _is_ref(node.func.value, ref):
                    self.keys.update(k.arg for k in node.keywords if k.arg)
                    for a in node.args:
                        self.expr(a, scope)

    def strings(self, e: ast.expr, scope: ast.AST) -> None:
        """The string constants of a tuple or list, or of the one a name or attribute is given."""
        if isinstance(e, ast.Tuple | ast.List):
            for x in e.elts:
                self.strings(x.value, scope) if isinstance(x, ast.Starred) else self.key(x)
        elif isinstance(e, ast.Name | ast.Attribute):
            ref = ("name", e.id) if isinstance(e, ast.Name) else ("attr", e.attr)
            where = scope if isinstance(e, ast.Name) else self.module_of.get(id(scope), scope)
            for node in ast.walk(where):
                if isinstance(node, ast.Assign) and any(_is_ref(t, ref) for t in node.targets):
                    self.strings(node.value, where)


def _called(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_ref(t: ast.expr, ref: tuple[str, str]) -> bool:
    """Is `t` the variable ("name", x), or the attribute ("attr", x): `obj.x`, or `x` in a class body?"""
    kind, ident = ref
    if isinstance(t, ast.Name):
        return t.id == ident
    return kind == "attr" and isinstance(t, ast.Attribute) and t.attr == ident


def stage_source_files() -> list[Path]:
    return sorted({*ROOT.glob("tasks/**/*.py"), *ROOT.glob("flows/*.py")})


def test_every_literal_metric_key_in_the_stages_source_is_listed():
    walk = MetricKeys(stage_source_files())
    walk.from_write_calls()
    walk.from_variable("tasks/prepare.py", "metrics")  # the warm start's record (warm_start.json)
    keys = walk.from_variable("tasks/distributed.py", "stats")  # each training process's metrics.json
    # The walk reaches every stage's dict, including those built in helpers (rl_update, grade_metrics, ...).
    reached = {"clipfrac", "train_seconds", "eval_accuracy", "sft_loss", "mc_settled_early", "edges_trained"}
    reached |= {"kl_ref_sampled_per_token", "nodes_per_tree", "kept_edges", "adv_std", "frac_zero_std_groups"}
    reached |= {
        "weight_load_seconds",
        "frac_ok_wrong_steps",
        "generation_seconds",
        "lr",
        "train_launch_seconds",
        "world_size",
    }
    assert reached <= keys, sorted(reached - keys)
    assert sorted(k for k in keys if qualified(k).startswith(f"{UNLISTED}/")) == []
    # f-string keys (`buffer_age_{a}`, `eval_{k}`, `adv_hist_{i:02d}`): each matches a listed name or family.
    assert {r"buffer_age_.+", r"adv_hist_.+", r"eval_.+", r"mc_.+"} <= walk.patterns
    legacy = [m.legacy for m in ALL_METRICS]
    assert sorted(p for p in walk.patterns if not any(re.fullmatch(p, n) for n in legacy)) == []
    # And nothing listed is stale (a renamed metric): every entry is written somewhere, or is the flow's own.
    stale = {m.legacy for m in ALL_METRICS} - keys - family_keys() - {"generated_tokens_per_sample"}
    stale = {n for n in stale if not any(re.fullmatch(p, n) for p in walk.patterns)}  # `buffer_age_<k>`
    assert sorted(stale) == []


def test_the_flows_own_metrics_are_listed():
    """The per-iteration table of rl_train and the report's panels name metrics that must exist."""
    from flows.html_report import REPORT_METRICS
    from flows.rl_train import COMPUTE_METRICS, TABLE_METRICS

    named = {*TABLE_METRICS, *COMPUTE_METRICS.values(), *REPORT_METRICS, "generated_tokens_per_sample"}
    assert sorted(k for k in named if qualified(k).startswith(f"{UNLISTED}/")) == []


# --- stored files: new runs namespaced, old runs flat, both read alike --------------------------------------

VALUES = {
    1: {"grade": {"reward_mean": 0.25, "accuracy": 0.25}, "train": {"clipfrac": 0.125, "train_seconds": 3.0}},
    2: {"grade": {"reward_mean": 0.5, "accuracy": 0.5}, "train": {"clipfrac": 0.0625, "train_seconds": 4.0}},
}
EVALS = {0: 0.25, 2: 0.75}
CONFIG = "run:\n  preset: default\n  iterations: 2\nadvantage:\n  estimator: grpo\n"


def make_run(runs_dir: Path, run_id: str, *, old_format: bool) -> Path:
    """An unfinished run (no summary.json: report and compare read its metrics files) with VALUES and EVALS,
    its metrics files storing flat names (`old_format`, as runs did before namespaces) or namespaced ones."""
    layout = RunLayout(runs_dir=str(runs_dir), run_id=run_id)
    layout.root.mkdir(parents=True)
    layout.config.write_text(CONFIG)
    files = [(layout.metrics(it, stage), it, stage, v) for it, stages in VALUES.items() for stage, v in stages.items()]
    files += [
        (layout.eval_metrics(it), it, "eval", {"eval_accuracy": a, "eval_problems": 8}) for it, a in EVALS.items()
    ]
    for path, it, stage, values in files:
        if old_format:
            rows = [
                {"run_id": run_id, "iteration": it, "stage": stage, "name": k, "value": v} for k, v in values.items()
            ]
            write_parquet(rows, METRICS, path)
        else:
            write_metrics(path, run_id, it, stage, values)
    return layout.root


@pytest.fixture
def runs(tmp_path) -> Path:
    make_run(tmp_path, "old_run", old_format=True)
    make_run(tmp_path, "new_run", old_format=False)
    return tmp_path


def stored_names(path: Path) -> list[str]:
    return pq.read_table(path).column("name").to_pylist()


def test_write_stores_namespaced_names_and_read_returns_flat_keys(tmp_path):
    ref = write_metrics(tmp_path / "metrics-train.parquet", "r", 3, "train", {"clipfrac": 0.5, "actor/lr": 1e-4})
    assert stored_names(ref.path) == ["actor/clipfrac", "actor/lr"]
    assert read_metrics(ref) == {"clipfrac": 0.5, "lr": 1e-4}
    odd = write_metrics(tmp_path / "metrics-x.parquet", "r", 3, "x", {"not_in_the_list": 2})
    assert stored_names(odd.path) == ["other/not_in_the_list"] and read_metrics(odd) == {"not_in_the_list": 2.0}


def test_old_and_new_metrics_files_read_the_same(runs):
    old, new = (RunLayout(runs_dir=str(runs), run_id=r) for r in ("old_run", "new_run"))
    assert stored_names(old.metrics(1, "train")) == ["clipfrac", "train_seconds"]
    assert stored_names(new.metrics(1, "train")) == ["actor/clipfrac", "perf/train_seconds"]
    for layout in (old, new):
        assert read_metrics(layout.metrics(1, "train")) == {"clipfrac": 0.125, "train_seconds": 3.0}
        assert read_metrics(layout.eval_metrics(2)) == {"eval_accuracy": 0.75, "eval_problems": 8.0}


def test_the_catalog_shows_namespaced_names_for_old_and_new_runs(runs):
    sql = "select run_id, iteration, name, value from metrics where stage = 'train' order by 1, 2, 3"
    _, rows = query(runs, sql)
    expected = [(1, "actor/clipfrac", 0.125), (1, "perf/train_seconds", 3.0)]
    expected += [(2, "actor/clipfrac", 0.0625), (2, "perf/train_seconds", 4.0)]
    assert rows == [("new_run", *e) for e in expected] + [("old_run", *e) for e in expected]
    _, rows = query(runs, "select run_id, value from metrics where name = 'eval/accuracy' and iteration = 2")
    assert sorted(rows) == [("new_run", 0.75), ("old_run", 0.75)]
    cols, rows = query(runs, "select * from metric_names where legacy_name = 'adv_std'")
    assert cols == ["name", "legacy_name", "description"] and rows[0][:2] == ("adv/std", "adv_std")
    _, ((n,),) = query(runs, "select count(*) from metric_names")
    assert n == len(ALL_METRICS)


def test_an_old_runs_unlisted_flat_name_reads_as_other_in_the_catalog(tmp_path):
    layout = RunLayout(runs_dir=str(tmp_path), run_id="r")
    names = ("gone_metric", "adv_max", "buffer_age_0", "buffer_age_11", "replay/buffer_age_2")
    rows = [{"run_id": "r", "iteration": 1, "stage": "x", "name": n, "value": 1.0} for n in names]
    write_parquet(rows, METRICS, layout.metrics(1, "x"))
    _, found = query(tmp_path, "select name from metrics order by 1")
    expected = ["adv/max", "other/gone_metric", "replay/buffer_age_0", "replay/buffer_age_11", "replay/buffer_age_2"]
    assert found == [(n,) for n in expected]


def test_sql_cli_on_an_old_run_directory(runs):
    from typer.testing import CliRunner

    from flows.cli import app

    sql = "select name, value from metrics where run_id = 'old_run' and name = 'reward/mean' order by value"
    result = CliRunner().invoke(app, ["sql", sql, "--runs-dir", str(runs), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"name": "reward/mean", "value": 0.25}, {"name": "reward/mean", "value": 0.5}]


def test_the_report_reads_old_and_new_runs_alike(runs):
    from flows.html_report import read_iteration_metrics, write_report
    from flows.run_plots import load_run

    expected = {it: {k: v for stage in VALUES[it].values() for k, v in stage.items()} for it in VALUES}
    pages = []
    for run_id in ("old_run", "new_run"):
        assert read_iteration_metrics(runs / run_id) == expected
        page = write_report(load_run(run_id, runs), runs / f"{run_id}.html").read_text()
        pages.append(html.unescape(page.replace("<wbr>", "")))
    for page in pages:
        assert "actor/clipfrac" in page and "perf/train_seconds" in page  # headers under namespaced names
        assert ">0.0625<" in page and "75.0%" in page  # clipfrac at iteration 2, the last held-out accuracy


def test_compare_reads_old_and_new_runs_alike(runs, tmp_path):
    """What `segflow compare` tabulates and plots (flows/compare.py) from the runs' stored metrics."""
    from flows.run_plots import comparison_rows, eval_problem_counts, load_run, plot_accuracy

    loaded = [load_run(r, runs) for r in ("old_run", "new_run")]
    rows = comparison_rows(loaded)
    for row in rows:
        assert (row["initial_accuracy"], row["final_accuracy"], row["best_iteration"]) == (0.25, 0.75, 2)
        assert row["iterations"] == 2
    assert [{k: v for k, v in r.items() if k != "run_id"} for r in rows][0] == {
        k: v for k, v in rows[1].items() if k != "run_id"
    }
    assert [eval_problem_counts(r) for r in loaded] == [{0: 8, 2: 8}] * 2  # error bars need eval/problems
    assert set(plot_accuracy(loaded, tmp_path / "plots")) >= {"iteration", "tokens"}
