"""Fast fuzz of the graders (the full run is bench/grader_fuzz.py) and regressions for what it found.

Found by the fuzz, fixed, and pinned here:
- gsm8k/arith "answer is" + a long whitespace run: O(n^2) regex backtracking (tasks/algos/grading.py).
- math "final answer is $" openings with no closing "$. I hope": O(k * n) lazy scans (math_answer.py).
- math-verify's own timeouts read as failures: a slow reference raised ValueError for the whole batch,
  a slow answer became parse_error and a slow comparison `wrong` with score 0 (tasks/datasets/math.py).

Issue 27 (held-out probes): the numeric graders read only the first number of the final answer, the
MATH grader failed on LaTeX spacing, invisible characters and power towers and gave load-dependent
verdicts on deep nesting, and a non-string response was graded as its str(). The verdict categories of
bench/grader_fuzz.py generate those cases with their expected statuses; a sample runs here.
"""

import contextlib
import importlib.util
import json
import math
import random
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tasks.algos.grading import STATUSES, RewardScheme, extract_numeric_answer, parse_whole_number
from tasks.algos.math_answer import _FINAL, extract_math_answer, final_answers, normalize_math_answer
from tasks.datasets.graders import grade_all
from tasks.datasets.math import VerifierPool, grade_math_batch, verify_pair

S = RewardScheme()
SPO = RewardScheme(truncated=-1.0, multiple_answers=-2.0)
PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # math-verify grinds on it until a timeout stops it

TOKENS = [
    "####",
    "#### ",
    "\\boxed{",
    "\\boxed ",
    "\\fbox{",
    "{",
    "}",
    "$",
    "\\$",
    "answer is",
    "The answer is ",
    "final answer is $",
    "$. I hope",
    "\\frac{",
    "\\sqrt{",
    "^{",
    "\\left(",
    "\\right)",
    "&",
    "\\\\",
    "(",
    ")",
    ",",
    ".",
    "-",
    " ",
    "  ",
    "\n",
    "\t",
    ":",
    "1",
    "42",
    "3.14",
    "1,000",
    "-7",
    ".5",
    "1e9",
    "x",
    "\\pi",
    "%",
    "9" * 40,
    "\x00",
    "\u200b",
    "٣",
    "５",
    "\ufffd",
]


