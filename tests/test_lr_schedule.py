"""The one learning-rate schedule."""

from __future__ import annotations

import itertools

import pytest

from stereovoxel_ros.offline.train.lr_schedule import warmup_cosine_lr


def test_warm_up_then_cosine_to_the_floor() -> None:
    assert warmup_cosine_lr(0.0, 0, 1.0, 4) == pytest.approx(0.25)
    assert warmup_cosine_lr(0.0, 3, 1.0, 4) == pytest.approx(1.0)
    assert warmup_cosine_lr(0.5, 100, 2.0, 4) == pytest.approx(2.0 * (0.05 + 0.95 * 0.5))
    assert warmup_cosine_lr(1.0, 100, 1.0, 4) == pytest.approx(0.05)
    assert warmup_cosine_lr(3.0, 100, 1.0, 4, floor=0.02) == pytest.approx(0.02)  # progress clipped
    assert warmup_cosine_lr(0.0, 0, 1.0, 0) == pytest.approx(1.0)  # no warm-up
    lrs = [warmup_cosine_lr(p / 10, 10 + p, 1.0, 4) for p in range(11)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
