"""Find the topics of one stereo camera in a bag: ZED / Jackal or RealSense names, or the ones the user gives.

Discovery, in order:

1. Topics given explicitly (``--left``, ``--right``, ``--left-info``, ``--right-info``, ``--depth``) are used
   as they are; each must exist in the bag with the right type.
2. Otherwise a camera is a prefix ``P`` with Image topics ``P<left>/<name>`` and ``P<right>/<name>`` and
   CameraInfo topics ``P<left>/camera_info`` and ``P<right>/camera_info``, where ``<left>/<right>`` is
   ``left/right`` (ZED, Jackal) or ``infra1/infra2`` (RealSense) and ``<name>`` the first of
   :data:`IMAGE_NAMES` the bag has. A given ``--left`` alone fixes ``P`` and ``<name>`` the same way.
3. ``--namespace`` keeps only cameras whose prefix starts with it (e.g. ``/j100_0000/sensors/camera_1``).
   More than one camera left is an error that lists them.
4. Depth (optional) is ``P`` + the first of :data:`DEPTH_SUFFIXES` in the bag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"

STEREO_SIDES = (("left", "right"), ("infra1", "infra2"))  # ZED / Jackal, RealSense infrared pair
IMAGE_NAMES = ("image_rect", "image_rect_color", "image", "image_rect_raw", "image_raw")
DEPTH_SUFFIXES = (
    "depth/image",
    "depth/image_rect",
    "depth/depth_registered",
    "depth/image_rect_raw",
    "aligned_depth_to_infra1/image_raw",
    "depth_registered/image_rect",
)


class TopicDiscoveryError(ValueError):
    """The bag has no (or more than one) stereo camera matching the options, or a given topic is wrong."""


@dataclass(frozen=True)
class StereoTopicNames:
    """The topics of one stereo camera; ``depth`` is None when the bag has none for it."""

    left_image: str
    right_image: str
    left_info: str
    right_info: str
    depth: str | None


def _split(topic: str) -> tuple[str, str, str, str] | None:
    """(prefix, left side, right side, image name) when ``topic`` is a left image under a known layout."""
    for left, right in STEREO_SIDES:
        for name in IMAGE_NAMES:
            suffix = f"/{left}/{name}"
            if topic.endswith(suffix):
                return topic[: -len(suffix)], left, right, name
    return None


def require_topic(
    topics: dict[str, str], topic: str, msgtype: str, option: str, bag: str | os.PathLike
) -> str:
    """``topic`` (made absolute) when the bag has it as ``msgtype``; else an error naming the option."""
    topic = "/" + topic.lstrip("/")
    if topics.get(topic) != msgtype:
        have = sorted(t for t, m in topics.items() if m == msgtype)
        found = f"it is a {topics[topic]}" if topic in topics else "no such topic"
        raise TopicDiscoveryError(
            f"{bag}: {option} {topic}: {found}; {msgtype} topics in the bag: {', '.join(have) or 'none'}"
        )
    return topic


def _namespace_prefix(namespace: str | None) -> str:
    return "/" + namespace.strip("/") if namespace and namespace.strip("/") else ""


def discover_stereo_topics(
    topics: dict[str, str],
    bag: str | os.PathLike = "bag",
    *,
    namespace: str | None = None,
    left: str | None = None,
    right: str | None = None,
    left_info: str | None = None,
    right_info: str | None = None,
    depth: str | None = None,
) -> StereoTopicNames:
    """The stereo topics of ``{topic: msgtype}`` (see the module docstring); errors say which option to pass."""
    ns = _namespace_prefix(namespace)

    def check(topic: str, msgtype: str, option: str) -> str:
        return require_topic(topics, topic, msgtype, option, bag)

    if left is not None:
        left = check(left, IMAGE_TYPE, "--left")
        cameras = [_split(left)]
    else:
        cameras = []
        for topic, msgtype in sorted(topics.items()):
            parts = _split(topic)
            if msgtype == IMAGE_TYPE and parts is not None and parts[0].startswith(ns):
                cameras.append(parts)
        # one image name per camera prefix: the first of IMAGE_NAMES (image_rect before image, ...)
        best: dict[str, tuple[str, str, str, str]] = {}
        for parts in cameras:
            rank = (STEREO_SIDES.index((parts[1], parts[2])), IMAGE_NAMES.index(parts[3]))
            if parts[0] not in best or rank < (
                STEREO_SIDES.index((best[parts[0]][1], best[parts[0]][2])),
                IMAGE_NAMES.index(best[parts[0]][3]),
            ):
                best[parts[0]] = parts
        complete = [
            p for p in best.values() if topics.get(f"{p[0]}/{p[2]}/{p[3]}") == IMAGE_TYPE or right is not None
        ]
        cameras = complete or list(best.values())
        if not cameras:
            where = f" under {ns}" if ns else ""
            images = sorted(t for t, m in topics.items() if m == IMAGE_TYPE)
            raise TopicDiscoveryError(
                f"{bag}: no stereo camera{where}: no {IMAGE_TYPE} topic ending with "
                f"{' or '.join(f'{s[0]}/{n}' for s in STEREO_SIDES for n in IMAGE_NAMES[:1])} (or "
                f"{', '.join(IMAGE_NAMES[1:])}); Image topics in the bag: {', '.join(images) or 'none'}. "
                "Pass --left, --right, --left-info and --right-info"
            )
        if len(cameras) > 1:
            raise TopicDiscoveryError(
                f"{bag}: several stereo cameras: {', '.join(sorted(p[0] or '/' for p in cameras))}; choose one "
                "with --namespace (e.g. --namespace "
                + sorted(p[0] for p in cameras)[0]
                + ") or --left/--right"
            )
        left = f"{cameras[0][0]}/{cameras[0][1]}/{cameras[0][3]}"
    parts = cameras[0]

    def derived(given: str | None, option: str, msgtype: str, make: str | None) -> str:
        if given is not None:
            return check(given, msgtype, option)
        if make is None or topics.get(make) != msgtype:
            wanted = f" ({make} is not in the bag)" if make else ""
            raise TopicDiscoveryError(
                f"{bag}: cannot tell the {option[2:]} topic for {left}{wanted}; pass {option}"
            )
        return make

    prefix = parts[0] if parts else None
    right = derived(right, "--right", IMAGE_TYPE, f"{prefix}/{parts[2]}/{parts[3]}" if parts else None)
    left_info = derived(
        left_info, "--left-info", INFO_TYPE, f"{prefix}/{parts[1]}/camera_info" if parts else None
    )
    right_info = derived(
        right_info, "--right-info", INFO_TYPE, f"{prefix}/{parts[2]}/camera_info" if parts else None
    )
    if depth is not None:
        depth = check(depth, IMAGE_TYPE, "--depth")
    elif prefix is not None:
        depth = next(
            (f"{prefix}/{s}" for s in DEPTH_SUFFIXES if topics.get(f"{prefix}/{s}") == IMAGE_TYPE), None
        )
    return StereoTopicNames(left, right, left_info, right_info, depth)
