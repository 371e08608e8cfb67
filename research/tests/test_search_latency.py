"""Latency lookup table: covers the space, predicts by summing blocks, stored atomically, clear errors."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from stereovoxel_research.search.latency_table import (
    BlockSpec,
    LatencyTable,
    LatencyTableError,
    build_latency_table,
    calibrate_latency_table,
    calibration_subnets,
    measure_latency_ms,
    space_blocks,
    subnet_blocks,
)
from stereovoxel_research.search.search_space import SearchSpace
from stereovoxel_ros.core.models.efficientformer_v2 import EFFICIENTFORMER_V2_CONFIGS


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    """A tiny space (overrides the conftest one): every block is timed to build its table."""
    base = replace(
        EFFICIENTFORMER_V2_CONFIGS["efficientformerv2_s0"],
        widths=(16, 24, 32, 48),
        depths=(1, 1, 2, 2),
        mlp_ratios=((4,), (4,), (4, 4), (4, 4)),
        num_attn=(0, 0, 1, 1),
        key_dim=8,
        num_heads=2,
        in_chans=1,
        num_classes=10,
    )
    return SearchSpace(base, width_mults=(1.0, 0.5), ratio_choices=(4.0, 2.0), image_hw=(16, 16))


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> LatencyTable:
    return build_latency_table(space, rounds=1, reps=2, flush_mb=0.5)


def test_table_covers_every_subnet_and_sums_blocks(space: SearchSpace, table: LatencyTable) -> None:
    assert set(table.entries) == {b.key for b in space_blocks(space)}
    assert all(v > 0 for v in table.entries.values())
    rng = random.Random(0)
    for subnet in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(10))]:
        blocks = subnet_blocks(space, subnet)
        assert blocks[0].kind == "stem" and blocks[-1].kind == "head"
        assert sum(b.kind in ("ffn", "attn") for b in blocks) == sum(subnet.depths)
        assert table.predict_ms(space, subnet) == pytest.approx(sum(table.entries[b.key] for b in blocks))
    assert table.predict_ms(space, space.smallest()) < table.predict_ms(space, space.largest())
    assert table.meta["clock"] == "thread_cpu" and table.meta["threads"] == 1


def test_keys_separate_type_width_and_resolution(space: SearchSpace) -> None:
    blocks = subnet_blocks(space, space.largest())
    keys = [b.key for b in blocks]
    assert "attn/c48/o192/f0/1x1" in keys  # stage 4 at 16 px: 1×1 tokens, no stride
    assert "attn/c32/o128/f2/1x1" in keys  # stage 3: stride attention
    assert "down/c32/o48/f1/1x1" in keys  # attention downsampling into stage 4


def test_save_load_atomic_and_errors(space: SearchSpace, table: LatencyTable, tmp_path) -> None:
    path = tmp_path / "lut" / "latency_table.json"
    table.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["latency_table.json"]  # no temp file left
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries and loaded.meta["image_hw"] == [16, 16]
    other = replace(space, image_hw=(32, 32))
    with pytest.raises(LatencyTableError, match=r"no entry 'stem/c1/o16/f0/32x32'"):
        loaded.predict_ms(other, other.largest())
    path.write_text("{not json")
    with pytest.raises(LatencyTableError, match="cannot read latency table"):
        LatencyTable.load(path)
    path.write_text('{"version": 99}')
    with pytest.raises(LatencyTableError, match="not a version-1 latency table"):
        LatencyTable.load(path)


def test_measure_latency_sees_work() -> None:
    a = torch.randn(256, 256)
    small = measure_latency_ms(lambda: a[:16, :16] @ a[:16, :16], rounds=2, reps=5)
    big = measure_latency_ms(lambda: a @ a @ a @ a, rounds=2, reps=5)
    assert 0 < small < big
    with pytest.raises(ValueError, match="unknown clock"):
        measure_latency_ms(lambda: None, clock="sundial")


def test_calibration_scales_predictions_and_persists(space: SearchSpace, tmp_path) -> None:
    table = build_latency_table(space, rounds=1, reps=2, flush_mb=0.0)
    subnet = space.largest()
    raw = table.predict_ms(space, subnet)
    assert table.scale == 1.0
    subnets = calibration_subnets(space, 2)
    assert subnets[0] != subnets[1]
    scale = calibrate_latency_table(table, space, subnets)
    assert 0.2 < scale < 5.0 and table.scale == scale
    assert table.predict_ms(space, subnet) == pytest.approx(raw * scale)
    assert table.predict_ms(space, subnet, calibrated=False) == pytest.approx(raw)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").scale == scale


def test_block_spec_builds_the_keyed_hidden_width(space: SearchSpace) -> None:
    for c_in, hidden in ((72, 216), (88, 264), (48, 96), (24, 24)):
        block = BlockSpec("ffn", c_in, hidden, (2, 2)).build(space.base)
        assert block.mlp.fc1[0].out_channels == hidden
