"""The MATH task (MATH, MATH-500): the reference is the final answer, or the last \\boxed{} of a worked
solution; grading is our extraction (tasks/algos/math_answer.py), equivalence by `math-verify`.

math-verify runs in a pool of worker processes with a hard per-item timeout. A worker stuck on a
pathological expression is killed with its pool (its siblings' unfinished items are re-queued),
and the item gets status `timeout` and a NaN score, which the advantage estimators treat as
"no information" (advantage 0) rather than as a wrong answer. Nothing can hang the run, and no
failure turns silently into a 0 (the verl bug in rl_algorithms.md §D.8).

Before math-verify, the answer and the reference are normalised (invisible characters, LaTeX spacing)
and bounded (`MAX_NESTING`, `MAX_ANSWER_CHARS`): an answer past the bounds is `parse_error` without
being parsed, so its verdict cannot depend on the machine's load (tasks/algos/math_answer.py). When
math-verify finds two exact numbers unequal, `exact_compare` checks once more with exact integer
arithmetic: its floating-point difference is meaningless at magnitudes like 2^65536, so a power tower
equal to its reference was graded `wrong`; past `MAX_EXACT_BITS` the pair is undecided, `timeout`.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

from tasks.algos.grading import Grade, RewardScheme
from tasks.algos.math_answer import answer_too_large, extract_math_answer, last_boxed, normalize_math_answer
from tasks.datasets.rows import BadRow, show, text_field

if TYPE_CHECKING:  # annotations only: math-verify workers import this module and stay light
    from configs.schema import DataSection

DEFAULT_TIMEOUT = 10.0
# Bits an exact intermediate value may have in `exact_compare` (2^65536 has 65,537): past it the
# comparison is undecided rather than run out of time or memory.
MAX_EXACT_BITS = 1 << 20


def reference(row: dict, cfg: DataSection, solution: str, where: str) -> tuple[str, str]:
    """(reference, solution) of a row: MATH train sets ship only worked solutions, so without an answer
    field the reference is the solution's last \\boxed{}."""
    if cfg.answer_field not in row and solution:
        boxed = last_boxed(solution)
        if not (boxed and boxed.strip()):
            raise BadRow(
                where,
                "missing_field",
                f"no field {cfg.answer_field!r} and no \\boxed{{}} answer in "
                f"field {cfg.solution_field!r} ({show(solution[-60:])})",
            )
        return boxed, solution
    return text_field(row, cfg.answer_field, where), solution


def extra_metrics(statuses: Sequence[str], texts: Sequence[str], solutions: Sequence[str]) -> dict[str, float]:
    """None: a MATH problem has many valid solutions, so steps are not compared."""
    return {}


class _TooBig(Exception):
    """An exact value would exceed MAX_EXACT_BITS."""


def _exact(e) -> Fraction | None:
    """The exact rational value of a sympy tree of integers, rationals, +, * and integer powers;
    None for anything else (symbols, floats, functions, sets, matrices). Raises _TooBig past MAX_EXACT_BITS."""
    if e.is_Rational:
        return Fraction(int(e.p), int(e.q))
    if e.is_Add or e.is_Mul:
        total = Fraction(0) if e.is_Add else Fraction(1)
        for arg in e.args:
            v = _exact(arg)
            if v is None:
                return None
            total = total + v if e.is_Add else total * v
            if max(total.numerator.bit_length(), total.denominator.bit_length()) > MAX_EXACT_BITS:
                raise _TooBig
        return total
    if e.is_Pow:
        base, exp = _exact(e.base), _exact(e.exp)
        if base is None or exp is None or exp.denominator != 1 or (base == 0 and exp < 0):
            return None
        if base in (0, 1) or exp == 0:
            return base ** int(exp)
        if base == -1:
            return Fraction(-1 if exp.numerator % 2 else 1)
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if abs(exp.numerator) * max(bits - 1, 1) > MAX_EXACT_BITS:  # |base| >= 2: at least that many bits
            raise _TooBig
        return base**exp.numerator
    return None


