"""Evaluation, benchmarking and export of StereoVoxelNet and its baselines."""
