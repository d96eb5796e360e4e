#!/usr/bin/env bash
# The full-size multi-particle 4x model on one GPU (issues 10 and 12), in one script: simulate training events on
# the host's CPU cores, train configs/multi_particle_4x_gpu.yaml (bf16 autocast), super-resolve the particle-flow
# training events, train the SR-input particle-flow model on them, and evaluate the SR model and the three
# particle-flow input types on a file none of them saw. About 9 minutes on one H200 with one 1,000-event RECO file.
#
#   bench/gpu_multi.sh EVAL.root RECO_COARSE.pt RECO_TRUTH.pt RECO.root [RECO.root ...]
#
# EVAL.root: events none of the models saw (data/multi_particle_4x_eval.root: `graphsr simulate --gun
# multi-particle --factor 4 --events 400 --seed 4`). RECO.root: the particle-flow training events, and the coarse-
# and truth-trained particle-flow checkpoints trained on them: `make demo-multi`'s (data/multi_particle_4x_reco.root,
# seed 1001), or configs/reco/multi_particle_4x_9k.yaml's three files (seeds 1001, 5000, 5001) with
# RECO_CONFIG=configs/reco/multi_particle_4x_9k.yaml. The SR model's training events take seeds 2000 + i, apart from
# all of them. Each RECO file is super-resolved by its own process (the GPU is mostly idle in one). What comes back in
# $OUT (default reports/gpu_multi): log.txt, checkpoint.pt (slim: float16 EMA weights), history.csv, reco_sr.pt (the
# SR-input particle-flow model) and reco_test_metrics.json (its held-out training-file events), report.md and
# metrics.json (`graphsr evaluate` with the three particle-flow models).
# Settings (environment): DEVICE (cuda), EVENTS (60000), PROCS (CPU cores), TRAIN_SECONDS (210), EVAL_EVENTS (300),
# CONFIG (configs/multi_particle_4x_gpu.yaml), RECO_CONFIG (configs/reco/multi_particle_4x.yaml), RECO_STEPS,
# RECO_SECONDS (time limit of the particle-flow training) or RECO_UNTIL (the script's second by which that training
# stops, whenever the super-resolution before it ends: keeps a run inside a fixed lease), CHECKPOINT (skip the training and use this
# super-resolution model).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
if [ $# -lt 4 ]; then
  echo "usage: bench/gpu_multi.sh EVAL.root RECO_COARSE.pt RECO_TRUTH.pt RECO.root [RECO.root ...]" >&2
  exit 2
fi
EVAL=$1 RECO_COARSE=$2 RECO_TRUTH=$3
shift 3
RECO=("$@")
OUT=${OUT:-reports/gpu_multi} DEVICE=${DEVICE:-cuda} EVENTS=${EVENTS:-60000} PROCS=${PROCS:-$(nproc)}
TRAIN_SECONDS=${TRAIN_SECONDS:-210} EVAL_EVENTS=${EVAL_EVENTS:-300}
CONFIG=${CONFIG:-configs/multi_particle_4x_gpu.yaml} RECO_CONFIG=${RECO_CONFIG:-configs/reco/multi_particle_4x.yaml}
for f in "$EVAL" "${RECO[@]}" "$RECO_COARSE" "$RECO_TRUTH" "$CONFIG" "$RECO_CONFIG"; do
  [ -f "$f" ] || { echo "bench/gpu_multi.sh: $f not found" >&2; exit 2; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d)  # simulated events, graph cache, full checkpoints: only the files above come back
exec > >(tee "$OUT/log.txt") 2>&1
G="$PY -m graphsr"
stage() { echo "[$(date +%T), ${SECONDS} s] $*"; }
stage "graphsr multi-particle GPU run on $DEVICE"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

if [ -n "${CHECKPOINT:-}" ]; then  # a model trained earlier (a slim checkpoint will do): steps 3 and 4 only
  SR=$CHECKPOINT
  stage "super-resolution model: $SR"
else
  # 1. training events, one file per CPU core (one thread each)
  stage "simulating $EVENTS events on $PROCS processes, then $TRAIN_SECONDS s of training"
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
  SR=$WORK/sr/checkpoint.pt
fi

# 3. particle flow on SR cells: super-resolve its training events (one process per file) and train on them
SR_FILES=() pids=()
mkdir -p "$WORK/sr_files"
for f in "${RECO[@]}"; do
  SR_FILES+=("$WORK/sr_files/$(basename "$f")")
  $G sample --checkpoint "$SR" --input "$f" --output "${SR_FILES[-1]}" --device "$DEVICE" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
stage "super-resolved the particle-flow events (${#RECO[@]} files)"
RECO_SR=$WORK/reco_sr/checkpoint.pt
[ -z "${RECO_UNTIL:-}" ] || RECO_SECONDS=$(( RECO_UNTIL - SECONDS > 30 ? RECO_UNTIL - SECONDS : 30 ))
if $G train-reco --config "$RECO_CONFIG" --input-type sr --data "${RECO[@]}" --sr-files "${SR_FILES[@]}" \
    --sr-checkpoint "$SR" --out "$WORK/reco_sr" --device "$DEVICE" ${RECO_STEPS:+--steps $RECO_STEPS} \
    ${RECO_SECONDS:+--time-limit $RECO_SECONDS}; then
  cp "$RECO_SR" "$OUT/reco_sr.pt"
  cp "$WORK/reco_sr/test_metrics.json" "$OUT/reco_test_metrics.json"
  stage "trained the SR-input particle flow"
else
  stage "the SR-input particle flow failed: evaluating without it"
  RECO_SR=
fi

# 4. super-resolution and particle flow on events none of the models saw
$G evaluate --checkpoint "$SR" --input "$EVAL" --split all --events "$EVAL_EVENTS" --out "$WORK/eval" --displays 0 \
  --device "$DEVICE" --reco "$RECO_COARSE" "$RECO_TRUTH" $RECO_SR
cp "$WORK/eval/report.md" "$WORK/eval/metrics.json" "$OUT/"
stage "done: $OUT"
rm -rf "$WORK"
