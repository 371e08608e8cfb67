"""``stereovoxel replay BAG``: play a bag through the live occupancy node, record its output and score it."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stereovoxel_ros.occupancy_predictor import BACKENDS
from stereovoxel_ros.offline.bag_evaluation import (
    BagEvaluationError,
    BagFrame,
    RunResult,
    StereoBagTopics,
    ground_truth_voxels,
    image_stamp_span_s,
    score_bag_frame,
    summary_table,
    write_report,
)


class ReplayError(RuntimeError):
    """A replay could not run: the node did not configure, the graph did not connect, or nothing came out."""


@dataclass
class ReplayRecording:
    """What the recorder saw, keyed by left image stamp [ns]; times are ``time.monotonic()`` [s]."""

    image_seen: dict[int, float] = field(default_factory=dict)
    clouds: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)  # (received, points in base)
    grids: dict[int, np.ndarray] = field(default_factory=dict)  # OccupancyGrid cells (rows=y, cols=x)
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's last /diagnostics key/values


def _make_recorder(context: Any, node_fqn: str, left_image_topic: str) -> tuple[Any, ReplayRecording]:
    """A node recording the occupancy node's outputs and when each left image appeared on the graph."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from rclpy.node import Node
    from sensor_msgs.msg import Image, PointCloud2

    from stereovoxel_ros.messages.occupancy_grid import occupancy_grid_to_array
    from stereovoxel_ros.messages.pointcloud2 import pointcloud2_to_points
    from stereovoxel_ros.messages.stamps import header_stamp_ns
    from stereovoxel_ros.ros.qos import reliable_qos, sensor_qos
    from stereovoxel_ros.tracing import cdr_header_stamp_ns

    rec = ReplayRecording()
    node = Node("stereovoxel_replay_recorder", context=context)
    lock = threading.Lock()

    def on_image(raw: bytes) -> None:  # raw CDR: only the stamp is needed, no deserialization
        now = time.monotonic()
        with lock:
            rec.image_seen.setdefault(cdr_header_stamp_ns(raw), now)

    def on_cloud(msg: Any) -> None:
        now = time.monotonic()
        rec.clouds[header_stamp_ns(msg)] = (now, pointcloud2_to_points(msg).copy())

    def on_grid(msg: Any) -> None:
        rec.grids[header_stamp_ns(msg)] = occupancy_grid_to_array(msg).copy()

    def on_diagnostics(msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(node_fqn + ":"):
                rec.diagnostics = {kv.key: kv.value for kv in status.values}

    node.create_subscription(Image, left_image_topic, on_image, sensor_qos(50), raw=True)
    node.create_subscription(PointCloud2, f"{node_fqn}/cloud", on_cloud, reliable_qos(100))
    node.create_subscription(OccupancyGrid, f"{node_fqn}/obstacle_grid", on_grid, reliable_qos(100))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable_qos(20))
    return node, rec


