"""Grader fuzz: random and adversarial strings through every grader; no crash, no hang, only statuses.

    nice -n 19 .venv/bin/python bench/grader_fuzz.py [--n 10000] [--seed 0] [--batch 250]

A seeded generator mixes categories: random unicode and decoded random bytes, token soup built from
the extractors' own vocabulary (`####`, `\\boxed{`, "answer is", `$`...), unbalanced braces, deep
nesting (`\\frac{\\frac{...}}`, `((((...))))`, `\\sqrt{\\sqrt{...}}` thousands deep), huge numbers
(200,000-digit strings, `10^{100000}`, `1e999999`), a handful of 1 MB outputs full of `####`,
`\\boxed{}` and answer phrases, LaTeX bombs (`\\underbrace`, `\\left...\\right` chains, nested
matrices, exponent towers, `100000!`), sympy-hostile inputs (`'x'*10**5`, `10**10**10`), regex
stressors (long runs of whitespace after "answer is", many unclosed "final answer is $") and valid
answers (so `ok` and `wrong` appear too), with references that are sometimes hard as well.

Verdict categories carry the status they must get (issue 27), and any other status is a failure:
numeric_whole (a whole answer that is not its first number: `1/2`, `2^10`, `5!`, `3:2`, `0x1F`,
`1.5e3`, `12 and 13`, in `####` and in the fallbacks, next to unit/`$`/full-stop forms that must
stay `ok`), unicode_numeric (U+2212 and dashes as minus, no-break/thin/narrow/`'`/`_` digit groups,
zero-width and direction marks inside or around a number), latex_spacing (math: `\\,` `\\;` `~`
`\\quad`... inside numbers and expressions, invisible characters, U+2212) and nesting_verdicts (math:
chains past `MAX_NESTING` are `parse_error`, shallow ones ok/wrong by value, exact power towers never
`wrong` when equal).

Every string goes through `tasks.datasets.graders.grade_all` for arith and gsm8k (one item per call, timed,
with a per-item limit) and for math (in batches, so the math-verify worker pool and its per-item
timeout are exercised). Checked: no exception escapes grade_all, every status is in STATUSES,
every score is finite except a NaN with status `timeout`, no numeric item exceeds its limit, no
math batch exceeds items x per-item timeout + pool start margin, and every verdict case gets one of
its expected statuses. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from tasks.algos.answer_text import INVISIBLE, MINUS_SIGNS
from tasks.algos.grading import STATUSES, Grade, RewardScheme
from tasks.algos.math_answer import MAX_NESTING
from tasks.datasets.graders import grade_all
from tasks.datasets.math import DEFAULT_TIMEOUT

# arith/gsm8k have no timeout of their own, so the fuzz sets one. Measured in CPU seconds of this
# process (wall time on a shared, loaded machine says more about the neighbours than the grader).
NUMERIC_LIMIT = 1.0  # CPU s per item: pure string work; anything slower is a bug
HARD_STOP = 20.0  # CPU s per item (wall s past the budget for a math batch): interrupted, counted as a hang
POOL_MARGIN = 30.0  # s per pool (re)start in a math batch: spawn + importing math_verify on a busy machine
SCHEMES = (RewardScheme(), RewardScheme(truncated=-1.0, multiple_answers=-2.0))


@dataclass(frozen=True)
class Case:
    category: str
    response: str
    num_ref: str  # reference for arith/gsm8k: always holds a number (dataset precondition)
    math_ref: str  # reference for math: always parseable LaTeX (dataset precondition), sometimes hard
    finish: str = "stop"
    num_expect: tuple[str, ...] = ()  # verdict cases: the statuses arith/gsm8k may give (empty: any)
    math_expect: tuple[str, ...] = ()  # the statuses math may give (empty: any)


# ---------------------------------------------------------------- generator

TOKENS = [
    "####",
    "#### ",
    "\\boxed{",
    "\\boxed ",
    "\\fbox{",
    "{",
    "}",
    "{",
    "}",
    "$",
    "\\$",
    "answer is",
    "The answer is ",
    "the answer is: ",
    "final answer is $",
    "$. I hope",
    "I hope it is correct.",
    "\\frac{",
    "\\dfrac",
    "\\sqrt{",
    "\\sqrt[",
    "^{",
    "_{",
    "^",
    "_",
    "\\left(",
    "\\right)",
    "\\left\\{",
    "\\right.",
    "\\begin{matrix}",
    "\\end{matrix}",
    "\\begin{pmatrix}",
    "\\end{pmatrix}",
    "&",
    "\\\\",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    ". ",
    "-",
    "+",
    "*",
    "/",
    "=",
    "<",
    "\\le",
    " ",
    "  ",
    "\n",
    "\t",
    "0",
    "1",
    "42",
    "3.14",
    "1,000",
    "-7",
    ".5",
    "1e9",
    "x",
    "y",
    "\\pi",
    "\\infty",
    "e",
    "i",
    "%",
    "\\text{",
    "\\mathrm{",
    "\\cdot",
    "\\times",
    "!",
    "10^{",
    "9" * 40,
    "\\circ",
    "\\%",
    "dollars",
    "\\cup",
    "\\cap",
    "\\in",
    "\\mathbb{R}",
    "\\emptyset",
    "\\pm",
    "\\sin",
    "\\log",
    "\\ln",
    "\\\\[",
    "\\]",
    "\\(",
    "\\)",
    "\\",
    "\x00",
    "\u200b",
    "\u2212",
    "٣",
    "５",
    "𝟕",
    "½",
    "\ufffd",
]

# (reference, equivalent answers, wrong answers): the valid part of the fuzz, so ok/wrong appear.
MATH_PAIRS = [
    ("\\frac{1}{2}", ["0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "1/2", "\\tfrac12"], ["0.51", "2", "-\\frac{1}{2}"]),
    ("42", ["42", "42.0", "\\text{42}", "42^\\circ"], ["43", "4.2", "-42"]),
    ("\\sqrt{2}", ["\\sqrt{2}", "\\sqrt2", "2^{1/2}"], ["2", "\\sqrt{3}"]),
    ("x^2+2x+1", ["(x+1)^2", "x^2+2x+1", "1+2x+x^2"], ["x^2+1", "(x-1)^2"]),
    ("\\left(3, \\frac{\\pi}{2}\\right)", ["(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"], ["(3,\\pi)"]),
    ("[-2, 5)", ["[-2,5)", "[-2, 5)"], ["(-2,5)", "[-2,5]"]),
    (
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        ["\\begin{pmatrix}1\\\\2\\end{pmatrix}"],
        ["\\begin{pmatrix}2\\\\1\\end{pmatrix}"],
    ),
    ("1000", ["1,000", "1000", "10^3", "1000.00"], ["100", "10^4"]),
    ("\\infty", ["\\infty"], ["-\\infty", "0"]),
    ("-3", ["-3", "- 3", "-3.0"], ["3"]),
    ("2\\pi", ["2\\pi", "\\pi \\cdot 2", "6.283185307"], ["\\pi"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\frac{\\sqrt3}{2}", "\\sqrt{3}/2", "\\sin(\\pi/3)"], ["\\frac{1}{2}"]),
]
# Hard but legitimate references: big numbers, long expressions, nesting a real dataset could hold.
HARD_MATH_REFS = [
    "2^{1000}",
    "10^{100}",
    "100!",
    "\\binom{100}{50}",
    "\\frac{" * 10 + "1" + "}{2}" * 10,
    "\\sqrt{" * 10 + "2" + "}" * 10,
    "+".join(f"x_{{{i}}}" for i in range(30)),
    "\\begin{pmatrix}" + "\\\\".join("&".join(str(i * 8 + j) for j in range(8)) for i in range(8)) + "\\end{pmatrix}",
    "\\{" + ",".join(str(i) for i in range(50)) + "\\}",
    "9" * 1000,
]
PLAIN_MATH_REFS = [p[0] for p in MATH_PAIRS] + ["7", "0", "\\frac{3}{4}", "x=2", "\\text{(B)}", "12\\sqrt{3}"]
NUM_REFS_HARD = ["9" * 5000, "-0.000001", "1,234,567", "$18.00", "1e5", "-.5", "0", "00042", "3.14159265358979"]


def _math_ref(rng: random.Random) -> str:
    return rng.choice(HARD_MATH_REFS) if rng.random() < 0.03 else rng.choice(PLAIN_MATH_REFS)


def _num_ref(rng: random.Random) -> str:
    return rng.choice(NUM_REFS_HARD) if rng.random() < 0.1 else str(rng.randint(-1000, 10**6))


def _unicode(rng: random.Random) -> str:
    n = rng.randint(0, 2000)
    hi = rng.choice([0x7F, 0x2FF, 0xFFFF, 0x10FFFF])
    return "".join(chr(rng.randint(0, hi)) for _ in range(n))  # includes lone surrogates and NULs


def _bytes(rng: random.Random) -> str:
    raw = rng.randbytes(rng.randint(0, 4000))
    return raw.decode(
        *rng.choice([("utf-8", "replace"), ("utf-8", "surrogateescape"), ("latin-1",), ("utf-16-le", "ignore")])
    )


def _soup(rng: random.Random) -> str:
    return "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 300)))


def _unbalanced(rng: random.Random) -> str:
    k = rng.choice([1, 2, 10, 1000, 20000])
    return rng.choice(
        [
            "\\boxed{" + "{" * k + "1",
            "\\boxed{1" + "}" * k,
            "}" * k + "\\boxed{2}" + "{" * k,
            "#### " + "{" * k,
            "\\boxed{\\frac{1}{2}" + "{" * k + "#### 3",
            "$" * k + "\\boxed{$}",
            "final answer is $\\boxed{" + "{" * k + "$. I hope",
            "\\left(" * k + "1",
            "1\\right)" * k,
            "\\begin{matrix}" * min(k, 500) + "1",
            "\\boxed{" * k,
        ]
    )


def _nested(rng: random.Random) -> str:
    d = rng.choice([10, 100, 1000, 3000])
    core = rng.choice(
        [
            "\\frac{" * d + "1" + "}{2}" * d,
            "(" * d + "1" + ")" * d,
            "\\sqrt{" * d + "2" + "}" * d,
            "{" * d + "3" + "}" * d,
            "[" * d + "4" + "]" * d,
            "\\left(" * d + "5" + "\\right)" * d,
            "x^{" * d + "2" + "}" * d,
            "-" * d + "1",
            "\\sqrt[" * min(d, 300) + "3" + "]{8}" * min(d, 300),
        ]
    )
    return (
        rng.choice(
            ["\\boxed{%s}", "#### %s", "the answer is %s.", "%s", "The final answer is $%s$. I hope it is correct."]
        )
        % core
    )


def _huge(rng: random.Random) -> str:
    core = rng.choice(
        [
            "9" * 200_000,
            "1" + "0" * 100_000,
            "10^{100000}",
            "1e999999",
            "-1e-999999",
            "9" * 5000 + "." + "9" * 5000,
            "1," * 50_000 + "1",
            "2^{2^{20}}",
            "10^{10^{10}}",
            "0." + "0" * 100_000 + "1",
            "1" * 4301,
            "1.0e+308 * 10",
            "\\frac{" + "9" * 20_000 + "}{" + "7" * 20_000 + "}",
            "-" + "8" * 100_000,
            "NaN",
            "inf",
            "-inf",
        ]
    )
    return rng.choice(["\\boxed{%s}", "#### %s", "The answer is %s.", "we get %s", "%s"]) % core


def _bomb(rng: random.Random) -> str:
    k = rng.choice([10, 100, 1000])
    core = rng.choice(
        [
            "\\underbrace{" * k + "x" + "}_{1}" * k,
            "\\overbrace{" * k + "x" + "}^{2}" * k,
            "\\left(" * k + "\\right)" * k,
            "\\left( 1 \\right)" * k,
            "\\begin{matrix}" * k + "1" + "\\end{matrix}" * k,
            "\\begin{pmatrix}" + "\\\\".join("&".join("x" for _ in range(40)) for _ in range(40)) + "\\end{pmatrix}",
            "\\frac{1}{2}" * k,
            "\\sqrt{2}+" * k + "1",
            "9^{9^{9^{9}}}",
            "9^{9^{9}}",
            "2^{2^{2^{2^{2^{2}}}}}",
            "100000!",
            "(10^{6})!",
            "\\binom{10^{9}}{10^{5}}",
            "10!!!!!!!!!!",
            "\\prod_{k=1}^{10^{9}} k",
            "\\sum_{n=1}^{10^{10}} n^{n}",
            "\\int_0^1 x^{10^{6}} dx",
            "x" * 10_000,
            "\\mathrm{" * k + "a" + "}" * k,
            "\\newcommand{\\a}{\\a\\a}\\a",
            "\\def\\x{\\x\\x}\\x",
            "\\text{" * k + "t" + "}" * k,
            "a^{b^{c^{d^{e}}}}" * 20,
            "e^{e^{e^{e^{e^{e}}}}}",
            "\\tan(\\frac{\\pi}{2})",
            "\\frac{1}{0}",
            "0^0",
            "\\sqrt{-1}^{\\sqrt{-1}}",
        ]
    )
    return (
        rng.choice(["\\boxed{%s}", "The final answer is $%s$. I hope it is correct.", "the answer is %s.", "%s"]) % core
    )


def _hostile(rng: random.Random) -> str:
    core = rng.choice(
        [
            "x" * 100_000,
            "10**10**10",
            "2**2**2**2**2**2",
            "factorial(10**6)",
            "9**9**9",
            "x**x**x**x**x",
            "(" * 500 + "x" + ")" * 500,
            "*" * 1000,
            "__import__('os')",
            "lambda: 1",
            "1/0",
            "1" + "+1" * 20_000,
            "x+" * 5000 + "x",
            "Symbol('x')" * 100,
            "oo - oo",
            "zoo",
            "nan",
            "I**I",
            "E**(I*pi)",
            "\\x" * 1000,
            "sin(" * 1000 + "x" + ")" * 1000,
            "Matrix(50, 50, lambda i, j: i+j)**50",
        ]
    )
    return rng.choice(["\\boxed{%s}", "#### %s", "%s", "the answer is %s."]) % core


def _regex(rng: random.Random) -> str:
    n = rng.choice([1000, 10_000, 50_000])
    return rng.choice(
        [
            "answer is" + " " * n + "x",
            "The answer is:" + " \t" * (n // 2) + "$",
            "final answer is $x$ " * (n // 20),
            "final answer is $" + "x" * n,
            "the answer is " + "x" * n,
            "the answer is" * (n // 13),
            "1" + "," * n + "x",
            "answer is " + "," * n + "x",
            "#### " + " " * n,
            "\\boxed" + " " * n + "$",
            "-" * n + "1",
            "." * n + "5",
            "1." * (n // 2),
            "#" * n,
            "$" * n,
            "\\$" * n,
            "I hope " * (n // 7),
            ("final answer is $" + " " * 50) * (n // 60) + "$. I hope",
        ]
    )


def _valid_numeric(rng: random.Random) -> tuple[str, str]:
    k = rng.choice([rng.randint(-(10**6), 10**6), round(rng.uniform(-1000, 1000), 2), rng.randint(0, 100)])
    got = k if rng.random() < 0.6 else k + rng.choice([1, -1, 10])
    body = rng.choice(["So the total is 3 + 4 = 7.\n", "", "Step 1: 12 apples. Step 2: 5 more.\n"])
    style = rng.choice(["#### {:,}", "#### {}", "#### ${}", "The answer is {}.", "so we get {}", "#### {} dollars"])
    return body + style.format(got), str(k)


def _valid_math(rng: random.Random) -> tuple[str, str]:
    ref, good, bad = rng.choice(MATH_PAIRS)
    ans = rng.choice(good) if rng.random() < 0.6 else rng.choice(bad)
    style = rng.choice(
        [
            "Some work.\n\\boxed{%s}",
            "Therefore, the final answer is: $\\boxed{%s}$. I hope it is correct.",
            "the answer is %s.\n",
            "\\fbox{%s}",
            "\\boxed{1} first, then \\boxed{%s}",
        ]
    )
    return style % ans, ref


# ---- verdict cases (issue 27): each returns (response, reference, expected statuses)

GROUP_SEPS = [",", " ", "'", "_", "\u00a0", "\u2009", "\u202f"]  # digit-group separators a grader must join
LATEX_SPACES = ["\\,", "\\;", "\\:", "\\ ", "~", "\\!", "{,}", ",\\!", "\\thinspace ", "\u2009", "\u00a0"]


def _grouped(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


def _whole_numeric(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    """An answer whose first number is the reference but whose whole is not (parse_error / wrong), or a
    unit/currency/full-stop form of the reference (ok)."""
    a, b = rng.randint(1, 999), rng.randint(2, 99)
    d, k = rng.randint(1, 9), rng.randint(1, 9)
    not_a_number = [
        f"{a}/{b}",
        f"{a}^{b}",
        f"{a}^{{{b}}}",
        f"{a}!",
        f"{a}:{b:02d}",
        f"{a} and {b}",
        f"{a}-{b}",
        f"{a}/{b} dollars",
        f"{a}x{b}",
    ]
    whole_tokens = [f"{a}/{b}", f"{a}^{b}", f"{a}:{b:02d}"]  # also whole in the fallbacks
    kind = rng.randrange(6)
    if kind == 0:
        return f"Work.\n#### {rng.choice(not_a_number)}", str(a), ("parse_error",)
    if kind == 1:
        return f"#### 0x{a:X}", "0", ("parse_error",)
    if kind == 2:  # scientific notation is one number, and not its mantissa
        exact = str(int(a * 10**k + d * 10 ** (k - 1)))  # a.d x 10^k
        text = rng.choice([f"#### {a}.{d}e{k}", f"The answer is {a}.{d}e{k}.", f"so we get {a}.{d}E+{k}"])
        return (text, f"{a}.{d}", ("wrong",)) if rng.random() < 0.5 else (text, exact, ("ok",))
    if kind == 3:
        tok = rng.choice(whole_tokens)
        return rng.choice([f"The answer is {tok}.", f"so we get {tok}", f"Total: {tok}\n"]), str(a), ("parse_error",)
    body = rng.choice(["", "3 + 4 = 7.\n", "Step 1: 12 apples.\n"])
    form = rng.choice(
        [
            f"{a} dollars",
            f"${a}.00",
            f"{a}.",
            f"{a}%",
            f"{a} cm",
            f"{a} km/h",
            f"{a}/hour",
            f"**{a}**",
            f"\\boxed{{{a}}}",
            f"${a}$",
            f"{a} sq. ft.",
            f"-${a}",
            f"$-{a}",
        ]
    )
    ref = f"-{a}" if form.startswith("-") or form.startswith("$-") else str(a)
    return f"{body}#### {form}", ref, ("ok",)


def _unicode_numeric(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    """Unicode minus signs, digit-group separators and invisible characters in a numeric answer."""
    n = rng.randint(1000, 10**9)
    kind = rng.randrange(4)
    if kind == 0:
        a = rng.randint(1, 10**6)
        text = f"#### {rng.choice(MINUS_SIGNS)}{a}"
        return (text, f"-{a}", ("ok",)) if rng.random() < 0.5 else (text, str(a), ("wrong",))
    if kind == 1:
        text = f"#### {_grouped(n, rng.choice(GROUP_SEPS))}"
        first = f"{n:,}".split(",")[0]
        return (text, str(n), ("ok",)) if rng.random() < 0.5 else (text, first, ("wrong",))
    s = str(n)
    cut = rng.randint(1, len(s) - 1)
    inv = rng.choice(INVISIBLE)
    if kind == 2:
        text = f"#### {s[:cut]}{inv}{s[cut:]}" if rng.random() < 0.5 else f"The answer is {s[:cut]}{inv}{s[cut:]}."
        return (text, s, ("ok",)) if rng.random() < 0.5 else (text, s[:cut], ("wrong",))
    text = f"#### {inv}{rng.choice(MINUS_SIGNS)}{_grouped(n, rng.choice(GROUP_SEPS))}{inv}"
    return text, f"-{n}", ("ok",)


def _latex_spacing(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    """LaTeX spacing commands and invisible characters in MATH answers: equal answers are ok."""
    n = rng.randint(1000, 10**7)
    wrap = rng.choice(
        ["\\boxed{%s}", "Therefore, the final answer is: $\\boxed{%s}$. I hope it is correct.", "so \\boxed{%s}."]
    )
    kind = rng.randrange(5)
    if kind == 0:
        text = _grouped(n, rng.choice(LATEX_SPACES))
        return (wrap % text, str(n), ("ok",)) if rng.random() < 0.7 else (wrap % text, str(n + 1), ("wrong",))
    if kind == 1:
        s = str(n)
        cut = rng.randint(0, len(s))
        return wrap % (s[:cut] + rng.choice(INVISIBLE) + s[cut:]), s, ("ok",)
    if kind == 2:
        a, b = rng.randint(1, 50), rng.randint(51, 99)
        sp = rng.choice(LATEX_SPACES[:4] + ["\\quad ", "\\qquad "])
        return wrap % f"\\frac{{{sp}{a}}}{{{b}{sp}}}", f"\\frac{{{a}}}{{{b}}}", ("ok",)
    if kind == 3:
        a = rng.randint(1, 999)
        return wrap % f"\u2212{a}", rng.choice([f"-{a}", str(a)]), None  # expectation set below
    sp = rng.choice(LATEX_SPACES[:4])
    return wrap % f"x{sp}+{sp}{n % 97}", f"x+{n % 97}", ("ok",)


def _nesting_verdicts(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    """Nesting past MAX_NESTING is parse_error; shallow chains are graded by value; equal exact power
    towers may time out but are never wrong."""
    kind = rng.randrange(4)
    if kind == 0:
        d = rng.randint(MAX_NESTING + 1, 300)
        core = rng.choice(
            [
                "\\frac{1}{" * d + "2" + "}" * d,
                "(" * d + "3" + ")" * d,
                "\\sqrt{" * d + "1" + "}" * d,
                "{" * d + "4" + "}" * d,
                "\\left(" * d + "5" + "\\right)" * d,
            ]
        )
        return f"\\boxed{{{core}}}", rng.choice(["2", "3", "1", "4", "5"]), ("parse_error",)
    if kind == 1:
        d = rng.randint(1, 10)
        chain = "\\frac{1}{" * d + "2" + "}" * d  # 2 when d is even, 1/2 when odd
        ref = rng.choice(["2", "\\frac{1}{2}"])
        right = (ref == "2") == (d % 2 == 0)
        return f"\\boxed{{{chain}}}", ref, ("ok", "timeout") if right else ("wrong", "timeout")
    if kind == 2:
        equal = [
            ("2^{2^{2^{2^{2}}}}", "2^{65536}"),
            ("4^{32768}", "2^{65536}"),
            ("(2^{16})^{4096}", "2^{65536}"),
            ("2^{2^{2^{2}}}", "65536"),
            ("3^{3^{3}}", "7625597484987"),
        ]
        pred, ref = rng.choice(equal)
        return f"\\boxed{{{pred}}}", ref, ("ok", "timeout")
    pred, ref = rng.choice(
        [
            ("2^{65536}+1", "2^{65536}"),
            ("2^{2^{2^{2^{2}}}}", "2^{65535}"),
            ("2^{2^{2^{2^{2^{2}}}}}", "2^{65536}"),
            ("3^{3^{3}}", "7625597484986"),
        ]
    )
    return f"\\boxed{{{pred}}}", ref, ("wrong", "timeout")


# name -> (generator, which grader the expectation is for)
VERDICT_GEN = {
    "numeric_whole": (_whole_numeric, "num"),
    "unicode_numeric": (_unicode_numeric, "num"),
    "latex_spacing": (_latex_spacing, "math"),
    "nesting_verdicts": (_nesting_verdicts, "math"),
}


def verdict_case(category: str, rng: random.Random) -> Case:
    gen, grader = VERDICT_GEN[category]
    resp, ref, expect = gen(rng)
    if expect is None:  # \u2212 a: -a is the same answer, a is not
        expect = ("ok",) if ref.startswith("-") else ("wrong",)
    if grader == "num":
        return Case(category, resp, ref, _math_ref(rng), num_expect=expect)
    return Case(category, resp, _num_ref(rng), ref, math_expect=expect)


MB_STYLES = {  # chunk mixes for the 1 MB outputs, cycled so even a handful covers each
    "mixed": [
        "#### 12\n",
        "\\boxed{\\frac{1}{2}} ",
        "the answer is 7. ",
        "final answer is $x$ ",
        "answer is   ",
        "{{{",
        "}}",
        "$",
        "lorem ipsum dolor sit amet 12,345.6 ",
        "\\left(",
        "$. I hope ",
        " " * 200,
        "9" * 300,
    ],
    "hashes_and_boxes": ["#### 12\n", "####", "\\boxed{\\frac{1}{2}} ", "\\boxed{", "}", "\\fbox{3}", "x = 5, "],
    "answer_phrases": ["the answer is 7", "answer is   ", "final answer is $x$ ", "The answer is: ", " ", "$", "\n"],
    "whitespace": [" ", "\t", "\n", " " * 1000, "answer is", "final answer is "],
    "braces": ["{", "{", "{", "}", "\\boxed{", "\\frac{", "$", "1"],
}


def _megabyte(rng: random.Random, style: str) -> str:
    chunks, parts, size = MB_STYLES[style], [], 0
    while size < 1_000_000:
        c = rng.choice(chunks)
        parts.append(c)
        size += len(c)
    return "".join(parts) + rng.choice(
        ["\n#### 42", "\\boxed{42}", "", "The final answer is $42$. I hope it is correct."]
    )


# (name, share of N): every share-based category draws its references from the pools above.
# The pathological shares are small on purpose: such an item can hold a math-verify worker for its
# whole timeout, and the run must stay well under 30 minutes on 2 cores; 1-2% of 10,000 is still a
# few hundred of each.
CATEGORIES = [
    ("valid_numeric", 0.14),
    ("valid_math", 0.14),
    ("random_unicode", 0.14),
    ("random_bytes", 0.08),
    ("token_soup", 0.33),
    ("unbalanced", 0.06),
    ("deep_nesting", 0.01),
    ("huge_numbers", 0.015),
    ("latex_bombs", 0.015),
    ("sympy_hostile", 0.01),
    ("regex_stress", 0.03),
    ("truncated", 0.03),
    ("numeric_whole", 0.03),
    ("unicode_numeric", 0.02),
    ("latex_spacing", 0.02),
    ("nesting_verdicts", 0.01),
]
_GEN = {
    "random_unicode": _unicode,
    "random_bytes": _bytes,
    "token_soup": _soup,
    "unbalanced": _unbalanced,
    "deep_nesting": _nested,
    "huge_numbers": _huge,
    "latex_bombs": _bomb,
    "sympy_hostile": _hostile,
    "regex_stress": _regex,
    "truncated": _soup,
}


def make_cases(n: int, seed: int = 0, megabytes: int | None = None) -> list[Case]:
    """`n` cases (plus `megabytes` 1 MB outputs, default n // 2000, at least 1), shuffled, reproducible."""
    rng = random.Random(seed)
    cases: list[Case] = []
    mb = max(1, n // 2000) if megabytes is None else megabytes
    styles = list(MB_STYLES)
    for i in range(mb):
        cases.append(Case("1mb_output", _megabyte(rng, styles[i % len(styles)]), _num_ref(rng), _math_ref(rng)))
    weights = [w for _, w in CATEGORIES]
    names = [c for c, _ in CATEGORIES]
    for _ in range(n - len(cases)):
        cat = rng.choices(names, weights)[0]
        if cat in VERDICT_GEN:
            cases.append(verdict_case(cat, rng))
        elif cat == "valid_numeric":
            resp, ref = _valid_numeric(rng)
            cases.append(Case(cat, resp, ref, _math_ref(rng)))
        elif cat == "valid_math":
            resp, ref = _valid_math(rng)
            if rng.random() < 0.03:
                ref = rng.choice(HARD_MATH_REFS)
            cases.append(Case(cat, resp, _num_ref(rng), ref))
        else:
            cases.append(
                Case(
                    cat,
                    _GEN[cat](rng),
                    _num_ref(rng),
                    _math_ref(rng),
                    "length" if cat == "truncated" else rng.choice(["stop"] * 19 + ["length"]),
                )
            )
    rng.shuffle(cases)
    return cases


# ---------------------------------------------------------------- checks


class Hang(BaseException):
    """Raised by the alarm when one grader call runs past HARD_STOP (or a math batch past its budget)."""


def _on_alarm(signum, frame):
    raise Hang()


def check_grade(g: object) -> str | None:
    """None if `g` is a proper outcome; otherwise what is wrong with it."""
    if not isinstance(g, Grade):
        return f"not a Grade: {type(g).__name__}"
    if g.status not in STATUSES:
        return f"status {g.status!r}"
    if not isinstance(g.score, (int, float)) or isinstance(g.score, bool):
        return f"score type {type(g.score).__name__}"
    if math.isnan(g.score) != (g.status == "timeout"):
        return f"score {g.score} with status {g.status}"  # NaN exactly when timeout (README "Grading")
    if not math.isfinite(g.score) and not math.isnan(g.score):
        return f"score {g.score}"
    if not isinstance(g.extracted, str):
        return f"extracted type {type(g.extracted).__name__}"
    return None


@dataclass
class Tally:
    statuses: Counter
    times: list[float]  # wall s per item (math: per batch)
    cpu_times: list[float] = field(default_factory=list)  # CPU s per item (arith/gsm8k)
    crashes: int = 0
    hangs: int = 0
    over_limit: int = 0
    bad_outcomes: int = 0
    unexpected: int = 0  # verdict cases graded outside their expected statuses
    verdicts: Counter = field(default_factory=Counter)  # (category, "checked" | "unexpected") -> count
    first_error: str = ""
    failed: Counter | None = None  # failures by category

    def note(self, msg: str, category: str = "") -> None:
        self.failed = self.failed or Counter()
        self.failed[category or "?"] += 1
        if not self.first_error:
            self.first_error = msg
            print(msg, file=sys.stderr, flush=True)  # in full, with its traceback
        else:
            print(msg.splitlines()[0][:300], file=sys.stderr, flush=True)


def _describe(c: Case) -> str:
    return (
        f"[{c.category}] response {c.response[:120]!r}... ({len(c.response)} chars), "
        f"refs {c.num_ref[:40]!r}/{c.math_ref[:40]!r}"
    )


def fuzz_numeric(task: str, cases: list[Case]) -> Tally:
    t = Tally(Counter(), [])
    for k, c in enumerate(cases):
        scheme = SCHEMES[k % 2]
        signal.setitimer(signal.ITIMER_PROF, HARD_STOP)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = grade_all(task, [c.response], [c.num_ref], [c.finish], scheme)
        except Hang:
            t.hangs += 1
            t.note(f"{task}: HANG (> {HARD_STOP} s) on {_describe(c)}", c.category)
            continue
        except Exception:  # noqa: BLE001 - the fuzz counts crashes instead of stopping at the first
            t.crashes += 1
            t.note(f"{task}: CRASH on {_describe(c)}\n{traceback.format_exc()}", c.category)
            continue
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        t.times.append(dt)
        t.cpu_times.append(cpu)
        if cpu > NUMERIC_LIMIT:
            t.over_limit += 1
            t.note(f"{task}: SLOW ({cpu:.2f} CPU s > {NUMERIC_LIMIT} s) on {_describe(c)}", c.category)
        problem = check_grade(out[0]) if len(out) == 1 else f"{len(out)} grades for 1 item"
        if problem:
            t.bad_outcomes += 1
            t.note(f"{task}: BAD OUTCOME {problem} on {_describe(c)}", c.category)
            continue
        t.statuses[out[0].status] += 1
        check_verdict(t, task, c, c.num_expect, out[0])
    return t


def check_verdict(t: Tally, task: str, c: Case, expect: tuple[str, ...], g: Grade) -> None:
    """Count a verdict case, and note it when its status is not one it may get."""
    if not expect:
        return
    t.verdicts[c.category, "checked"] += 1
    if g.status not in expect:
        t.unexpected += 1
        t.verdicts[c.category, "unexpected"] += 1
        t.note(
            f"{task}: UNEXPECTED VERDICT {g.status} (expected {'/'.join(expect)}; extracted "
            f"{g.extracted[:60]!r}) on {_describe(c)}",
            c.category,
        )


def fuzz_math(cases: list[Case], batch: int) -> tuple[Tally, dict]:
    """Batches through grade_all('math'); times are per batch. Budget: items x timeout + pool margin."""
    t = Tally(Counter(), [])
    worst = {"ratio": 0.0, "wall": 0.0, "budget": 0.0, "per_item": 0.0}
    for b, start in enumerate(range(0, len(cases), batch)):
        chunk = cases[start : start + batch]
        scheme = SCHEMES[b % 2]
        budget = len(chunk) * DEFAULT_TIMEOUT + POOL_MARGIN
        # Hard stop only past the budget: the pool's own timeouts must act first.
        signal.setitimer(signal.ITIMER_REAL, budget + HARD_STOP)
        t0 = time.perf_counter()
        try:
            out = grade_all(
                "math", [c.response for c in chunk], [c.math_ref for c in chunk], [c.finish for c in chunk], scheme
            )
        except Hang:
            t.hangs += len(chunk)
            t.note(f"math: HANG, batch {b} past {budget + HARD_STOP:.0f} s", "batch")
            continue
        except Exception:  # noqa: BLE001
            t.crashes += 1
            t.note(f"math: CRASH in batch {b} ({len(chunk)} items)\n{traceback.format_exc()}", "batch")
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
        timeouts = sum(1 for g in out if getattr(g, "status", None) == "timeout")
        budget = len(chunk) * DEFAULT_TIMEOUT + (1 + timeouts) * POOL_MARGIN  # one pool restart per timeout
        t.times.append(dt)
        if dt > budget:
            t.over_limit += 1
            t.note(f"math: batch {b} took {dt:.1f} s > budget {budget:.0f} s", "batch")
        if dt / budget > worst["ratio"]:
            worst = {"ratio": dt / budget, "wall": dt, "budget": budget, "per_item": dt / len(chunk)}
        if len(out) != len(chunk):
            t.bad_outcomes += len(chunk)
            t.note(f"math: {len(out)} grades for {len(chunk)} items in batch {b}", "batch")
            continue
        for c, g in zip(chunk, out):
            problem = check_grade(g)
            if problem:
                t.bad_outcomes += 1
                t.note(f"math: BAD OUTCOME {problem} on {_describe(c)}", c.category)
            else:
                t.statuses[g.status] += 1
                check_verdict(t, "math", c, c.math_expect, g)
        print(f"  math batch {b + 1}/{-(-len(cases) // batch)}: {dt:.1f} s, {timeouts} timeouts", flush=True)
    return t, worst


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000, help="number of fuzz strings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=250, help="math items per grade_all call (one pool each)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _on_alarm)  # math batches: wall clock
    signal.signal(signal.SIGPROF, _on_alarm)  # arith/gsm8k items: CPU time

    t_start = time.perf_counter()
    cases = make_cases(args.n, args.seed)
    cats = Counter(c.category for c in cases)
    print(f"{len(cases)} cases, {sum(len(c.response) for c in cases) / 1e6:.1f} M chars: {dict(cats)}", flush=True)

    tallies: dict[str, Tally] = {}
    walls: dict[str, float] = {}
    for task in ("arith", "gsm8k"):
        t0 = time.perf_counter()
        tallies[task] = fuzz_numeric(task, cases)
        walls[task] = time.perf_counter() - t0
        print(f"{task}: {dict(tallies[task].statuses)} in {walls[task]:.1f} s", flush=True)
    t0 = time.perf_counter()
    tallies["math"], worst = fuzz_math(cases, args.batch)
    walls["math"] = time.perf_counter() - t0
    print(f"math: {dict(tallies['math'].statuses)} in {walls['math']:.1f} s", flush=True)

    cols = list(STATUSES)
    chars = sum(len(c.response) for c in cases)
    lines = [
        f"{len(cases)} strings (seed {args.seed}, {chars / 1e6:.1f} M characters), each graded by every grader. "
        "Categories: " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())) + ".",
        "",
        "| grader | " + " | ".join(cols) + " | crashes | hangs | over limit | non-status outcomes "
        "| unexpected verdicts | wall s |",
        "|---" * (len(cols) + 7) + "|",
    ]
    for task, t in tallies.items():
        lines.append(
            f"| {task} | "
            + " | ".join(str(t.statuses[s]) for s in cols)
            + f" | {t.crashes} | {t.hangs} | {t.over_limit} | {t.bad_outcomes} | {t.unexpected} "
            f"| {walls[task]:.0f} |"
        )
    lines += [
        "",
        "Verdict cases (each must get one of its expected statuses; checked / unexpected):",
        "",
        "| category | expected by | " + " | ".join(tallies) + " |",
        "|---|---|" + "---|" * len(tallies),
    ]
    for cat, (_, grader) in VERDICT_GEN.items():
        lines.append(
            f"| {cat} | {'arith, gsm8k' if grader == 'num' else 'math'} | "
            + " | ".join(f"{t.verdicts[cat, 'checked']} / {t.verdicts[cat, 'unexpected']}" for t in tallies.values())
            + " |"
        )
    lines += ["", "| grader | per | p99 wall s | max wall s | max CPU s | limit |", "|---|---|---|---|---|---|"]
    for task in ("arith", "gsm8k"):
        t = tallies[task]
        lines.append(
            f"| {task} | item | {_pct(t.times, 0.99):.4f} | {max(t.times, default=0):.3f} | "
            f"{max(t.cpu_times, default=0):.3f} | {NUMERIC_LIMIT:g} CPU s |"
        )
    mt = tallies["math"].times
    lines.append(
        f"| math | batch of {args.batch} | {_pct(mt, 0.99):.1f} | {max(mt, default=0):.1f} | - | items x "
        f"{DEFAULT_TIMEOUT:g} s + (1 + timeouts) x {POOL_MARGIN:g} s |"
    )
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ok = all(t.crashes == t.hangs == t.over_limit == t.bad_outcomes == t.unexpected == 0 for t in tallies.values())
    verdict = "pass" if ok else "FAIL"
    lines += [
        "",
        (
            f"Worst math batch: {worst['wall']:.1f} s, {100 * worst['ratio']:.1f}% "
            f"of its {worst['budget']:.0f} s budget "
            f"({worst['per_item']:.2f} s per item). Largest math-verify worker: {worker_mb:.0f} MB resident."
        ),
        "",
        (
            f"Verdict: **{verdict}**: crashes (exceptions out of grade_all), hangs, items over their limit, "
            "outcomes that are not a Grade with a status in STATUSES and verdict cases outside their expected "
            "statuses must all be 0, and a score is NaN exactly "
            f"when the status is `timeout`. Total {time.perf_counter() - t_start:.0f} s."
        ),
        "",
        (
            f"Math: `tasks.datasets.math.DEFAULT_TIMEOUT` = {DEFAULT_TIMEOUT:g} s per item "
            "in the 2-process math-verify "
            "pool, a new pool per grade_all call (as in the pipeline). arith/gsm8k have no timeout of their own: the "
            f"fuzz counts items over {NUMERIC_LIMIT:g} CPU s and interrupts any at {HARD_STOP:g} CPU s (a hang); CPU "
            "rather than wall time because this machine is shared."
        ),
    ]
    failed = [
        f"- {task}: {sum(t.failed.values())} ({dict(t.failed)}); first: {t.first_error.splitlines()[0][:300]}"
        for task, t in tallies.items()
        if t.failed
    ]
    if failed:
        lines += ["", "Failures by grader and category:", ""] + failed
    body = "\n".join(lines)
    if args.no_write:
        print(body)
    else:
        from report import write_section

        write_section("Grader fuzz", body)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
