"""The one learning-rate schedule every training loop uses: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine_lr(
    progress: float, step: int, base: float, warmup_steps: int, floor: float = 0.05
) -> float:
    """``base`` × linear warm-up over the first ``warmup_steps`` steps × cosine decay from 1 to ``floor`` as
    ``progress`` (the share of training done, clipped to 0..1) goes from 0 to 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return base * warm * (floor + (1.0 - floor) * cosine)
