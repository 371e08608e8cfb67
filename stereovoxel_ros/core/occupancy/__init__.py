"""Occupancy: predictors, the octree decoder, obstacle grids, the local map, scoring and All-in-One switching."""