def _exact_tree(e) -> bool:
    """Whether every node of sympy `e` is an integer/rational, +, * or a power (nothing is computed)."""
    from sympy import Basic, preorder_traversal

    return isinstance(e, Basic) and all(
        n.is_Rational or n.is_Add or n.is_Mul or n.is_Pow for n in preorder_traversal(e)
    )


def exact_compare(gold, pred) -> str | None:
    """'ok' / 'wrong' when both are exact numbers (see `_exact`), 'timeout' when both are exact trees
    but one is too large to compute, None when either is not an exact number (math-verify's verdict stands)."""
    if not (_exact_tree(gold) and _exact_tree(pred)):
        return None
    values = []
    for e in (gold, pred):
        try:
            values.append(_exact(e))
        except (_TooBig, RecursionError):
            values.append(_TooBig)
    if None in values:  # e.g. a non-integer power such as sqrt(2)
        return None
    if _TooBig in values:
        return "timeout"
    return "ok" if values[0] == values[1] else "wrong"


def verify_pair(gold: str, pred: str) -> str:
    """Runs in a worker. Returns 'ok' | 'wrong' | 'parse_error' (model answer unparsable) | 'gold_error' | 'timeout'.

    math-verify stops a parse or a comparison itself after a few seconds (a signal alarm), and by
    default reports that like a failure: parse -> [], verify -> False. A slow *reference* became
    'gold_error', a ValueError that failed the whole batch; a slow answer became 'parse_error'; a
    slow comparison became 'wrong' with score 0, the silent 0 this module exists to prevent (found
    by bench/grader_fuzz.py). So it is asked to raise, and its TimeoutException is our 'timeout',
    as when the pool kills a worker; every other error keeps the meaning it had before.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    # TimeoutException is a BaseException, so the `except Exception` clauses below let it through.

    def parsed(text: str) -> list:
        try:
            return parse("\\boxed{" + text + "}", raise_on_error=True)
        except Exception:  # noqa: BLE001 - what parse(raise_on_error=False) turns into []
            return []

    try:
        g = parsed(gold)
        if not g:
            return "gold_error"
        p = parsed(pred)
        if not p:
            return "parse_error"
        timed_out = False
        for gi, pi in itertools.product(g, p):  # verify(g, p) is any() over these pairs, in this order
            undecided = False
            try:
                if verify(gi, pi, raise_on_error=True):
                    return "ok"
            except TimeoutException:
                undecided = True  # unless exact_compare decides, or a later pair matches
            except Exception:  # noqa: BLE001, S110 - verify(raise_on_error=False) counts the pair as False
                pass
            # math-verify said no or ran out of time: two exact numbers get a second, exact look, which
            # decides them the same way whatever the load.
            exact = exact_compare(gi, pi)
            if exact == "ok":
                return "ok"
            if exact != "wrong":
                timed_out = timed_out or undecided or exact == "timeout"
        return "timeout" if timed_out else "wrong"
    except TimeoutException:
        return "timeout"


def _import_math_verify() -> None:
    import math_verify  # noqa: F401 - warm the worker once, not per item


def _started() -> bool:
    return True


class VerifierPool:
    """`verify_pair` over many items with `workers` processes and a per-item timeout in seconds.

    The timeout clock starts once a worker is up (spawned, math-verify imported): a slow start on a busy
    machine must not turn the first items into timeouts.
    """

    STARTUP_TIMEOUT = 300.0

    def __init__(
        self, workers: int = 2, timeout: float = DEFAULT_TIMEOUT, func=verify_pair, initializer=_import_math_verify
    ):
        self.workers, self.timeout, self.func, self.initializer = workers, timeout, func, initializer
        self._ctx = mp.get_context("spawn")  # never fork a process that holds torch/vLLM threads

    def _start(self, size: int):
        pool = self._ctx.Pool(size, initializer=self.initializer)
        try:
            pool.apply_async(_started).get(self.STARTUP_TIMEOUT)
        except mp.TimeoutError:
            pool.terminate()
            raise RuntimeError(
                f"the math-verify worker pool did not start within {self.STARTUP_TIMEOUT:.0f} s"
            ) from None
        return pool

    def run(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        results: list[str | None] = [None] * len(pairs)
        pending = list(range(len(pairs)))
        while pending:
            pool = self._start(min(self.workers, len(pending)))
            try:
                futures = {i: pool.apply_async(self.func, pairs[i]) for i in pending}
                pending, timed_out = [], False
                for i, fut in futures.items():
                    if timed_out:  # the pool is about to be killed: keep finished items, re-queue the rest
                        if fut.ready():
                            results[i] = _result(fut)
                        else:
                            pending.append(i)
                        continue
                    try:
                        results[i] = _result(fut, self.timeout)
                    except mp.TimeoutError:
                        results[i], timed_out = "timeout", True
            finally:
                pool.terminate()
                pool.join()
        return [r or "timeout" for r in results]


def _result(fut, timeout: float | None = None) -> str:
    try:
        return fut.get(timeout)
    except mp.TimeoutError:
        raise
    except Exception:  # noqa: BLE001 - a verifier crash on one item is that item's status
        return "parse_error"


def _checked_reference(ref: str) -> str:
    """`ref` normalised like an answer; a reference past the bounds is bad input (ValueError)."""
    norm = normalize_math_answer(ref)
    why = answer_too_large(norm)
    if why:
        raise ValueError(
            f"reference answer {ref[:80]!r}{'...' if len(ref) > 80 else ''} is too large to grade: {why} "
            "(tasks/algos/math_answer.py)"
        )
    return norm


def grade_math_batch(
    responses: Sequence[str],
    references: Sequence[str],
    finish_reasons: Sequence[str],
    scheme: RewardScheme,
    pool: VerifierPool | None = None,
) -> list[Grade]:
    grades: list[Grade | None] = [None] * len(responses)
    todo: list[tuple[int, str, str]] = []
    for i, (resp, ref, fin) in enumerate(zip(responses, references, finish_reasons)):
        if fin == "length":
            grades[i] = Grade(scheme.truncated, "truncated", "")
            continue
        ans = extract_math_answer(resp)
        ans = normalize_math_answer(ans) if ans else ans
        if not ans:
            grades[i] = Grade(scheme.no_answer, "no_answer", "")
            continue
        if scheme.multiple_answers is not None and resp.count("####") > 1:
            grades[i] = Grade(scheme.multiple_answers, "wrong", ans)  # SPO's guard, whatever the answer
            continue
        if answer_too_large(ans):
            grades[i] = Grade(scheme.no_answer, "parse_error", ans)  # not given to math-verify at all
            continue
        todo.append((i, _checked_reference(ref), ans))
    verdicts = (pool or VerifierPool()).run([(ref, ans) for _, ref, ans in todo]) if todo else []
    for (i, ref, ans), verdict in zip(todo, verdicts):
        if verdict == "gold_error":
            raise ValueError(f"reference answer {ref!r} cannot be parsed by math-verify")
        if verdict == "ok":
            grades[i] = Grade(scheme.correct, "ok", ans)
        elif verdict == "wrong":
            grades[i] = Grade(scheme.wrong, "wrong", ans)
        elif verdict == "timeout":
            grades[i] = Grade(math.nan, "timeout", ans)
        else:
            grades[i] = Grade(scheme.no_answer, "parse_error", ans)
    return [g for g in grades if g is not None]


def grade(
    responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str], scheme: RewardScheme
) -> list[Grade]:
    """The task's grader entry: grade_math_batch with a default VerifierPool."""
    return grade_math_batch(responses, references, finish_reasons, scheme)
