#!/usr/bin/env bash
# The device check (docs/benchmarking.md#the-device-check): one pass over what a GPU machine must show, each step in
# its own process under its own time limit, ending in one summary table; under 8 minutes on one GPU. Installs
# nothing: it imports this checkout (PYTHONPATH) next to the torch and Triton already installed, so it runs offline.
# Usage: bash tools/device_check.sh [--cpu] [--dry-run] [--only STEP] [--skip STEP] [--out DIR] [--limit-scale X]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "error: $PY cannot import torch; the device check uses the torch (and Triton) installed on the GPU machine:" \
    "activate that environment or set PYTHON=/path/to/its/python" >&2
  exit 1
fi
exec "$PY" -m tools.device_check "$@"
