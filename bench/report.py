"""Write one benchmark's section into BENCHMARKS.md (between its markers), keeping the others."""

from __future__ import annotations

import platform
import re
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery number here is written by a script in bench/, with the command that produced it.\n"


def write_section(name: str, body: str) -> None:
    root = BENCHMARKS.parent
    exe = Path(sys.executable)
    py = exe.relative_to(root).as_posix() if exe.is_relative_to(root) else "python"
    script = Path(sys.argv[0]).resolve()
    script = script.relative_to(root).as_posix() if script.is_relative_to(root) else script.as_posix()
    cmd = " ".join([py, script] + sys.argv[1:])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}"
    section = (
        f"<!-- bench:{name} -->\n## {name}\n\nCommand: `{cmd}` ({stamp}; {machine})\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
    print(section)


def spread(values: list[float]) -> float:
    """Sample standard deviation over seeds; 0 for a single run."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def start_final(summary: dict, key: str) -> tuple[float, float]:
    """A run summary's metric series `key` (e.g. eval_accuracy, eval_avg_at_k) at iteration 0 and at its
    last evaluation."""
    series = summary[key]
    return series["0"], series[str(max(int(k) for k in series))]
