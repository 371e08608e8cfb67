"""Offline tools for the patch-defended 2D detector: data, training, COCO evaluation and the CLI."""
