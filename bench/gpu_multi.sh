#!/usr/bin/env bash
# The full-size multi-particle 4x model on one GPU (issues 10 and 12), in one script: simulate training events on
# the host's CPU cores, train configs/multi_particle_4x_gpu.yaml (bf16 autocast), evaluate it on a file it never saw,
# super-resolve the particle-flow training events, train the SR-input particle-flow model on them, and evaluate the
# three input types on the unseen file. About 8 minutes on one H200.
#
#   bench/gpu_multi.sh EVAL.root RECO.root RECO_COARSE.pt RECO_TRUTH.pt
#
# EVAL.root: events none of the models saw (data/multi_particle_4x_eval.root: `graphsr simulate --gun
# multi-particle --factor 4 --events 400 --seed 4`). RECO.root and the coarse- and truth-trained particle-flow
# checkpoints: `make demo-multi`'s (data/multi_particle_4x_reco.root, seed 1000). The training events take seeds
# 2000 + i, apart from both. What comes back in $OUT (default reports/gpu_multi): log.txt, checkpoint.pt (slim:
# float16 EMA weights), history.csv, report.md and metrics.json (super-resolution), reco_sr.root (`graphsr sample` of
# RECO.root), reco_sr.pt (the SR-input particle-flow model) and report_reco.md (the evaluation with particle flow).
# Settings (environment): DEVICE (cuda), EVENTS (60000), PROCS (CPU cores), TRAIN_SECONDS (240), EVAL_EVENTS (300),
# CONFIG (configs/multi_particle_4x_gpu.yaml), RECO_CONFIG (configs/reco/multi_particle_4x_cpu.yaml), RECO_STEPS.
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
if [ $# -ne 4 ]; then
  echo "usage: bench/gpu_multi.sh EVAL.root RECO.root RECO_COARSE.pt RECO_TRUTH.pt" >&2
  exit 2
fi
EVAL=$1 RECO=$2 RECO_COARSE=$3 RECO_TRUTH=$4
OUT=${OUT:-reports/gpu_multi} DEVICE=${DEVICE:-cuda} EVENTS=${EVENTS:-60000} PROCS=${PROCS:-$(nproc)}
TRAIN_SECONDS=${TRAIN_SECONDS:-240} EVAL_EVENTS=${EVAL_EVENTS:-300}
CONFIG=${CONFIG:-configs/multi_particle_4x_gpu.yaml} RECO_CONFIG=${RECO_CONFIG:-configs/reco/multi_particle_4x_cpu.yaml}
for f in "$EVAL" "$RECO" "$RECO_COARSE" "$RECO_TRUTH" "$CONFIG" "$RECO_CONFIG"; do
  [ -f "$f" ] || { echo "bench/gpu_multi.sh: $f not found" >&2; exit 2; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d)  # simulated events, graph cache, full checkpoints: only the files above come back
exec > >(tee "$OUT/log.txt") 2>&1
G="$PY -m graphsr"
stage() { echo "[$(date +%T), ${SECONDS} s] $*"; }
stage "graphsr multi-particle GPU run on $DEVICE: $EVENTS events on $PROCS processes, $TRAIN_SECONDS s of training"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

# 1. training events, one file per CPU core (one thread each)
pids=()
for i in $(seq 0 $((PROCS - 1))); do
  OMP_NUM_THREADS=1 $G simulate --gun multi-particle --factor 4 --events $(( EVENTS / PROCS )) --seed $((2000 + i)) \
    --no-neighbour-branches --output "$WORK/train_$i.root" 2>"$WORK/simulate_$i.log" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { cat "$WORK"/simulate_*.log; exit 1; }; done
stage "simulated"

# 2. the super-resolution model (its log prints the training rate), slimmed for the trip back
$G train --config "$CONFIG" --data "$WORK"/train_*.root --out "$WORK/sr" --time-limit "$TRAIN_SECONDS" --device "$DEVICE"
$PY -c "from graphsr.training.checkpoint import slim_checkpoint as s; s('$WORK/sr/checkpoint.pt', '$OUT/checkpoint.pt')"
cp "$WORK/sr/history.csv" "$OUT/"
stage "trained"

# 3. super-resolution quality on events none of the models saw
$G evaluate --checkpoint "$WORK/sr/checkpoint.pt" --input "$EVAL" --split all --events "$EVAL_EVENTS" \
  --out "$WORK/eval" --displays 0 --device "$DEVICE"
cp "$WORK/eval/report.md" "$WORK/eval/metrics.json" "$OUT/"
stage "evaluated"

# 4. particle flow on SR cells: super-resolve its training events, train on them, evaluate all three input types
$G sample --checkpoint "$WORK/sr/checkpoint.pt" --input "$RECO" --output "$OUT/reco_sr.root" --device "$DEVICE"
$G train-reco --config "$RECO_CONFIG" --input-type sr --data "$RECO" --sr-files "$OUT/reco_sr.root" \
  --sr-checkpoint "$WORK/sr/checkpoint.pt" --out "$WORK/reco_sr" --device "$DEVICE" ${RECO_STEPS:+--steps $RECO_STEPS}
cp "$WORK/reco_sr/checkpoint.pt" "$OUT/reco_sr.pt"
$G evaluate --checkpoint "$WORK/sr/checkpoint.pt" --input "$EVAL" --split all --events "$EVAL_EVENTS" \
  --out "$WORK/eval_reco" --displays 0 --device "$DEVICE" --reco "$RECO_COARSE" "$RECO_TRUTH" "$WORK/reco_sr/checkpoint.pt"
cp "$WORK/eval_reco/report.md" "$OUT/report_reco.md"
stage "done: $OUT"
rm -rf "$WORK"
