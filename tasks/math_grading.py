"""MATH grading: our extraction (tasks/algos/math_answer.py), equivalence by `math-verify`.

math-verify runs in a pool of worker processes with a hard per-item timeout. A worker stuck on a
pathological expression is killed with its pool (its siblings' unfinished items are re-queued),
and the item gets status `timeout` and a NaN score, which the advantage estimators treat as
"no information" (advantage 0) rather than as a wrong answer. Nothing can hang the run, and no
failure turns silently into a 0 (the verl bug in rl_algorithms.md §D.8).
"""
from __future__ import annotations

import itertools
import math
import multiprocessing as mp
from typing import Sequence

from tasks.algos.grading import Grade, RewardScheme
from tasks.algos.math_answer import extract_math_answer

DEFAULT_TIMEOUT = 10.0


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
            try:
                if verify(gi, pi, raise_on_error=True):
                    return "ok"
            except TimeoutException:
                timed_out = True  # undecided, unless a later pair matches
            except Exception:  # noqa: BLE001, S110 - verify(raise_on_error=False) counts the pair as False
                pass
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

    def __init__(self, workers: int = 2, timeout: float = DEFAULT_TIMEOUT, func=verify_pair,
                 initializer=_import_math_verify):
        self.workers, self.timeout, self.func, self.initializer = workers, timeout, func, initializer
        self._ctx = mp.get_context("spawn")  # never fork a process that holds torch/vLLM threads

    def _start(self, size: int):
        pool = self._ctx.Pool(size, initializer=self.initializer)
        try:
            pool.apply_async(_started).get(self.STARTUP_TIMEOUT)
        except mp.TimeoutError:
            pool.terminate()
            raise RuntimeError(f"the math-verify worker pool did not start within {self.STARTUP_TIMEOUT:.0f} s") from None
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


def grade_math_batch(responses: Sequence[str], references: Sequence[str], finish_reasons: Sequence[str],
                     scheme: RewardScheme, pool: VerifierPool | None = None) -> list[Grade]:
    grades: list[Grade | None] = [None] * len(responses)
    todo: list[tuple[int, str, str]] = []
    for i, (resp, ref, fin) in enumerate(zip(responses, references, finish_reasons)):
        if fin == "length":
            grades[i] = Grade(scheme.truncated, "truncated", "")
            continue
        ans = extract_math_answer(resp)
        if not ans:
            grades[i] = Grade(scheme.no_answer, "no_answer", "")
            continue
        if scheme.multiple_answers is not None and resp.count("####") > 1:
            grades[i] = Grade(scheme.multiple_answers, "wrong", ans)  # SPO's guard, whatever the answer
            continue
        todo.append((i, ref, ans))
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
