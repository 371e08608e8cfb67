"""Write synthetic stereo worlds into the dataset format, with splits that keep whole sequences apart."""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from stereovoxel_ros.core.atomic_file import write_json_atomic
from stereovoxel_ros.core.geometry.grid_spec import VoxelGridSpec
from stereovoxel_ros.offline.data.dataset_format import (
    DatasetError,
    DatasetManifest,
    DatasetWriter,
    read_sample,
    split_ids,
)
from stereovoxel_ros.offline.data.domain_randomization import (
    DomainRandomization,
    randomized_frames,
    randomized_sequence_name,
)
from stereovoxel_ros.offline.data.synth_config import DETECTION_CLASSES, SynthConfig
from stereovoxel_ros.offline.data.synth_sequences import generate_frames, sequence_name


def split_by_sequence(
    ids: Sequence[str], sequences: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, list[str]]:
    """Train/val/test by whole sequences (no near-duplicate neighbouring frames across splits).

    With fewer than three sequences this falls back to the contiguous ``split_ids``.
    """
    order: list[str] = []
    for seq in sequences:
        if seq not in order:
            order.append(seq)
    if len(order) < 3:
        return split_ids(ids, fractions)
    seq_split = split_ids(order, fractions)
    where = {seq: name for name, seqs in seq_split.items() for seq in seqs}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for sample_id, seq in zip(ids, sequences):
        out[where[seq]].append(sample_id)
    return out


def synth_config_to_dict(config: SynthConfig) -> dict:
    """JSON-able description of a generator config (for the manifest)."""
    data = asdict(config)
    data["camera"] = config.camera.to_dict()
    data["grid"] = config.grid.name
    data["num_obstacles"] = list(config.num_obstacles)
    return data


RUN_FILE = "synth_run.json"  # the options of a run in progress, so an interrupted one can be resumed


def resumable_samples(out: str | os.PathLike, run: dict, grid: VoxelGridSpec) -> int:
    """How many leading samples of an interrupted run in ``out`` can be kept (0: none, or other options)."""

    out = Path(out)
    try:
        recorded = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return 0
    if recorded != run or (out / "dataset.json").exists():
        return 0
    kept = 0
    while kept < run["frames"]:
        try:
            read_sample(out / "samples" / f"{kept:06d}.npz", grid)
        except DatasetError:
            break
        kept += 1
    return kept


def write_synthetic_dataset(
    out: str | os.PathLike,
    config: SynthConfig,
    seed: int,
    num_frames: int,
    progress: bool = True,
    resume: bool = False,
    randomization: DomainRandomization | None = None,
) -> DatasetManifest:
    """Generate ``num_frames`` frames (worlds of ``config.sequence_length`` frames) into dataset ``out``.

    Every sample file is complete once written (atomic). With ``resume``, the samples of an interrupted run
    with the same options are kept and only the rest is rendered. With ``randomization``, the worlds are the
    domain-randomised training worlds of ``seed`` (as the training stream renders them).
    """

    run = {"seed": seed, "frames": num_frames, "config": synth_config_to_dict(config)}
    if randomization is not None:
        run["randomization"] = randomization.to_dict()
    run = json.loads(json.dumps(run))  # as it reads back
    start = resumable_samples(out, run, config.grid) if resume else 0
    writer = DatasetWriter(Path(out), config.grid, source=f"synthetic seed={seed}")
    write_json_atomic(Path(out) / RUN_FILE, run)
    writer.ids = [f"{i:06d}" for i in range(start)]
    if randomization is None:
        sequences = [sequence_name(seed, i, config.sequence_length) for i in range(start)]
        frames = generate_frames(config, seed, num_frames, start=start)
    else:
        sequences = [randomized_sequence_name(seed, i, config.sequence_length) for i in range(start)]
        frames = randomized_frames(config, randomization, seed, num_frames, start=start)
    # one writer thread compresses and writes sample i while sample i + 1 renders (both release the GIL)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future] = deque()
        for sequence, frame in tqdm(
            frames, total=num_frames, initial=start, desc="synth", unit="frame", disable=not progress
        ):
            pending.append(pool.submit(writer.add, frame.to_sample(sequence)))
            sequences.append(sequence)
            while len(pending) > 2:
                pending.popleft().result()
        for future in pending:
            future.result()
    manifest = writer.finish(
        split_by_sequence(writer.ids, sequences),
        extra={
            "generator": "stereovoxel_ros.offline.data."
            + ("synth_world" if randomization is None else "domain_randomization"),
            "seed": seed,
            **({} if randomization is None else {"randomization": randomization.to_dict()}),
            "config": synth_config_to_dict(config),
            "class_names": list(DETECTION_CLASSES),
            "extras": {
                "boxes": "(N, 4) float32 [x0, y0, x1, y1] px in the left image, x1/y1 exclusive pixel edges",
                "classes": "(N,) int64 index into class_names",
                "pose": "(4, 4) float64 odom <- base_link",
                "twist": "(6,) float64 [vx, vy, vz, wx, wy, wz] in base_link [m/s, rad/s]",
                "labels": "(H, W) uint16 left-view object labels: (class + 1) * 1000 + object index, "
                "0 = ground or sky; classes in stereovoxel_ros.core.occupancy.occupancy_scoring.OBJECT_CLASSES",
            },
        },
    )
    (Path(out) / RUN_FILE).unlink(missing_ok=True)
    return manifest
