"""Training and fine-tuning of StereoVoxelNet and its baselines."""
