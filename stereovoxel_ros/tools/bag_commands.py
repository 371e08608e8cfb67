"""``stereovoxel bag info|play|record``: inspect, replay (with /clock) and record rosbag2 bags."""

from __future__ import annotations

import argparse
import sys
import time

from stereovoxel_ros.ros.dds_profile import use_fastdds_profile

DESCRIPTION = """\
rosbag2 tools that need no ROS install beyond the PyPI wheels (sqlite3 and mcap storage).
  info    list a bag's topics, types, message counts and duration
  play    publish a bag into the live graph at --rate with /clock (run nodes with use_sim_time)
  record  record chosen topics of the live graph to a new bag
"""


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name, help=help, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="bag_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="topics, types, counts and duration of a bag")
    info.add_argument("bag", help="bag directory, .mcap or .db3 file")
    info.set_defaults(func=_info)

    play = sub.add_parser("play", help="publish a bag into the live graph with /clock")
    play.add_argument("bag", help="bag directory, .mcap or .db3 file")
    play.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    play.add_argument("--topics", nargs="+", help="only these bag topics (default: all)")
    play.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="rename topics on publish")
    play.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    play.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages [Hz]")
    play.add_argument("--start-offset", type=float, default=0.0, help="skip the first seconds of the bag")
    play.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds until the --wait-topics have subscribers before playing",
    )
    play.add_argument(
        "--wait-topics", nargs="+", help="bag topics to wait for (default: its sensor_msgs/Image topics)"
    )
    play.set_defaults(func=_play)

    record = sub.add_parser("record", help="record live topics to a new bag")
    record.add_argument("bag", help="new bag directory to create")
    record.add_argument("--topics", nargs="+", required=True, help="topics to record (types are discovered)")
    record.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    record.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)"
    )
    record.add_argument("--discovery-timeout", type=float, default=5.0, help="seconds to wait for publishers")
    record.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")
    record.set_defaults(func=_record)


def _info(args: argparse.Namespace) -> int:
    from stereovoxel_ros.core.bags.bag_reader import BagError, BagReader

    try:
        with BagReader(args.bag) as bag:
            topics, counts = bag.topics, bag.topic_counts
            print(f"bag:       {args.bag}")
            print(f"messages:  {bag.message_count}")
            print(f"duration:  {bag.duration_ns / 1e9:.3f} s")
            print(f"start:     {bag.start_time_ns / 1e9:.9f} s")
            width = max((len(t) for t in topics), default=5)
            print(f"\n{'topic':<{width}}  {'count':>7}  type")
            for topic in sorted(topics):
                print(f"{topic:<{width}}  {counts.get(topic, 0):>7}  {topics[topic]}")
    except BagError as err:
        print(f"stereovoxel bag info: {err}", file=sys.stderr)
        return 1
    return 0


def _parse_remaps(items: list[str]) -> dict[str, str]:
    remap = {}
    for item in items:
        if ":=" not in item:
            raise SystemExit(f"stereovoxel bag play: --remap expects FROM:=TO, got {item!r}")
        old, new = item.split(":=", 1)
        remap[old] = new
    return remap


def _play(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.node import Node

    from stereovoxel_ros.core.bags.bag_reader import BagError
    from stereovoxel_ros.ros.bag_player import BagPlayer

    remap = _parse_remaps(args.remap)
    use_fastdds_profile(lambda line: print(f"stereovoxel bag play: {line}", file=sys.stderr))
    rclpy.init()
    node = Node("stereovoxel_bag_player")
    try:
        player = BagPlayer(
            node,
            args.bag,
            rate=args.rate,
            topics=args.topics,
            remap=remap,
            clock=not args.no_clock,
            clock_hz=args.clock_hz,
            start_offset_s=args.start_offset,
        )
        if args.wait_for_subscribers > 0:
            wait = args.wait_topics or [
                t
                for t, m in player.bag_topics.items()
                if m == "sensor_msgs/msg/Image" and t in player.publishers
            ]
            if not player.wait_for_subscribers(wait, timeout_s=args.wait_for_subscribers):
                node.get_logger().warning(f"no subscriber on some of {', '.join(wait)}; playing anyway")
        try:
            stats = player.play()
        except KeyboardInterrupt:
            player.stop()
            stats = player.stats
    except (BagError, ValueError) as err:
        print(f"stereovoxel bag play: {err}", file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"published {stats.message_count} messages ({stats.bag_s:.2f} s of bag) in {stats.wall_s:.2f} s")
    for topic, count in sorted(stats.published.items()):
        print(f"  {count:>7}  {remap.get(topic, topic)}")
    for topic, why in sorted(stats.skipped_topics.items()):
        print(f"  skipped  {topic}: {why}")
    return 0


def _record(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from stereovoxel_ros.core.bags.bag_reader import BagError
    from stereovoxel_ros.ros.bag_recorder import BagRecorder

    use_fastdds_profile(lambda line: print(f"stereovoxel bag record: {line}", file=sys.stderr))
    rclpy.init()
    node = Node(
        "stereovoxel_bag_recorder",
        parameter_overrides=[Parameter("use_sim_time", value=bool(args.use_sim_time))],
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    recorder = BagRecorder(node, args.bag, args.topics, storage=args.storage)
    try:
        recorder.start(discovery_timeout_s=args.discovery_timeout)
        end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        try:
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
        except KeyboardInterrupt:
            pass
        recorder.close()
    except BagError as err:
        print(f"stereovoxel bag record: {err}", file=sys.stderr)
        return 1
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"recorded {recorder.message_count} messages to {args.bag}")
    for topic, count in sorted(recorder.counts.items()):
        print(f"  {count:>7}  {topic}")
    return 0
