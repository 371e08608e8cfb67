"""``stereovoxel replay BAG``: play a bag through the live occupancy node, record its output and score it."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import Image, PointCloud2

from stereovoxel_ros.core.bags.bag_reader import BagError, BagReader
from stereovoxel_ros.core.messages.occupancy_grid import occupancy_grid_to_array
from stereovoxel_ros.core.messages.pointcloud2 import pointcloud2_to_points
from stereovoxel_ros.core.messages.stamps import header_stamp_ns
from stereovoxel_ros.core.occupancy.occupancy_predictor import BACKENDS, PredictorError
from stereovoxel_ros.core.tracing import cdr_header_stamp_ns
from stereovoxel_ros.offline.bag_evaluation import (
    BagEvaluationError,
    RunResult,
    StereoBagTopics,
    ground_truth_voxels,
)
from stereovoxel_ros.offline.bag_report import summary_table, write_report
from stereovoxel_ros.offline.replay_scoring import ReplayRecording, ReplayRun, left_stamps, score_recording
from stereovoxel_ros.ros.parameter_values import unknown_parameters


class ReplayError(RuntimeError):
    """A replay could not run: the node did not configure, the graph did not connect, or nothing came out."""


def _make_recorder(context: Any, node_fqn: str, left_image_topic: str) -> tuple[Any, ReplayRecording]:
    """A node recording the occupancy node's outputs and when each left image appeared on the graph."""
    from rclpy.node import Node

    from stereovoxel_ros.ros.qos import reliable_qos, sensor_qos

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