def replay_bag(
    bag: str | os.PathLike,
    backend: str = "stereovoxelnet",
    checkpoint: str | None = None,
    rate: float = 1.0,
    parameters: dict[str, Any] | None = None,
    domain_id: int | None = None,
    settle_s: float = 2.0,
    progress: bool = True,
    topics: dict[str, str | None] | None = None,
) -> RunResult:
    """Play ``bag`` through a live ``StereoOccupancyNode`` (use_sim_time, /clock from the player) and score it.

    Per ground-truth frame: the Nav2 scores of the published cloud (``occupancy_scoring.score_frame``, as
    offline), and latency = left image on the graph -> cloud received (wall clock). ``parameters`` override
    node parameters (unknown names are refused). ``topics``: topic options for :meth:`StereoBagTopics.find` (``namespace``, ``left``,
    ``right``, ``left_info``, ``right_info``, ``depth``). A bag without depth is replayed for rate, latency
    and outputs; its scores are NaN and the result says ``ground_truth=False``.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from tqdm import tqdm

    from stereovoxel_ros.bags.bag_reader import BagError, BagReader
    from stereovoxel_ros.ros.bag_player import BagPlayer
    from stereovoxel_ros.ros.occupancy_node import PARAMETERS, StereoOccupancyNode
    from stereovoxel_ros.ros.parameter_values import unknown_parameters
    from stereovoxel_ros.voxel_grid import points_to_voxels, transform_points

    unknown = unknown_parameters(parameters or {}, [*PARAMETERS, "use_sim_time"])
    if unknown:
        raise ReplayError(f"{'; '.join(unknown)} (see the stereo_occupancy parameters in the README)")
    topic_options = topics or {}
    try:
        with BagReader(bag) as reader:
            topics = StereoBagTopics.find(reader.topics, bag, **topic_options)
            odom = next((t for t, m in reader.topics.items() if m == "nav_msgs/msg/Odometry"), None)
            left_count = reader.topic_counts.get(topics.left_image, 0)
    except BagError as err:
        raise ReplayError(str(err)) from err
    params: dict[str, Any] = {
        "backend": backend,
        "checkpoint": checkpoint or "",
        "left_image_topic": topics.left_image,
        "right_image_topic": topics.right_image,
        "left_info_topic": topics.left_info,
        "right_info_topic": topics.right_info,
        "occupancy_grid_frame": "base_frame",
        **({"odom_topic": odom} if odom else {}),
        **(parameters or {}),
        "use_sim_time": True,
    }
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=domain_id)
    executor = None
    nodes: list[Any] = []
    try:
        occupancy = StereoOccupancyNode(
            context=context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]
        )
        nodes.append(occupancy)
        if occupancy.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise ReplayError(f"occupancy node did not configure: {occupancy.configure_error}")
        occupancy.trigger_activate()
        skipped: dict[str, int] = {}
        try:
            truth = ground_truth_voxels(bag, occupancy.config.grid, topics, skipped) if topics.depth else {}
        except BagError as err:
            raise ReplayError(str(err)) from err
        recorder, rec = _make_recorder(context, occupancy.get_fully_qualified_name(), topics.left_image)
        player_node = Node("stereovoxel_replay_player", context=context)
        nodes += [recorder, player_node]
        streams = [topics.left_image, topics.right_image, topics.left_info, topics.right_info]
        player = BagPlayer(player_node, bag, rate=rate, topics=streams + ([odom] if odom else []))
        executor = SingleThreadedExecutor(context=context)  # inference runs on the node's own worker thread
        for node in nodes:
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, name="replay_executor", daemon=True)
        spinner.start()
        cloud_topic = f"{occupancy.get_fully_qualified_name()}/cloud"
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and recorder.count_publishers(cloud_topic) == 0:
            time.sleep(0.02)
        if not player.wait_for_subscribers(streams, timeout_s=10.0) or not recorder.count_publishers(
            cloud_topic
        ):
            raise ReplayError(
                "the player, occupancy node and recorder did not discover each other within 10 s"
            )
        start = time.monotonic()
        playing = player.start()
        with tqdm(total=left_count, desc=f"replay {Path(bag).name} {backend}", disable=not progress) as bar:
            while playing.is_alive():
                playing.join(0.2)
                bar.update(player.stats.published.get(topics.left_image, 0) - bar.n)
        if player.error is not None:
            raise ReplayError(f"{bag}: playback failed: {player.error}")
        # Let the node finish: until every published pair has a cloud, or none came for settle_s.
        published = player.stats.published.get(topics.left_image, 0)
        last = (len(rec.clouds), time.monotonic())
        while len(rec.clouds) < published and time.monotonic() - last[1] < settle_s:
            time.sleep(0.02)
            if len(rec.clouds) != last[0]:
                last = (len(rec.clouds), time.monotonic())
        end = max((t for t, _ in rec.clouds.values()), default=time.monotonic())
        time.sleep(0.1)  # the worker counts a frame just after publishing its cloud
        occupancy.publish_diagnostics()
        time.sleep(0.2)
        diagnostics = rec.diagnostics or {kv.key: kv.value for kv in occupancy.diagnostic_status().values}
        for why, count in skipped.items():
            diagnostics[f"ground truth frames skipped ({why})"] = str(count)
        for key, window in sorted(
            occupancy.tracer.summaries(exact=True).items()
        ):  # the node's own stage timing
            if key.startswith("stage."):
                diagnostics[f"{key} p50 / p99 [ms]"] = f"{window.p50:.1f} / {window.p99:.1f}"
        config, camera_to_base = occupancy.config, occupancy.last_camera_to_base
        used = occupancy.backend_in_use
        label = backend if used == backend else f"{used} (fallback)"
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()
    if not rec.clouds or camera_to_base is None:
        raise ReplayError(f"{bag}: the occupancy node published no cloud (diagnostics: {diagnostics})")

    base_to_optical = np.linalg.inv(camera_to_base)
    if not truth:  # no depth in the bag: every left image is a frame, scored for latency and drops only
        return _unscored_result(bag, label, rec, left_stamps(bag, topics.left_image), start, end, diagnostics)
    frames = []
    example = None
    mid = sorted(truth)[len(truth) // 2]
    for stamp, gt in sorted(truth.items()):
        frame = _recorded_frame(rec, stamp, int(gt.voxels.sum()))
        if not frame.dropped:
            points = rec.clouds[stamp][1]
            predicted = points_to_voxels(transform_points(points, base_to_optical), config.grid)
            frame.score = score_bag_frame(predicted, gt, config.grid)
            if stamp == mid:
                example = (predicted, gt.voxels)
        frames.append(frame)
    return RunResult(
        label=label,
        mode="replay",
        bag=str(bag),
        frames=frames,
        wall_s=end - start,
        bag_duration_s=image_stamp_span_s(truth),
        pairs_in_bag=left_count,
        diagnostics=diagnostics,
        example=example,
    )


def _recorded_frame(rec: ReplayRecording, stamp: int, gt_voxels: int) -> BagFrame:
    """The frame of one left image as recorded: its voxel count (one cloud point per occupied voxel) and its
    latency, image on the graph -> cloud received; dropped when no cloud came."""
    frame = BagFrame(stamp, gt_voxels)
    if stamp in rec.clouds:
        received, points = rec.clouds[stamp]
        frame.predicted_voxels = len(points)
        if stamp in rec.image_seen:
            frame.latency_ms = (received - rec.image_seen[stamp]) * 1e3
    return frame


def left_stamps(bag: str | os.PathLike, left_topic: str) -> list[int]:
    """Header stamps [ns] of the bag's left images, read from the raw CDR (no image is deserialized)."""
    from stereovoxel_ros.bags.bag_reader import BagReader
    from stereovoxel_ros.tracing import cdr_header_stamp_ns

    with BagReader(bag) as reader:
        return sorted({cdr_header_stamp_ns(raw) for _, _, _, raw in reader.raw_messages([left_topic])})


