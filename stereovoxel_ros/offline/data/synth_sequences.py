"""Driving through synthetic worlds: a smooth random trajectory, and the frames of one world or of a run."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from stereovoxel_ros.offline.data.synth_config import (
    BASE_STAMP_NS,
    SEQUENCE_STRIDE_NS,
    SynthConfig,
    SynthWorldError,
)
from stereovoxel_ros.offline.data.synth_world import SynthFrame, SynthWorld, base_pose_matrix


def random_trajectory(
    config: SynthConfig, rng: np.random.Generator, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth drive: poses (N, 3) [x, y, yaw] and twists (N, 2) [v m/s, yaw rate rad/s] at frame times."""
    dt = 1.0 / config.frame_rate
    sub = 10
    t = np.arange(num_frames * sub) * (dt / sub)
    f1, f2, f3 = rng.uniform(0.05, 0.2), rng.uniform(0.03, 0.12), rng.uniform(0.1, 0.3)
    p1, p2, p3 = rng.uniform(0, 2 * np.pi, 3)
    a2, a3 = rng.uniform(0, 0.7 * config.max_yaw_rate), rng.uniform(0, 0.3 * config.max_yaw_rate)
    v = config.speed * (1.0 + 0.25 * np.sin(2 * np.pi * f1 * t + p1))
    w = a2 * np.sin(2 * np.pi * f2 * t + p2) + a3 * np.sin(2 * np.pi * f3 * t + p3)
    yaw = np.concatenate([[0.0], np.cumsum(w[:-1]) * (dt / sub)])
    mid_yaw = yaw + 0.5 * w * (dt / sub)
    x = np.concatenate([[0.0], np.cumsum((v * np.cos(mid_yaw))[:-1]) * (dt / sub)])
    y = np.concatenate([[0.0], np.cumsum((v * np.sin(mid_yaw))[:-1]) * (dt / sub)])
    k = slice(0, None, sub)
    return np.stack([x[k], y[k], yaw[k]], 1), np.stack([v[k], w[k]], 1)


def densify_path(xy: np.ndarray, step: float = 0.1) -> np.ndarray:
    """Resample a polyline [m] at about ``step`` [m] so clearance checks see every part of it."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return xy[:1].copy()
    q = np.linspace(0.0, s[-1], max(int(s[-1] / step) + 2, 2))
    return np.stack([np.interp(q, s, xy[:, 0]), np.interp(q, s, xy[:, 1])], 1)


def sequence_world(
    config: SynthConfig, seed: int, sequence_index: int, num_frames: int
) -> tuple[np.ndarray, np.ndarray, SynthWorld]:
    """(poses (N, 3) x/y/yaw, twists (N, 2), world) of one sequence; the world keeps the drive's corridor
    clear, a little beyond the last pose too (the robot would not drive into a wall)."""
    poses, twists = random_trajectory(config, np.random.default_rng([seed, sequence_index]), num_frames)
    last = poses[-1]
    beyond = last[:2] + np.outer(np.linspace(0.1, 1.5, 8), [math.cos(last[2]), math.sin(last[2])])
    dense = np.concatenate([densify_path(poses[:, :2]), beyond])
    return poses, twists, SynthWorld.random(config, (seed, sequence_index, 1), path_xy=dense)


def generate_sequence(
    config: SynthConfig, seed: int, sequence_index: int = 0, num_frames: int | None = None, first: int = 0
) -> Iterator[SynthFrame]:
    """Frames of one world driven along one trajectory; deterministic in (seed, sequence_index).

    Frames before ``first`` are not rendered (resuming): the others come out identical.
    """
    num_frames = config.sequence_length if num_frames is None else num_frames
    poses, twists, world = sequence_world(config, seed, sequence_index, num_frames)
    start = BASE_STAMP_NS + sequence_index * SEQUENCE_STRIDE_NS
    dt_ns = round(1e9 / config.frame_rate)
    for i in range(first, num_frames):
        twist = np.array([twists[i, 0], 0.0, 0.0, 0.0, 0.0, twists[i, 1]])
        yield world.render(
            base_pose_matrix(*poses[i]),
            rng=np.random.default_rng([seed, sequence_index, 2, i]),
            stamp_ns=start + i * dt_ns,
            twist=twist,
        )


def sequence_name(seed: int, frame_index: int, sequence_length: int) -> str:
    """The world (sequence) name of frame ``frame_index`` of a run."""
    return f"synth_s{seed}_q{frame_index // sequence_length:04d}"


def generate_frames(
    config: SynthConfig, seed: int, num_frames: int, start: int = 0
) -> Iterator[tuple[str, SynthFrame]]:
    """``num_frames`` frames over as many worlds as needed: yields (sequence name, frame).

    ``start``: skip (do not render) the first frames; the rest are identical to a run from 0.
    """
    if num_frames < 0:
        raise SynthWorldError(f"number of frames must be non-negative, got {num_frames}")
    seq = 0
    left = num_frames
    while left > 0:
        n = min(left, config.sequence_length)
        first = min(max(start - seq * config.sequence_length, 0), n)
        if first < n:
            name = sequence_name(seed, seq * config.sequence_length, config.sequence_length)
            for frame in generate_sequence(config, seed, seq, n, first=first):
                yield name, frame
        left -= n
        seq += 1
