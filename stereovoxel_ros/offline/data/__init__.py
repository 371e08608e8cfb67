"""Stereo datasets: the on-disk format, synthetic worlds, bag extraction and public folder readers."""
