#!/usr/bin/env bash
# Serve one sarnn-serve model directory with MLServer on loopback:
#   serve.sh MODEL_DIR PORT [WORKERS]
# WORKERS: MLServer's parallel inference workers (default: settings.json's, 2; 0 runs inference
# in the HTTP process; see README.md). Writes a model repository to
# ${TMPDIR:-/tmp}/sarnn-mlserver-<name>-<PORT> (this directory's settings.json and
# model-settings.json with the port, workers and model filled in, and a link to runtime.py) and
# execs `mlserver start` there, so this script's pid is the server's. gRPC listens on a free
# loopback port (MLServer always starts it); metrics are off.
# MLSERVER_VENV: the venv made by setup.sh (default: .venv next to this script).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${MLSERVER_VENV:-$HERE/.venv}"
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 MODEL_DIR PORT [WORKERS]" >&2
    exit 2
fi
[[ -x "$VENV/bin/mlserver" ]] || { echo "no MLServer in $VENV: run $HERE/setup.sh" >&2; exit 1; }

REPO="$("$VENV/bin/python" -I - "$HERE" "$@" <<'PY'
import json
import os
import socket
import sys
from pathlib import Path

here, model_dir, port = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), int(sys.argv[3])
name = json.loads((model_dir / "model.json").read_text())["name"]
repo = Path(os.environ.get("TMPDIR", "/tmp")) / f"sarnn-mlserver-{name}-{port}"
(repo / name).mkdir(parents=True, exist_ok=True)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    grpc_port = s.getsockname()[1]
settings = json.loads((here / "settings.json").read_text())
settings |= {"http_port": port, "grpc_port": grpc_port}
if len(sys.argv) > 4:
    settings["parallel_workers"] = int(sys.argv[4])
(repo / "settings.json").write_text(json.dumps(settings, indent=2))
model = json.loads((here / "model-settings.json").read_text())
model |= {"name": name, "parameters": {"uri": str(model_dir)}}
(repo / name / "model-settings.json").write_text(json.dumps(model, indent=2))
link = repo / name / "runtime.py"
link.unlink(missing_ok=True)
link.symlink_to(here / "runtime.py")
print(repo)
PY
)"
cd "$REPO"
exec "$VENV/bin/mlserver" start "$REPO"
