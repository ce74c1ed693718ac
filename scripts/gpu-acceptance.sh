#!/usr/bin/env bash
# The GPU check (fishbench gpu-check) with whatever interpreter is at hand: the project's .venv,
# else python3 (a lent GPU machine: offline, packages carried as wheels, docs/measuring.md).
#
#   scripts/gpu-acceptance.sh --part 1          # one part on the GPU (each fits 8 minutes)
#   scripts/gpu-acceptance.sh --dry-run         # every part on CPU, tiny checkpoint
#   PYTHON=python3 scripts/gpu-acceptance.sh --part 2 --out-dir "$OUT"
#
# Exit 2 without a usable GPU, 3 naming a missing package on the first line.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m harness.gpu_check "$@"
