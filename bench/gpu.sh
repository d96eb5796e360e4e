#!/usr/bin/env bash
# The GPU run in one script: simulate on the CPU cores, train the full-size single-electron model (bf16), distil it
# to one step, time training and super-resolution (4 and 1 network evaluations, ensemble 10), evaluate held-out
# events, write slim checkpoints and metrics to $OUT (default reports/gpu). Details: bench/gpu_run.py.
#
#   bench/gpu.sh                       # on a GPU host (about 8 minutes on one H100)
#   bench/gpu.sh --device cpu --tiny   # every step on a few events, on the CPU (the test suite runs this)
#   bench/gpu.sh --compile             # also time the teacher through torch.compile (graphsr.nn.use_compile)
#
# Hosts without uproot / awkward get them from .whl/ (bench/gpu_env.sh).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
exec "$PY" bench/gpu_run.py --out "${OUT:-reports/gpu}" "$@"
