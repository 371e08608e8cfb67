"""Domain-randomised training worlds and the streamed training set: deterministic, varied, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from stereovoxel_ros.offline.data.domain_randomization import (
    TRAINING_KIND_WEIGHTS,
    DomainRandomization,
    DomainRandomizationError,
    draw_world,
    randomized_sequence,
)
from stereovoxel_ros.offline.data.synth_config import DEFAULT_KIND_WEIGHTS, SynthConfig
from stereovoxel_ros.offline.data.synth_layout import random_obstacles
from stereovoxel_ros.offline.data.synth_materials import (
    PHOTO_TEXTURES,
    TEXTURE_NAMES,
    photo_texture,
    texture_bank,
)
from stereovoxel_ros.offline.data.synth_stream import StreamingStereoSet, SynthStreamConfig, SynthStreamError

SMALL = SynthConfig.for_size(160, 90)


def test_default_worlds_never_draw_training_only_kinds():
    rng = np.random.default_rng(4)
    path = np.stack([np.linspace(0, 3, 31), np.zeros(31)], 1)
    kinds = {o.kind for _ in range(20) for o in random_obstacles(SMALL, rng, path)}
    assert "curb" not in kinds and kinds <= set(DEFAULT_KIND_WEIGHTS)
    training = {o.kind for _ in range(20) for o in random_obstacles(SMALL, rng, path, TRAINING_KIND_WEIGHTS)}
    assert "curb" in training


def test_photo_textures_come_from_the_installed_photos():
    pytest.importorskip("skimage")
    brick = photo_texture("brick.png", 64)
    assert brick is not None and brick.shape == (64, 64) and 0 <= brick.min() < brick.max() <= 1
    assert np.allclose(brick[:, :32], brick[:, 32:][:, ::-1])  # mirrored: wraps without a seam
    _, offsets, _ = texture_bank()
    assert offsets.shape[0] == len(TEXTURE_NAMES) == 8 + len(PHOTO_TEXTURES)


def test_randomized_sequence_is_deterministic_and_worlds_differ():
    r = DomainRandomization()
    a = list(randomized_sequence(SMALL, r, 7, 3, 2))
    b = list(randomized_sequence(SMALL, r, 7, 3, 2))
    c = list(randomized_sequence(SMALL, r, 7, 4, 2))
    assert all(np.array_equal(x.left, y.left) and np.array_equal(x.voxels, y.voxels) for x, y in zip(a, b))
    assert not np.array_equal(a[0].left, c[0].left)
    assert a[0].voxels.any() and a[0].left.shape == (90, 160, 3)


def test_world_draws_stay_in_their_ranges():
    r = DomainRandomization()
    rng = np.random.default_rng(0)
    draws = [draw_world(SMALL, r, rng) for _ in range(50)]
    heights = [d.config.camera_height for d in draws]
    assert r.camera_height[0] <= min(heights) < max(heights) <= r.camera_height[1]
    assert any(d.blur_sigma > 0 for d in draws) and any(d.blur_sigma == 0 for d in draws)
    assert all(r.right_gain[0] <= d.right_gain <= r.right_gain[1] for d in draws)


@pytest.mark.parametrize(
    ("field", "value"), [("noise_std", (3.0, 1.0)), ("blur_probability", 1.5), ("camera_height", (-0.1, 0.4))]
)
def test_bad_randomization_ranges_are_named(field, value):
    with pytest.raises(DomainRandomizationError, match=field):
        DomainRandomization(**{field: value})


def test_stream_config_rejects_bad_sizes():
    with pytest.raises(SynthStreamError, match="frames_per_world"):
        SynthStreamConfig(frames_per_world=0)


def _stream(**overrides) -> StreamingStereoSet:
    config = SynthStreamConfig(seed=3, frames_per_world=2, samples_per_epoch=4, workers=0, shuffle_buffer=2)
    return StreamingStereoSet(config, (64, 32), with_depth=True, grid=SMALL.grid, **overrides)


def test_streamed_batches_are_deterministic_per_epoch_and_new_each_epoch():
    a, b = _stream(), _stream()
    a.begin_epoch(1)
    b.begin_epoch(1)
    first, again = a.batch(np.arange(2)), b.batch(np.arange(2))
    assert first["left"].shape == (2, 3, 32, 64) and first["depth"].shape == (2, 32, 64)
    assert first["voxels"].shape == (2, *SMALL.grid.shape)
    assert np.array_equal(first["left"].numpy(), again["left"].numpy())
    b.begin_epoch(2)
    assert not np.array_equal(first["left"].numpy(), b.batch(np.arange(2))["left"].numpy())


def test_ddp_ranks_render_disjoint_worlds_and_epochs_move_on():
    stream = _stream()
    worlds = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            stream.begin_epoch(epoch, rank, 2)
            worlds[epoch, rank] = set(stream.epoch_worlds)
    assert all(worlds.values())
    assert worlds[0, 0].isdisjoint(worlds[0, 1]) and worlds[0, 0] | worlds[0, 1] == set(range(2))
    assert (worlds[0, 0] | worlds[0, 1]).isdisjoint(worlds[1, 0] | worlds[1, 1])
    stream.begin_epoch(0, 1, 2)
    other = _stream()
    other.begin_epoch(0, 0, 2)
    assert not np.array_equal(
        stream.batch(np.arange(1))["left"].numpy(), other.batch(np.arange(1))["left"].numpy()
    )


def test_randomized_dataset_holds_the_stream_worlds_and_resumes_identically(tmp_path):
    """`dataset synth --randomized` writes the training stream's worlds (same seed, same frames); a resumed run
    that stopped inside a world gives the same samples as one run."""
    from stereovoxel_ros.offline.data.dataset_format import iter_samples, read_manifest
    from stereovoxel_ros.offline.data.synth_dataset import write_synthetic_dataset

    config = SynthConfig.for_size(96, 54, sequence_length=2)
    randomization = DomainRandomization()
    write_synthetic_dataset(tmp_path / "a", config, 100, 3, progress=False, randomization=randomization)
    stream = [f.left for w in (0, 1) for f in randomized_sequence(config, randomization, 100, w, 2)]
    written = [sample.left for _, sample in iter_samples(tmp_path / "a")]
    assert (
        len(written) == 3 and np.array_equal(written[0], stream[0]) and np.array_equal(written[1], stream[1])
    )
    write_synthetic_dataset(tmp_path / "b", config, 100, 1, progress=False, randomization=randomization)
    write_synthetic_dataset(
        tmp_path / "b", config, 100, 3, progress=False, resume=True, randomization=randomization
    )
    resumed = [sample.left for _, sample in iter_samples(tmp_path / "b")]
    assert all(np.array_equal(a, b) for a, b in zip(written, resumed, strict=True))
    assert read_manifest(tmp_path / "a").extra["randomization"] == randomization.to_dict()
