"""``stereovoxel dataset``: synth, synth-bag, from-bag, from-folder and check."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from stereovoxel_ros.core.bags.topic_discovery import (
    CLOUD_TYPE,
    TopicDiscoveryError,
    discover_stereo_topics,
    require_topic,
)
from stereovoxel_ros.core.geometry.jackal import JackalTopics


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    """Register ``stereovoxel dataset ACTION ...``."""
    p = subparsers.add_parser(
        name,
        help=help,
        description="Make and check stereo voxel datasets (format: datasets/README.md).",
    )
    actions = p.add_subparsers(dest="dataset_action", metavar="ACTION", required=True)

    s = actions.add_parser("synth", help="render synthetic Jackal worlds into a dataset directory")
    s.add_argument("out", type=Path, help="dataset directory to create")
    _add_synth_arguments(s, frames=200)
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUT (same options): keep its samples",
    )
    s.add_argument(
        "--randomized",
        action="store_true",
        help="domain-randomised worlds as the training stream renders them (train --stream): with the stream's "
        "seed and --sequence-length equal to its --frames-per-world, the very worlds it trained on",
    )
    s.set_defaults(func=_run_synth)

    b = actions.add_parser("synth-bag", help="render a synthetic drive into a rosbag2 with Jackal topics")
    b.add_argument("out", type=Path, help="bag to create (a folder, e.g. demo.mcap)")
    _add_synth_arguments(b, frames=100)
    b.add_argument("--storage", choices=("mcap", "sqlite3"), default=None, help="default: from OUT's suffix")
    b.add_argument("--namespace", default="j100_0000", help="robot namespace of the topics")
    b.add_argument("--overwrite", action="store_true", help="replace an existing bag at OUT")
    b.set_defaults(func=_run_synth_bag)

    f = actions.add_parser(
        "from-bag", help="extract samples (stereo + depth ground truth) from a recorded bag"
    )
    f.add_argument("bag", type=Path, help="rosbag2 folder or file")
    f.add_argument("out", type=Path, help="dataset directory to create")
    f.add_argument("--grid", default="jackal_wide", help="voxel grid preset (default: jackal_wide)")
    f.add_argument(
        "--namespace",
        help="only cameras whose topics start with this prefix (default: any; see README discovery)",
    )
    f.add_argument("--left", help="left image topic (default: discovered, e.g. .../left/image_rect)")
    f.add_argument("--right", help="right image topic (default: beside --left)")
    f.add_argument("--left-info", help="left camera_info topic (default: beside the left image)")
    f.add_argument("--right-info", help="right camera_info topic")
    src = f.add_mutually_exclusive_group()
    src.add_argument(
        "--depth",
        help="depth image topic [m, 32FC1 or 16UC1 mm] aligned with the left image (default: .../depth/image)",
    )
    src.add_argument("--cloud", help="PointCloud2 topic (lidar or stereo camera) as the depth source")
    f.add_argument(
        "--extrinsics",
        help="cloud frame -> left optical frame: 16 numbers (row-major 4x4) or 6 (x y z roll pitch yaw [m, rad]);"
        " default: the bag's tf_static",
    )
    f.add_argument("--tolerance-ms", type=float, default=20.0, help="time-match tolerance [ms]")
    f.add_argument("--every", type=int, default=1, help="keep every N-th matched frame")
    f.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    f.set_defaults(func=_run_from_bag)

    k = actions.add_parser("from-folder", help="convert a KITTI stereo 2015 or DrivingStereo folder")
    k.add_argument("layout", choices=("kitti2015", "drivingstereo"), help="folder layout")
    k.add_argument("root", type=Path, help="dataset folder on disk")
    k.add_argument("out", type=Path, help="dataset directory to create")
    k.add_argument("--grid", default="jackal_wide", help="voxel grid preset (default: jackal_wide)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    k.set_defaults(func=_run_from_folder)

    c = actions.add_parser("check", help="validate every file of a dataset and print statistics")
    c.add_argument("root", type=Path, help="dataset directory")
    c.set_defaults(func=_run_check)


def _add_synth_arguments(p: argparse.ArgumentParser, frames: int) -> None:
    p.add_argument("--frames", type=int, default=frames, help=f"number of stereo frames (default: {frames})")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical output")
    p.add_argument("--grid", default="jackal_wide", help="voxel grid preset (default: jackal_wide)")
    p.add_argument("--width", type=int, default=640, help="image width [px]")
    p.add_argument("--height", type=int, default=360, help="image height [px]")
    p.add_argument("--sequence-length", type=int, default=None, help="frames per world (default: 40)")
    p.add_argument("--frame-rate", type=float, default=None, help="frame rate [Hz] (default: 10)")
    p.add_argument("--noise-std", type=float, default=None, help="sensor noise [DN] (default: 2)")
    p.add_argument("--no-shadows", action="store_true", help="skip shadow rays (faster)")


def _synth_config(args: argparse.Namespace):
    from stereovoxel_ros.core.geometry.grid_spec import grid_preset
    from stereovoxel_ros.offline.data.synth_config import SynthConfig, with_overrides

    config = SynthConfig.for_size(args.width, args.height, grid=grid_preset(args.grid))
    return with_overrides(
        config,
        sequence_length=args.sequence_length,
        frame_rate=args.frame_rate,
        noise_std=args.noise_std,
        shadows=False if args.no_shadows else None,
    )


def _fail(message: str) -> int:
    print(f"stereovoxel dataset: error: {message}", file=sys.stderr)
    return 1


def _prepare_out(out: Path, overwrite: bool) -> str | None:
    """Refuse to mix a new dataset into an existing one unless told; returns an error message or None."""

    if out.exists() and any(out.iterdir()):
        if not any(p.is_file() for p in out.rglob("*")):  # empty folders left by a failed earlier try
            shutil.rmtree(out)
            return None
        if not overwrite:
            return f"{out} exists and is not empty (use --overwrite to replace it)"
        if not (out / "dataset.json").is_file() and not (out / "samples").is_dir():
            return f"{out} is not a dataset directory; refusing to delete it"
        shutil.rmtree(out)
    return None


def _run_synth(args: argparse.Namespace) -> int:

    from stereovoxel_ros.core.geometry.grid_spec import GridSpecError
    from stereovoxel_ros.offline.data.synth_config import SynthWorldError
    from stereovoxel_ros.offline.data.synth_dataset import write_synthetic_dataset

    if args.frames <= 0 or args.seed < 0:
        return _fail(f"--frames must be positive and --seed non-negative, got {args.frames} and {args.seed}")
    try:
        config = _synth_config(args)
    except (GridSpecError, SynthWorldError, ValueError) as err:
        return _fail(str(err))
    if args.resume and args.overwrite:
        return _fail("--resume keeps the samples in OUT and --overwrite deletes them: give one")
    error = None if args.resume else _prepare_out(args.out, args.overwrite)
    if error:
        return _fail(error + " (or --resume to continue an interrupted run)")
    start = time.perf_counter()
    try:
        randomization = None
        if args.randomized:
            from stereovoxel_ros.offline.data.domain_randomization import DomainRandomization

            randomization = DomainRandomization()
        manifest = write_synthetic_dataset(
            args.out, config, args.seed, args.frames, resume=args.resume, randomization=randomization
        )
    except KeyboardInterrupt:
        print(
            f"stereovoxel dataset: interrupted; the samples written to {args.out} are complete: rerun the same "
            "command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    elapsed = time.perf_counter() - start
    print(
        f"wrote {manifest.num_samples} samples ({config.camera.width}x{config.camera.height}, grid "
        f"{config.grid.name}) to {args.out} in {elapsed:.1f} s ({manifest.num_samples / elapsed:.1f} frames/s)"
    )
    return 0


def _run_synth_bag(args: argparse.Namespace) -> int:

    from stereovoxel_ros.core.bags.bag_reader import BagError
    from stereovoxel_ros.core.geometry.grid_spec import GridSpecError
    from stereovoxel_ros.offline.data.synth_bag import write_synthetic_bag
    from stereovoxel_ros.offline.data.synth_config import SynthWorldError

    if args.frames <= 0 or args.seed < 0:
        return _fail(f"--frames must be positive and --seed non-negative, got {args.frames} and {args.seed}")
    storage = args.storage or ("sqlite3" if args.out.suffix == ".db3" else "mcap")
    try:
        config = _synth_config(args)
        start = time.perf_counter()
        summary = write_synthetic_bag(
            args.out,
            config,
            seed=args.seed,
            num_frames=args.frames,
            storage=storage,
            topics=JackalTopics(args.namespace),
            overwrite=args.overwrite,
        )
    except (GridSpecError, SynthWorldError, BagError, ValueError) as err:
        return _fail(str(err))
    elapsed = time.perf_counter() - start
    print(
        f"wrote {summary.frames} frames ({summary.messages} messages, {storage}) to {summary.path} "
        f"in {elapsed:.1f} s; topics:"
    )
    for topic, msgtype in summary.topics.items():
        print(f"  {topic}  [{msgtype}]")
    return 0


def _from_bag_topics(args: argparse.Namespace):
    """The extraction topics: the options given, the rest discovered in the bag as ``replay`` does."""
    from stereovoxel_ros.core.bags.bag_reader import BagReader
    from stereovoxel_ros.offline.data.from_bag import BagExtractError, BagTopics

    with BagReader(args.bag) as reader:
        found = discover_stereo_topics(
            reader.topics,
            args.bag,
            namespace=args.namespace,
            left=args.left,
            right=args.right,
            left_info=args.left_info,
            right_info=args.right_info,
            depth=args.depth,
        )
        if args.cloud is not None:
            cloud = require_topic(reader.topics, args.cloud, CLOUD_TYPE, "--cloud", args.bag)
            return BagTopics(
                found.left_image, found.right_image, found.left_info, found.right_info, cloud=cloud
            )
    if found.depth is None:
        raise BagExtractError(
            f"{args.bag}: no depth image beside {found.left_image} (e.g. .../depth/image); "
            "pass --depth TOPIC or --cloud TOPIC"
        )
    return BagTopics(
        found.left_image, found.right_image, found.left_info, found.right_info, depth=found.depth
    )


def _run_from_bag(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.bags.bag_reader import BagError
    from stereovoxel_ros.core.geometry.grid_spec import GridSpecError, grid_preset
    from stereovoxel_ros.offline.data.from_bag import (
        BagExtractError,
        BagSampleExtractor,
        parse_extrinsics,
        write_dataset_from_bag,
    )

    if not args.tolerance_ms >= 0:  # also NaN
        return _fail(f"--tolerance-ms must be >= 0, got {args.tolerance_ms}")
    if args.every < 1:
        return _fail(f"--every must be >= 1, got {args.every}")
    try:
        grid = grid_preset(args.grid)
        topics = _from_bag_topics(args)
        if args.extrinsics and topics.cloud is None:
            return _fail(
                "--extrinsics applies to --cloud only (a depth image is already in the left optical frame)"
            )
        extrinsics = parse_extrinsics(args.extrinsics) if args.extrinsics else None
        tolerance_ns = round(args.tolerance_ms * 1e6)
        BagSampleExtractor(topics, grid, tolerance_ns, extrinsics, args.every)  # checks the settings
        # only now, with everything checked, touch OUT: a failed try must not block the retry
        error = _prepare_out(args.out, args.overwrite)
        if error:
            return _fail(error)
        manifest, report = write_dataset_from_bag(
            args.bag,
            args.out,
            grid,
            topics,
            tolerance_ns=tolerance_ns,
            extrinsics=extrinsics,
            every=args.every,
        )
    except (GridSpecError, BagExtractError, BagError, TopicDiscoveryError) as err:
        return _fail(str(err))
    print(report.summary())
    print(f"wrote {manifest.num_samples} samples to {args.out}")
    return 0 if manifest.num_samples else 1


def _run_from_folder(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.geometry.grid_spec import GridSpecError, grid_preset
    from stereovoxel_ros.offline.data.dataset_format import DatasetError
    from stereovoxel_ros.offline.data.folder_readers import write_dataset_from_folder

    error = _prepare_out(args.out, args.overwrite)
    if error:
        return _fail(error)
    try:
        manifest = write_dataset_from_folder(args.layout, args.root, args.out, grid_preset(args.grid))
    except (GridSpecError, DatasetError) as err:
        return _fail(str(err))
    print(f"wrote {manifest.num_samples} samples from {args.root} ({args.layout}) to {args.out}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from stereovoxel_ros.offline.data.dataset_check import check_dataset

    result = check_dataset(args.root)
    print(result.format())
    return 0 if result.ok else 1
