"""Geometry: transforms, the Jackal platform, the stereo camera model, grid and voxel geometry."""