def _unscored_result(
    bag: str | os.PathLike,
    label: str,
    rec: ReplayRecording,
    stamps: list[int],
    start: float,
    end: float,
    diagnostics: dict[str, str],
) -> RunResult:
    """A run on a bag without ground truth: drops and latency per left image; the scores stay unavailable."""
    frames = [_recorded_frame(rec, stamp, 0) for stamp in stamps]
    return RunResult(
        label=label,
        mode="replay",
        bag=str(bag),
        frames=frames,
        wall_s=end - start,
        bag_duration_s=image_stamp_span_s(stamps),
        pairs_in_bag=len(stamps),
        diagnostics=diagnostics,
        ground_truth=False,
    )


def _parse_param(text: str) -> tuple[str, Any]:
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), yaml.safe_load(value)


def default_output_dir(bags: list[str], mode: str) -> Path:
    """``outputs/<mode>/<first bag>_<time>``."""
    return Path("outputs") / mode / f"{Path(bags[0]).stem}_{time.strftime('%Y%m%d-%H%M%S')}"


TOPIC_OPTIONS = ("namespace", "left", "right", "left_info", "right_info", "depth")


def run(args: argparse.Namespace) -> int:
    """The ``stereovoxel replay`` command."""
    from stereovoxel_ros.bags.bag_reader import BagError
    from stereovoxel_ros.occupancy_predictor import PredictorError
    from stereovoxel_ros.ros.node_main import set_torch_threads

    out = (
        Path(args.output)
        if args.output
        else default_output_dir(args.bags, "offline" if args.offline else "replay")
    )
    topics = {k: getattr(args, k) for k in TOPIC_OPTIONS if getattr(args, k, None) is not None}
    parameters = dict(args.param)
    try:
        if args.offline:
            from stereovoxel_ros.offline.bag_evaluation import evaluate_bags_offline

            if parameters:
                raise ReplayError("-p applies to the live node only, not to --offline")
            results, report = evaluate_bags_offline(
                args.bags, args.backend, args.checkpoint, out, topic_options=topics
            )
        else:
            threads = parameters.get("torch_threads", 1)
            if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 64:
                raise ReplayError(f"parameter 'torch_threads' = {threads!r}: must be an integer in 1..64")
            set_torch_threads({"stereo_occupancy": threads})  # process-wide, so here and not in the node
            results = [
                replay_bag(
                    bag,
                    backend,
                    args.checkpoint,
                    rate=args.rate,
                    parameters=parameters,
                    domain_id=args.domain_id,
                    topics=topics,
                )
                for bag in args.bags
                for backend in args.backend
            ]
            report = write_report(results, out, title="Stereo occupancy replay")
    except (ReplayError, BagEvaluationError, BagError, PredictorError) as err:
        print(f"stereovoxel replay: {err}", file=sys.stderr)
        return 1
    print(summary_table(results))
    print(f"\nreport: {report}")
    return 0


