#!/usr/bin/env bash
# Stage 2, 3 or 4 of the shipped StereoVoxelNet on a lent GPU (never required: scripts/train_stereovoxelnet_stream.sh
# is the same recipe on one CPU core). Same stream seeds, validation set and init as the CPU script; a larger
# batch, 12 render processes and CUDA. Prepared for a 10-minute device call:
#   bash scripts/gpu_train_stereovoxelnet.sh PARENT.pt OUT_DIR SHIP.pt [MINUTES=8] [STAGE=2]
# Needs the project's Python environment there (open3d renders the worlds; it is not on the device image by
# default, so install requirements.txt first or carry wheels, see the device tool's notes). Resumes from
# OUT_DIR/last.pt, so a second call continues the first.
set -euo pipefail
cd "$(dirname "$0")/.."
PARENT=$1 OUT=$2 SHIP=$3 MINUTES=${4:-8} STAGE=${5:-2}
case "$STAGE" in
  2) STAGE_ARGS=(--stream-seed 100 --lr 2e-3 --seed 5) ;;
  3) STAGE_ARGS=(--stream-seed 300 --lr 1e-3 --seed 6 --set 'pixel_cost_window=[4,8]') ;;
  4) STAGE_ARGS=(--stream-seed 400 --lr 1e-3 --seed 7 --set 'pixel_cost_window=[4,8]' --set block_match_prior=true) ;;
  *) echo "gpu_train_stereovoxelnet.sh: STAGE must be 2, 3 or 4, got $STAGE" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
SV=("$PY" -m stereovoxel_ros.cli)
VAL=.cache/eval/val_s2
[ -f "$VAL/dataset.json" ] || "${SV[@]}" dataset synth "$VAL" --frames 48 --seed 2 --sequence-length 4
RESUME=()
[ -f "$OUT/last.pt" ] && RESUME=(--resume)
"${SV[@]}" train "$VAL" --stream --samples-per-epoch 1536 --frames-per-world 4 \
    --stream-workers 12 --init "$PARENT" --input-size 512x128 --set cost_volume_levels=64 \
    --out "$OUT" --epochs 200 --batch-size 16 --threads 4 --time-budget-min "$MINUTES" \
    --device cuda --no-progress --ship "$SHIP" "${STAGE_ARGS[@]}" "${RESUME[@]}"
