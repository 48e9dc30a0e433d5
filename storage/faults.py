"""Fault injection: SIGKILL this process at a named point, for the chaos benchmark and crash tests.

    SEGFLOW_CRASH_AT="parquet_write:3" segflow run ...   # dies inside the 3rd Parquet write of this process

SIGKILL runs no cleanup (no `finally`, no atexit), like a power cut or the OOM killer, so it exercises
exactly what a real crash leaves behind. Points (the n-th time this process reaches them, 1-based):
  parquet_write    the table is in the temporary file, not yet renamed over the artifact
  checkpoint_save  the checkpoint's files are in the temporary directory, not yet renamed
  weight_load      new weights are in the running engine, its prefix cache not yet reset
  stage:<name>     the flow is about to run (or cache-hit) stage <name>
SEGFLOW_FAIL_AT="<point>:<n>" raises InjectedFailure there instead (a failed stage rather than a dead
process: what `prefect flow-run retry` and the UI's Retry button recover from).
Unset in normal runs, where a check costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SEGFLOW_CRASH_AT"
FAIL_ENV = "SEGFLOW_FAIL_AT"
_reached: Counter = Counter()


class InjectedFailure(RuntimeError):
    pass


def crash_point(point: str) -> None:
    for env, action in ((ENV, "kill"), (FAIL_ENV, "raise")):
        spec = os.environ.get(env)
        if not spec:
            continue
        name, _, nth = spec.rpartition(":")
        if name != point:
            continue
        _reached[(env, point)] += 1
        if _reached[(env, point)] == int(nth):
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFailure(f"{FAIL_ENV}={spec}: injected failure at {point}")