def fuzz_strings(n: int, seed: int = 0) -> list[str]:
    """A compact version of bench/grader_fuzz.py's generator: garbage, token soup and adversarial shapes."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = k % 6
        if kind == 0:
            out.append(
                "".join(chr(rng.randint(0, rng.choice([0x7F, 0xFFFF, 0x10FFFF]))) for _ in range(rng.randint(0, 300)))
            )
        elif kind == 1:
            out.append(rng.randbytes(rng.randint(0, 500)).decode("utf-8", rng.choice(["replace", "surrogateescape"])))
        elif kind in (2, 3):
            out.append("".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 200))))
        elif kind == 4:
            d = rng.choice([10, 1000, 5000])
            out.append(
                rng.choice(
                    [
                        "\\boxed{" + "\\frac{" * d + "1" + "}{2}" * d + "}",
                        "#### " + "(" * d + "1",
                        "\\boxed{" * d,
                        "}" * d + "#### 3",
                        "#### " + "9" * 50 * d,
                        "answer is " + "," * d,
                    ]
                )
            )
        else:
            n_ = rng.choice([1000, 20_000])
            out.append(
                rng.choice(
                    [
                        "answer is" + " " * n_ + "x",
                        "The answer is:" + " \t" * n_ + "$",
                        "final answer is $x$ " * (n_ // 20),
                        "the answer is " + "x" * n_,
                        "1" + "," * n_,
                    ]
                )
            )
    return out


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: `re` and Python code see the alarm (pytest runs tests in the main thread)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("task", ["arith", "gsm8k"])
def test_fuzz_strings_through_numeric_graders_give_only_statuses(task):
    texts = fuzz_strings(300) + ["#### 12\n" * 100_000, "answer is" + " " * 1_000_000 + "x"]  # and two ~1 MB outputs
    rng = random.Random(1)
    refs = [rng.choice(["7", "-3.5", "1,234", "$18.00", "9" * 5000]) for _ in texts]
    fins = [rng.choice(["stop"] * 9 + ["length"]) for _ in texts]
    with deadline(30):
        for scheme in (S, SPO):
            grades = grade_all(task, texts, refs, fins, scheme)
            assert len(grades) == len(texts)
            for text, g in zip(texts, grades):
                assert g.status in STATUSES, (text[:80], g)
                assert math.isfinite(g.score), (text[:80], g)
                assert isinstance(g.extracted, str)


def test_answer_is_then_long_whitespace_is_linear():
    # Before the fix: ~26 s for 16 kB, O(n^2); this 1 MB input would have taken a day.
    with deadline(5):
        assert (
            grade_all("gsm8k", ["The answer is" + " " * 1_000_000 + "unknown"], ["3"], ["stop"], S)[0].status
            == "no_answer"
        )
        assert grade_all("gsm8k", ["answer is:" + " " * 1_000_000 + "$ 3"], ["3"], ["stop"], S)[0].status == "ok"


def test_unclosed_final_answer_openings_are_linear():
    # Before the fix: ~120 s for 320 kB of these, O(k * n); 1 MB would have taken about 20 minutes.
    text = "final answer is $x$ " * 50_000
    with deadline(5):
        assert extract_math_answer(text) is None
        assert extract_math_answer(text + "The final answer is $\\boxed{5}$. I hope it is correct.") is not None
        assert extract_math_answer("The final answer is $7$. I hope it is correct. " + text) == "7"


def test_final_answers_matches_the_old_pattern():
    rng = random.Random(2)
    words = [
        "final answer is",
        "Final Answer is:",
        " $",
        "$",
        ".",
        " ",
        "\n",
        "I hope",
        "x",
        "\\boxed{1}",
        "answer is",
        "$ 5",
        ":",
        "-",
        ",",
        "3",
        ".5",
    ]
    texts = [t for t in fuzz_strings(300, seed=3) if len(t) < 5000]
    texts += ["".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    for t in texts:
        assert final_answers(t) == _FINAL.findall(t), t


def test_whole_number_parsing_and_normalising_are_linear():
    # The whole-answer and token patterns are possessive; these would backtrack for minutes otherwise.
    n = 500_000
    with deadline(10):
        assert parse_whole_number("1" + " 1" * n) is None
        assert parse_whole_number("18" + " dollars" * n + "1") is None
        assert parse_whole_number("1" + ",000" * n) == Decimal("1" + "000" * n)
        assert parse_whole_number("**" * n) is None and parse_whole_number("$\\boxed{**18**}$") == 18
        assert extract_numeric_answer("so " + "1." * n + "x.") == "1." * n + "x"
        assert extract_numeric_answer("The answer is" + " " * n + "1/2") == "1/2"
        assert normalize_math_answer("1" + "\\," * n + "x") == "1x"
        assert normalize_math_answer("x" + " " * n + "\\;") == "x"


@pytest.fixture
def math_verify_times_out(monkeypatch):
    """In this process, math-verify's own timeout fires: parsing any text with 'SLOW', comparing
    two sympy objects when the answer holds the symbol w (string-to-string pairs still compare)."""
    import math_verify
    from math_verify.errors import TimeoutException
    from sympy import Basic

    real_parse, real_verify = math_verify.parse, math_verify.verify

    def parse(text, **kw):
        if "SLOW" in text:
            raise TimeoutException("Timeout during parsing")
        return real_parse(text, **kw)

    def verify(gold, pred, **kw):
        if isinstance(gold, Basic) and isinstance(pred, Basic) and "w" in {x.name for x in pred.free_symbols}:
            raise TimeoutException("Timeout during comparison")
        return real_verify(gold, pred, **kw)

    monkeypatch.setattr(math_verify, "parse", parse)
    monkeypatch.setattr(math_verify, "verify", verify)


def test_math_verify_own_timeouts_are_status_timeout(math_verify_times_out):
    assert verify_pair("SLOW", "1") == "timeout"  # was 'gold_error': a ValueError that failed the batch
    assert verify_pair("1", "SLOW") == "timeout"  # was 'parse_error'
    assert verify_pair("w", "w+1") == "timeout"  # was 'wrong' with score 0: no pair decided
    assert verify_pair("w", "w") == "ok"  # the sympy pair timed out, the string pair 'w' == 'w' matched
    assert verify_pair("\\frac{1}{2}", "0.5") == "ok"
    assert verify_pair("\\frac{1}{2}", "0.6") == "wrong"
    assert verify_pair("1", "\\text{}") == "parse_error"


def test_pathological_input_times_out_within_its_limit():
    limit = 2.0
    t0 = time.perf_counter()
    [g] = grade_math_batch([PATHOLOGICAL], ["1"], ["stop"], S, VerifierPool(workers=2, timeout=limit))
    assert (g.status, math.isnan(g.score)) == ("timeout", True)
    assert time.perf_counter() - t0 < limit + 5  # the pool waits `limit`, then kills its workers


def test_one_item_times_out_and_the_rest_of_the_batch_still_grades():
    # Timeout above math-verify's own 5 s, so that path answers (and the pool need not be killed).
    t0 = time.perf_counter()
    grades = grade_math_batch(
        [
            PATHOLOGICAL,
            "\\boxed{1}",
            "\\boxed{2}",
            "so \\boxed{0.5}",
            "\\boxed{\\text{}}",
            "no answer here",
            "\\boxed{3}",
        ],
        ["1", "1", "3", "\\frac{1}{2}", "2", "1", "3"],
        ["stop"] * 6 + ["length"],
        SPO,
        VerifierPool(workers=2, timeout=8.0),
    )
    assert [g.status for g in grades] == ["timeout", "ok", "wrong", "ok", "parse_error", "no_answer", "truncated"]
    assert math.isnan(grades[0].score) and [g.score for g in grades[1:]] == [1.0, 0.0, 1.0, 0.0, 0.0, -1.0]
    assert time.perf_counter() - t0 < 8.0 + 10


# ---- issue 27: non-string responses, and the bench's verdict categories


@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_non_string_response_is_rejected_as_bad_input(task):
    # str({"a": 1}) holds the number 1: it scored 1.0 against a reference of 1.
    with pytest.raises(ValueError, match=r"response 1 \(0-based\) is a dict, not a string: \{'a': 1\}"):
        grade_all(task, ["#### 1", {"a": 1}], ["1", "1"], ["stop", "stop"], S)
    with pytest.raises(ValueError, match=r"response 0 \(0-based\) is a NoneType"):
        grade_all(task, [None], ["1"], ["stop"], S)


def test_grade_command_rejects_a_dict_response(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"response": {"a": 1}, "reference": "1"}) + "\n")
    res = CliRunner().invoke(app, ["grade", "--task", "gsm8k", "--input", str(f)])
    assert res.exit_code == 2, res.output
    assert "error: response 0 (0-based) is a dict, not a string: {'a': 1}" in res.output


def _bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "grader_fuzz.py"
    spec = importlib.util.spec_from_file_location("grader_fuzz_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_numeric_verdict_categories_get_their_expected_statuses():
    bench = _bench()
    rng = random.Random(5)
    cases = [bench.verdict_case(cat, rng) for cat in ("numeric_whole", "unicode_numeric") for _ in range(1500)]
    for task in ("arith", "gsm8k"):
        grades = grade_all(task, [c.response for c in cases], [c.num_ref for c in cases], ["stop"] * len(cases), S)
        bad = [
            (c.response, c.num_ref, g.status, c.num_expect)
            for c, g in zip(cases, grades)
            if g.status not in c.num_expect
        ]
        assert not bad, bad[:5]
    assert {s for c in cases for s in c.num_expect} == {"ok", "wrong", "parse_error"}


def test_math_verdict_categories_get_their_expected_statuses():
    bench = _bench()
    rng = random.Random(6)
    cases = [bench.verdict_case(cat, rng) for cat in ("latex_spacing", "nesting_verdicts") for _ in range(15)]
    grades = grade_math_batch(
        [c.response for c in cases],
        [c.math_ref for c in cases],
        ["stop"] * len(cases),
        S,
        VerifierPool(workers=2, timeout=20.0),
    )
    bad = [
        (c.response[:80], c.math_ref[:40], g.status, c.math_expect)
        for c, g in zip(cases, grades)
        if g.status not in c.math_expect
    ]
    assert not bad, bad
