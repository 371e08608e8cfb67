"""Training samples streamed from worlds generated on the fly, so that disk is not the limit.

Epoch ``e`` of a stream renders worlds ``e * worlds_per_epoch ...`` of :mod:`domain_randomization` (each a
short drive of ``frames_per_world`` frames) in background worker processes, at the model's input size, and
never repeats a world. Everything is deterministic in (seed, epoch, rank), so a resumed run sees exactly the
worlds it would have seen, and DDP ranks see disjoint worlds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID, VoxelGridSpec
from stereovoxel_ros.offline.data.domain_randomization import DomainRandomization, randomized_sequence
from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.train.tasks import prepare_sample, training_batch


class SynthStreamError(ValueError):
    """A stream setting is invalid; the message names it."""


@dataclass(frozen=True)
class SynthStreamConfig:
    """Which worlds a stream renders and how (the recipe recorded with a checkpoint)."""

    seed: int = 100  # never one of the seeds reported on
    frames_per_world: int = 4
    samples_per_epoch: int = 320
    workers: int = 1  # background render processes (0: render in the training process)
    shuffle_buffer: int = 32  # samples mixed across worlds before batching
    randomization: DomainRandomization = field(default_factory=DomainRandomization)

    def __post_init__(self) -> None:
        for name in ("frames_per_world", "samples_per_epoch", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise SynthStreamError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise SynthStreamError(f"workers must be >= 0, got {self.workers}")

    @property
    def worlds_per_epoch(self) -> int:
        return math.ceil(self.samples_per_epoch / self.frames_per_world)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "frames_per_world": self.frames_per_world,
            "samples_per_epoch": self.samples_per_epoch,
            "shuffle_buffer": self.shuffle_buffer,
            "randomization": self.randomization.to_dict(),
            "generator": "stereovoxel_ros.offline.data.domain_randomization.randomized_sequence",
        }


class _WorldSamples(torch.utils.data.IterableDataset):
    """Prepared samples of the given worlds, split across DataLoader workers by world."""

    def __init__(
        self,
        config: SynthStreamConfig,
        base: SynthConfig,
        worlds: list[int],
        size: tuple[int, int],
        depth: bool,
    ) -> None:
        super().__init__()
        self.config, self.base, self.worlds, self.size, self.depth = config, base, worlds, size, depth

    def __iter__(self) -> Iterator[tuple]:

        info = torch.utils.data.get_worker_info()
        mine = self.worlds if info is None else self.worlds[info.id :: info.num_workers]
        if info is not None:
            torch.set_num_threads(1)
        for world in mine:
            frames = randomized_sequence(
                self.base, self.config.randomization, self.config.seed, world, self.config.frames_per_world
            )
            for frame in frames:
                yield prepare_sample(
                    frame.left, frame.right, frame.voxels, frame.camera, self.size,
                    frame.depth if self.depth else None,
                )  # fmt: skip


class StreamingStereoSet:
    """A training set over streamed worlds with the interface of ``PreparedStereoSet`` (``len``, ``batch``,
    ``begin_epoch``); ``batch`` ignores the indices it is given and returns the next samples."""

    def __init__(
        self,
        config: SynthStreamConfig,
        input_size: tuple[int, int],
        with_depth: bool = False,
        grid: VoxelGridSpec = DEFAULT_GRID,
    ) -> None:
        self.config, self.input_size, self.grid = config, input_size, grid
        self.base = SynthConfig(grid=grid, sequence_length=config.frames_per_world)
        self._with_depth = with_depth
        self._source: Iterator[tuple] | None = None
        self._epoch = (0, 0, 1)  # (epoch, rank, world size) being rendered
        self.epoch_worlds: list[int] = []  # world indices this rank renders this epoch
        self._buffer: list[tuple] = []
        self._rng = np.random.default_rng(config.seed)

    def __len__(self) -> int:
        return self.config.samples_per_epoch

    @property
    def has_depth(self) -> bool:
        return self._with_depth

    def begin_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None:
        """Start rendering this epoch's worlds (this rank's share of them)."""
        self._epoch = (epoch, rank, world)
        per_epoch = self.config.worlds_per_epoch
        worlds = list(range(epoch * per_epoch, (epoch + 1) * per_epoch))[rank::world]
        self.epoch_worlds = worlds
        dataset = _WorldSamples(self.config, self.base, worlds, self.input_size, self._with_depth)
        workers = min(self.config.workers, len(worlds))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=8 if workers else None,
            persistent_workers=False,
        )
        self._source = iter(loader)
        self._buffer = []
        self._rng = np.random.default_rng([self.config.seed, epoch, rank])

    def _next_sample(self) -> tuple:
        if self._source is None:
            self.begin_epoch(*self._epoch)
        assert self._source is not None
        while len(self._buffer) < self.config.shuffle_buffer:
            try:
                self._buffer.append(next(self._source))
            except StopIteration:
                break
        if not self._buffer:  # the epoch's worlds are spent (asked for more than len()): render them again
            self.begin_epoch(*self._epoch)
            return self._next_sample()
        return self._buffer.pop(int(self._rng.integers(len(self._buffer))))

    def batch(
        self, indices: np.ndarray, augment: bool = False, rng: np.random.Generator | None = None
    ) -> dict:

        items = [self._next_sample() for _ in range(len(indices))]
        left, right, packed, camera, depth = zip(*items)
        return training_batch(
            torch.stack(left),
            torch.stack(right),
            np.stack(packed),
            torch.stack(camera),
            torch.stack(depth) if self._with_depth else None,
            self.grid,
            augment,
            rng,
        )


__all__ = ["StreamingStereoSet", "SynthStreamConfig", "SynthStreamError"]
