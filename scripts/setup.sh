#!/usr/bin/env bash
# Create ./.venv and install scpeft-hf into it. `--test` also installs the test tools, the `integration` extra
# (scIB metrics) and the official scGPT reference code used by the parity tests. Works offline against a local
# package index.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SCPEFT_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# A bare `torch` requirement on a machine without torch can resolve to a multi-GB CUDA build.
# Install the CPU build first (override with SCPEFT_TORCH="torch==X" or a GPU build of your choice).
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "${SCPEFT_TORCH:-torch==2.13.0}"
fi
if [ "${1:-}" = "--test" ]; then
    "$PY" -m pip install -q -e ".[test,integration]"
    # The official scGPT code, for parity tests only. --no-deps: its torchtext pin no longer installs.
    "$PY" -m pip install -q --no-deps "scgpt==0.2.4"
else
    "$PY" -m pip install -q -e .
fi
