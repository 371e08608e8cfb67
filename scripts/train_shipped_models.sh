#!/usr/bin/env bash
# Re-make every occupancy checkpoint shipped in stereovoxel_ros/checkpoints/ with the project's own commands,
# on synthetic data the project generates (nothing is downloaded). About 3 h on 2 CPU cores (stage 2 alone: 95 min).
#   bash scripts/train_shipped_models.sh [WORKDIR]     (default WORKDIR: .cache/shipped_models)
# One torch thread per process: on a busy 2-core machine two threads stall (OpenMP spin), see README.
# The patch detector's checkpoint has its own command, recorded in stereovoxel_ros/checkpoints/patch_detector.json.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-.cache/shipped_models}
SV=(.venv/bin/python -m stereovoxel_ros.cli)
CK=stereovoxel_ros/checkpoints
mkdir -p "$WORK"

# 960 frames of 160 short drives (6 frames each) through random worlds: 80/10/10 train/val/test by drive.
[ -f "$WORK/data/dataset.json" ] || "${SV[@]}" dataset synth "$WORK/data" --frames 960 --seed 1 --sequence-length 6

# The two StereoVoxelNet variants train side by side (one thread each); default loss soft_iou+height+depth+bce.
# The main model samples the correlation at all 64 voxel depths (held-out obstacle IoU 0.092 vs 0.063 with 12).
# Stage 1 of the main model: 256x128 input on the 960 stored frames.
"${SV[@]}" train "$WORK/data" --out "$WORK/svn" --epochs 24 --batch-size 4 --lr 3e-3 --seed 0 \
    --threads 1 --time-budget-min 45 --no-progress --set cost_volume_levels=64 \
    --ship "$WORK/svn_stage1_256.pt" &
MAIN=$!
"${SV[@]}" train "$WORK/data" --variant stereovoxelnet_fast --out "$WORK/svn_fast" --epochs 24 --batch-size 4 \
    --lr 3e-3 --seed 0 --threads 1 --time-budget-min 45 --no-progress --ship "$CK/stereovoxelnet_fast_jackal_wide.pt" &
FAST=$!
wait "$MAIN"
wait "$FAST"
# Stage 2: 512x128 input on domain-randomised worlds streamed from the generator (stream seed 100), validated
# on tuning seed 2; then the occupancy threshold and the per-level octree gates calibrated on the same tuning set.
bash scripts/train_stereovoxelnet_stream.sh "$WORK/svn_stage1_256.pt" "$WORK/svn512" "$WORK/svn512_ship.pt" 95
"${SV[@]}" calibrate "$WORK/svn512_ship.pt" .cache/eval/val_s2 --out "$CK/stereovoxelnet_jackal_wide.pt"
# Stage 3 (opt-in stereovoxelnet_jackal_wide_ncc.pt): the full-resolution NCC matching cost, stream seed 300,
# from the stage-2 weights; calibrated on the same tuning set.
bash scripts/train_stereovoxelnet_stream.sh "$CK/stereovoxelnet_jackal_wide.pt" "$WORK/svn512_pc" "$WORK/svn512_pc_ship.pt" 95 3
"${SV[@]}" calibrate "$WORK/svn512_pc_ship.pt" .cache/eval/val_s2 --out "$CK/stereovoxelnet_jackal_wide_ncc.pt"
# Stage 4 (stereovoxelnet_jackal_wide_bm.pt): the classic backend's StereoBM votes per slab as a further input,
# stream seed 400, from the stage-3 weights, 70 min; calibrated on the same tuning set.
bash scripts/train_stereovoxelnet_stream.sh "$CK/stereovoxelnet_jackal_wide_ncc.pt" "$WORK/svn512_bm" "$WORK/svn512_bm_ship.pt" 70 4
"${SV[@]}" calibrate "$WORK/svn512_bm_ship.pt" .cache/eval/val_s2 --out "$CK/stereovoxelnet_jackal_wide_bm.pt"
"${SV[@]}" train "$WORK/data" --model stereo_depth_net --out "$WORK/depth" --epochs 12 --batch-size 4 --lr 2e-3 \
    --seed 0 --threads 1 --time-budget-min 8 --ship "$CK/stereo_depth_net.pt"
# The shipped stereovoxelnet_jackal_wide_allinone.pt (issue 23) came from the command in its .json card (12 epochs
# on synthetic seeds 1+2, all channel groups; docs/compression.md); this line is the older, shorter recipe.
"${SV[@]}" finetune "$CK/stereovoxelnet_jackal_wide.pt" "$WORK/data" --out "$WORK/svn_allinone" \
    --method all_in_one --method-opt ratios=0,0.25,0.5 --epochs 3 --batch-size 4 --lr 5e-4 --seed 3 \
    --threads 1 --time-budget-min 6 --no-progress --ship "$CK/stereovoxelnet_jackal_wide_allinone.pt"

# The three held-out sets the README reports (seeds never used to train or tune), all backends in one run.
for S in 9101 9102 9103; do
    [ -f ".cache/eval/heldout_s$S/dataset.json" ] || "${SV[@]}" dataset synth ".cache/eval/heldout_s$S" --frames 96 --seed "$S" --sequence-length 8
done
"${SV[@]}" eval .cache/eval/heldout_s9101 .cache/eval/heldout_s9102 .cache/eval/heldout_s9103 \
    --compare stage1="$WORK/svn_stage1_256.pt" --depth-checkpoint "$CK/stereo_depth_net.pt" --out "$WORK/eval_heldout"
