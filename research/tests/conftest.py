"""Fixtures shared by the research tests."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stereovoxel_research.search.search_space import SearchSpace
from stereovoxel_ros.core.models.efficientformer_v2 import EFFICIENTFORMER_V2_CONFIGS


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    """The search space around EfficientFormerV2-S0 for 1-channel 32x32 images and 10 classes (digits)."""
    base = replace(EFFICIENTFORMER_V2_CONFIGS["efficientformerv2_s0"], in_chans=1, num_classes=10)
    return SearchSpace(base, image_hw=(32, 32))