def register(subparsers: Any, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help,
        description="Play stereo bags through the live occupancy node (or, with --offline, straight through the "
        "predictor) and score the occupancy against the bags' ground-truth depth: IoU, Chamfer, latency, "
        "rate and drops. Writes report.md, summary.json, frames.csv and PNG plots.",
    )
    p.add_argument("bags", nargs="+", help="rosbag2 bag directories or .mcap/.db3 files")
    p.add_argument(
        "--backend", nargs="+", choices=BACKENDS, default=["stereovoxelnet"], help="one or more backends"
    )
    p.add_argument("--checkpoint", default=None, help="StereoVoxelNet checkpoint (default: the shipped one)")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate (1.0 = real time)")
    p.add_argument("--offline", action="store_true", help="no ROS graph: run the predictor on every pair")
    p.add_argument("--output", default=None, help="report folder (default: outputs/replay/<bag>_<time>)")
    t = p.add_argument_group(
        "topics",
        "default: discovered (ZED/Jackal .../left/image_rect, RealSense .../infra1/image_rect_raw, ...; see README)",
    )
    t.add_argument(
        "--namespace",
        help="only cameras whose topics start with this prefix, e.g. /j100_0000/sensors/camera_1",
    )
    t.add_argument("--left", help="left image topic")
    t.add_argument("--right", help="right image topic (default: beside --left)")
    t.add_argument("--left-info", help="left camera_info topic (default: beside the left image)")
    t.add_argument("--right-info", help="right camera_info topic")
    t.add_argument(
        "--depth", help="ground-truth depth image topic (default: .../depth/image; none: no scores)"
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        type=_parse_param,
        default=[],
        metavar="NAME=VALUE",
        help="override an occupancy node parameter, e.g. -p camera_pitch=0.1",
    )
    p.add_argument(
        "--domain-id",
        type=int,
        default=None,
        help="ROS domain of the replay graph (default: ROS_DOMAIN_ID); use a free one to keep robots out",
    )
    p.set_defaults(func=run)