class ReplayGraph:
    """The replay's own ROS graph, as a context manager: a configured, active ``StereoOccupancyNode``
    (use_sim_time), a recorder of its outputs and a ``BagPlayer`` (with /clock), spun on one thread in a
    private context; leaving the block shuts all of it down.

        with ReplayGraph(bag, topics, params, streams) as graph:
            graph.play(progress=True)
            graph.settle(2.0)
            run = graph.run_summary(label)
        result = score_recording(graph.recording, run, truth)
    """

    def __init__(self, bag: str | os.PathLike, params: dict[str, Any], streams: list[str],
                 domain_id: int | None = None, rate: float = 1.0) -> None:  # fmt: skip
        self.bag, self.params, self.streams, self.domain_id, self.rate = bag, params, streams, domain_id, rate
        self.left_topic = params["left_image_topic"]
        self.recording = ReplayRecording()
        self.start_s = self.end_s = time.monotonic()
        self._context: Any = None
        self._executor: Any = None
        self._nodes: list[Any] = []

    def __enter__(self) -> ReplayGraph:
        import rclpy

        self._context = rclpy.context.Context()
        rclpy.init(context=self._context, domain_id=self.domain_id)
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.node import Node
        from rclpy.parameter import Parameter

        from stereovoxel_ros.ros.bag_player import BagPlayer
        from stereovoxel_ros.ros.occupancy_node import StereoOccupancyNode

        context = self._context
        self.occupancy = StereoOccupancyNode(
            context=context, parameter_overrides=[Parameter(k, value=v) for k, v in self.params.items()]
        )
        self._nodes.append(self.occupancy)
        if self.occupancy.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise ReplayError(f"occupancy node did not configure: {self.occupancy.configure_error}")
        self.occupancy.trigger_activate()
        fqn = self.occupancy.get_fully_qualified_name()
        self._recorder, self.recording = _make_recorder(context, fqn, self.left_topic)
        player_node = Node("stereovoxel_replay_player", context=context)
        self._nodes += [self._recorder, player_node]
        self.player = BagPlayer(player_node, self.bag, rate=self.rate, topics=self.streams)
        self._executor = SingleThreadedExecutor(context=context)  # inference runs on the node's worker thread
        for node in self._nodes:
            self._executor.add_node(node)
        threading.Thread(target=self._executor.spin, name="replay_executor", daemon=True).start()
        cloud_topic = f"{fqn}/cloud"
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and self._recorder.count_publishers(cloud_topic) == 0:
            time.sleep(0.02)
        cameras = [t for t in self.streams if t != self.params.get("odom_topic")]
        if not self.player.wait_for_subscribers(
            cameras, timeout_s=10.0
        ) or not self._recorder.count_publishers(cloud_topic):
            raise ReplayError(
                "the player, occupancy node and recorder did not discover each other within 10 s"
            )

    def play(self, total: int, label: str, progress: bool = True) -> None:
        """Play the bag in real time (times ``rate``), with a progress bar over ``total`` left images."""
        from tqdm import tqdm

        self.start_s = time.monotonic()
        playing = self.player.start()
        with tqdm(total=total, desc=f"replay {Path(self.bag).name} {label}", disable=not progress) as bar:
            while playing.is_alive():
                playing.join(0.2)
                bar.update(self.player.stats.published.get(self.left_topic, 0) - bar.n)
        if self.player.error is not None:
            raise ReplayError(f"{self.bag}: playback failed: {self.player.error}")

    def settle(self, settle_s: float) -> None:
        """Let the node finish: until every published pair has a cloud, or none came for ``settle_s``."""
        rec = self.recording
        published = self.player.stats.published.get(self.left_topic, 0)
        last = (len(rec.clouds), time.monotonic())
        while len(rec.clouds) < published and time.monotonic() - last[1] < settle_s:
            time.sleep(0.02)
            if len(rec.clouds) != last[0]:
                last = (len(rec.clouds), time.monotonic())
        self.end_s = max((t for t, _ in rec.clouds.values()), default=time.monotonic())
        time.sleep(0.1)  # the worker counts a frame just after publishing its cloud

    def node_diagnostics(self) -> dict[str, str]:
        """The node's last /diagnostics values (published now) and its own stage timing."""
        self.occupancy.publish_diagnostics()
        time.sleep(0.2)
        status = self.occupancy.diagnostic_status()
        diagnostics = dict(self.recording.diagnostics) or {kv.key: kv.value for kv in status.values}
        for key, window in sorted(self.occupancy.tracer.summaries(exact=True).items()):
            if key.startswith("stage."):
                diagnostics[f"{key} p50 / p99 [ms]"] = f"{window.p50:.1f} / {window.p99:.1f}"
        return diagnostics

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=5.0)
        for node in self._nodes:
            node.destroy_node()
        self._nodes.clear()
        if self._context is not None:
            self._context.try_shutdown()


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
    node parameters (unknown names are refused). ``topics``: topic options for :meth:`StereoBagTopics.find`
    (``namespace``, ``left``, ``right``, ``left_info``, ``right_info``, ``depth``). A bag without depth is
    replayed for rate, latency and outputs; its scores are NaN and the result says ``ground_truth=False``.
    """
    from stereovoxel_ros.ros.occupancy_parameters import PARAMETERS

    unknown = unknown_parameters(parameters or {}, [*PARAMETERS, "use_sim_time"])
    if unknown:
        raise ReplayError(f"{'; '.join(unknown)} (see the stereo_occupancy parameters in the README)")
    try:
        with BagReader(bag) as reader:
            found = StereoBagTopics.find(reader.topics, bag, **(topics or {}))
            odom = next((t for t, m in reader.topics.items() if m == "nav_msgs/msg/Odometry"), None)
            left_count = reader.topic_counts.get(found.left_image, 0)
    except BagError as err:
        raise ReplayError(str(err)) from err
    params: dict[str, Any] = {
        "backend": backend,
        "checkpoint": checkpoint or "",
        "left_image_topic": found.left_image,
        "right_image_topic": found.right_image,
        "left_info_topic": found.left_info,
        "right_info_topic": found.right_info,
        "occupancy_grid_frame": "base_frame",
        **({"odom_topic": odom} if odom else {}),
        **(parameters or {}),
        "use_sim_time": True,
    }
    streams = [found.left_image, found.right_image, found.left_info, found.right_info] + (
        [odom] if odom else []
    )
    with ReplayGraph(bag, params, streams, domain_id, rate) as graph:
        skipped: dict[str, int] = {}
        grid = graph.occupancy.config.grid
        try:
            truth = ground_truth_voxels(bag, grid, found, skipped) if found.depth else {}
        except BagError as err:
            raise ReplayError(str(err)) from err
        graph.play(left_count, backend, progress)
        graph.settle(settle_s)
        diagnostics = graph.node_diagnostics()
        for why, count in skipped.items():
            diagnostics[f"ground truth frames skipped ({why})"] = str(count)
        used = graph.occupancy.backend_in_use
        camera_to_base = graph.occupancy.last_camera_to_base
    if not graph.recording.clouds or camera_to_base is None:
        raise ReplayError(f"{bag}: the occupancy node published no cloud (diagnostics: {diagnostics})")
    run = ReplayRun(
        bag=str(bag),
        label=backend if used == backend else f"{used} (fallback)",
        grid=grid,
        camera_to_base=camera_to_base,
        start_s=graph.start_s,
        end_s=graph.end_s,
        pairs_in_bag=left_count,
        diagnostics=diagnostics,
    )
    stamps = None if truth else left_stamps(bag, found.left_image)
    return score_recording(graph.recording, run, truth, stamps)


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
            set_torch_threads({"offline replay": 1})  # process-wide, once
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


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
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
