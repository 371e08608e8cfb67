#!/usr/bin/env bash
# Stage 2 of the shipped StereoVoxelNet: from the stage-1 weights (256x128 input, 960 stored frames), train at
# 512x128 input on domain-randomised worlds streamed from the generator (stream seed 100, never reused),
# validating on 48 frames of default worlds of tuning seed 2. Checkpoints every epoch (320 samples, a few
# minutes on one core); rerun the same command to resume after an interruption.
#   bash scripts/train_stereovoxelnet_stream.sh PARENT.pt OUT_DIR SHIP.pt [MINUTES]
# CPU: one torch thread for training, one render process. GPU: scripts/gpu_train_stereovoxelnet.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PARENT=$1 OUT=$2 SHIP=$3 MINUTES=${4:-80}
SV=(.venv/bin/python -m stereovoxel_ros.cli)
VAL=.cache/eval/val_s2
[ -f "$VAL/dataset.json" ] || "${SV[@]}" dataset synth "$VAL" --frames 48 --seed 2 --sequence-length 4
RESUME=()
[ -f "$OUT/last.pt" ] && RESUME=(--resume)
"${SV[@]}" train "$VAL" --stream --stream-seed 100 --samples-per-epoch 320 --frames-per-world 4 \
    --stream-workers 1 --init "$PARENT" --input-size 512x128 --set cost_volume_levels=64 \
    --out "$OUT" --epochs 60 --batch-size 4 --lr 1e-3 --seed 5 --threads 1 --time-budget-min "$MINUTES" \
    --no-progress --ship "$SHIP" "${RESUME[@]}"
