#!/usr/bin/env bash
# Conformance on a GPU machine, from the repository root, installing nothing: the CUDA backend's op rows and tiny-model
# rows against the float64 CPU oracle, then a short perf table. Meant to finish well under 8 minutes on one GPU.
# Writes Markdown reports to ${OUT:-conformance-out}/ and exits non-zero when any conformance row fails.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BACKEND="${1:-cuda}"
DEST="${OUT:-conformance-out}"
mkdir -p "$DEST"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'hip', torch.version.hip)"
python3 -m glm_engine.cli.main backends
python3 -m glm_engine.cli.main conformance --self-test --out "$DEST/self-test.md" > /dev/null; echo "self-test exit $?"
timeout 300 python3 -m glm_engine.cli.main conformance --backend "$BACKEND" --mode test --out "$DEST/test.md" \
  | sed -n '1,/^## Rows/p'
status=${PIPESTATUS[0]}
grep '^| fail' "$DEST/test.md" | head -40
timeout 120 python3 -m glm_engine.cli.main conformance --backend "$BACKEND" --mode perf --out "$DEST/perf.md"
python3 -m glm_engine.cli.main conformance --backend "$BACKEND" --mode support --out "$DEST/support.md" > /dev/null
exit "$status"
