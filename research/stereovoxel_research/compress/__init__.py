"""Compression for the robot's hardware: PIM-aware quantization (PIM-QAT) and All-in-One pruning for DVFS."""
