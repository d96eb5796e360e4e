#!/usr/bin/env bash
# The GPU run in one script: simulate on the CPU cores, train the full-size single-electron model (bf16), distil it
# to one step, time training and super-resolution (4 and 1 network evaluations, ensemble 10), evaluate held-out
# events, write slim checkpoints and metrics to $OUT (default reports/gpu). Details: bench/gpu_run.py.
#
#   bench/gpu.sh                       # on a GPU host (about 8 minutes on one H100)
#   bench/gpu.sh --device cpu --tiny   # every step on a few events, on the CPU (the test suite runs this)
#
# Hosts without uproot / awkward (the device machines here) get them from cp312 wheels in .whl/ (git-ignored;
# README, "Using graphsr on a GPU host"); torch-scatter / torch-cluster are optional (pure-torch fallback).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ! "$PY" -c "import uproot, awkward" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/graphsr-site .whl/*.whl
  export PYTHONPATH=/tmp/graphsr-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_run.py --out "${OUT:-reports/gpu}" "$@"
