#!/usr/bin/env bash
# Create the MLServer peer's own venv: setup.sh [VENV_DIR] (default: .venv next to this script).
# Pinned: mlserver 1.7.1 with uvloop < 0.22 (newer uvloop kills MLServer's inference workers),
# and the same onnxruntime and numpy as the project's .venv so both servers run the same kernels.
# Idempotent: does nothing when the venv already has these versions. PYTHON picks the interpreter
# (3.9-3.12, mlserver 1.7.1's range; default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
PINS=(mlserver==1.7.1 "uvloop<0.22" onnxruntime==1.32.0 numpy==2.3.5)

installed() {
    "$VENV/bin/python" -I - <<'PY' 2>/dev/null
from importlib.metadata import version

import onnxruntime  # noqa: F401 - imports, not only metadata
import mlserver  # noqa: F401

uv = tuple(int(p) for p in version("uvloop").split(".")[:2])
ok = (version("mlserver"), version("onnxruntime"), version("numpy")) == ("1.7.1", "1.32.0", "2.3.5")
raise SystemExit(0 if ok and uv < (0, 22) else 1)
PY
}

if [[ -x "$VENV/bin/python" ]] && installed; then
    echo "MLServer peer already installed in $VENV"
    exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
installed || { echo "install did not give ${PINS[*]} in $VENV" >&2; exit 1; }
echo "MLServer peer installed in $VENV ($("$VENV/bin/mlserver" --version 2>/dev/null || echo mlserver))"
