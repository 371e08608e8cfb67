#!/usr/bin/env bash
# StereoVoxelNet on domain-randomised worlds streamed from the generator, at 512x128 input, validating on 48
# frames of default worlds of tuning seed 2. Checkpoints every epoch (320 samples, a few minutes on one core);
# rerun the same command to resume after an interruption.
#   bash scripts/train_stereovoxelnet_stream.sh PARENT.pt OUT_DIR SHIP.pt [MINUTES] [STAGE]
# STAGE 2 (default): from the stage-1 weights (256x128 input, 960 stored frames), stream seed 100.
# STAGE 3: from the stage-2 weights, adds the full-resolution NCC matching cost (pixel_cost_window 4x8; the new
#          input weights start at zero, so training starts from the parent's outputs), stream seed 300.
# STAGE 4: from the stage-3 weights, adds the classic backend's StereoBM votes per slab (block_match_prior; new
#          input weights start at zero as well), stream seed 400.
# Stream seeds are never reused for anything else. CPU: one torch thread for training, one render process.
# GPU: scripts/gpu_train_stereovoxelnet.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PARENT=$1 OUT=$2 SHIP=$3 MINUTES=${4:-80} STAGE=${5:-2}
SV=(.venv/bin/python -m stereovoxel_ros.cli)
VAL=.cache/eval/val_s2
case "$STAGE" in
  2) STAGE_ARGS=(--stream-seed 100 --lr 1e-3 --seed 5) ;;
  3) STAGE_ARGS=(--stream-seed 300 --lr 5e-4 --seed 6 --set 'pixel_cost_window=[4,8]') ;;
  4) STAGE_ARGS=(--stream-seed 400 --lr 5e-4 --seed 7 --set 'pixel_cost_window=[4,8]' --set block_match_prior=true) ;;
  *) echo "train_stereovoxelnet_stream.sh: STAGE must be 2, 3 or 4, got $STAGE" >&2; exit 2 ;;
esac
[ -f "$VAL/dataset.json" ] || "${SV[@]}" dataset synth "$VAL" --frames 48 --seed 2 --sequence-length 4
RESUME=()
[ -f "$OUT/last.pt" ] && RESUME=(--resume)
"${SV[@]}" train "$VAL" --stream --samples-per-epoch 320 --frames-per-world 4 \
    --stream-workers 1 --init "$PARENT" --input-size 512x128 --set cost_volume_levels=64 \
    --out "$OUT" --epochs 60 --batch-size 4 --threads 1 --time-budget-min "$MINUTES" \
    --no-progress --ship "$SHIP" "${STAGE_ARGS[@]}" "${RESUME[@]}"
