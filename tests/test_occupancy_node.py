"""The stereo occupancy node: parameter validation, obstacle-grid geometry, lifecycle, and bad input on a live graph."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import DEFAULT_GRID
from stereovoxel_ros.core.geometry.stereo_camera import ZED2_640x360

CAMERA = ZED2_640x360.scaled(160, 90)
TOPICS = {"left": "/test/left/image_rect", "right": "/test/right/image_rect"}
INFO_TOPICS = {"left": "/test/left/camera_info", "right": "/test/right/camera_info"}


def _defaults() -> dict:
    from stereovoxel_ros.ros.occupancy_parameters import PARAMETERS

    return {name: default for name, (default, _) in PARAMETERS.items()}


# ---- pure: parameters and geometry ------------------------------------------------------------------------


def test_default_parameters_are_valid() -> None:
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyNodeConfig

    config = OccupancyNodeConfig.from_parameters(_defaults())
    assert config.grid == DEFAULT_GRID
    assert config.obstacle_band_m == (0.10, 1.50)
    assert not config.grid_in_odom


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("backend", "yolo", "must be one of"),
        ("grid", "nope", "unknown grid preset"),
        ("camera_height", math.nan, "finite"),
        ("camera_pitch", 2.0, "must be in"),
        ("obstacle_max_height", 0.05, "above obstacle_min_height"),
        ("grid_resolution", 0.0, "must be in"),
        ("grid_extent", [1.0, 0.0, -1.0, 1.0], "x_min < x_max"),
        ("grid_extent", [1.0, 2.0], "4 finite numbers"),
        ("occupancy_grid_frame", "map", "must be one of"),
        ("left_image_topic", " ", "non-empty"),
        ("sync_slop", -0.1, "must be in"),
        ("classic.matcher", "census", "matcher must be one of"),
        ("classic.block_size", 4, "block_size must be odd"),
        ("classic.points_fraction", math.nan, "finite"),
    ],
)
def test_bad_parameter_is_named(name: str, value: object, why: str) -> None:
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyConfigError, OccupancyNodeConfig

    with pytest.raises(OccupancyConfigError, match=why) as info:
        OccupancyNodeConfig.from_parameters(_defaults() | {name: value})
    assert repr(name) in str(info.value) or name.split(".")[1] in str(info.value)


def test_obstacle_cells_mark_obstacles_free_space_and_unseen() -> None:
    from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
    from stereovoxel_ros.core.occupancy.obstacle_grid import obstacle_cells
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyNodeConfig

    config = OccupancyNodeConfig.from_parameters(_defaults())
    camera_to_base = optical_to_base_transform(0.4)
    points = np.array(
        [[3.05, 0.05, 0.5], [5.05, 1.05, 0.02], [6.05, -1.05, 2.0]]
    )  # obstacle, floor, too high
    cells, origin = obstacle_cells(config, ZED2_640x360, camera_to_base, points, np.eye(4))
    res = config.grid_resolution_m
    assert origin == (-1.0, -7.0)
    assert cells.shape == (round(14.0 / res), round(14.0 / res))

    def cell(x: float, y: float) -> int:
        return int(cells[math.floor((y - origin[1]) / res), math.floor((x - origin[0]) / res)])

    assert cell(3.05, 0.05) == 100  # in the height band
    assert cell(5.05, 1.05) == 0  # floor point: seen, free
    assert cell(6.05, -1.05) == 0  # above the band: the Jackal passes under it
    assert cell(-0.5, 0.0) == -1  # behind the camera
    assert cell(2.0, 6.5) == -1  # outside the field of view
    assert np.count_nonzero(cells == 100) == 1


def test_obstacle_cells_behind_a_wall_are_unknown_not_free() -> None:
    from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
    from stereovoxel_ros.core.occupancy.obstacle_grid import obstacle_cells
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyNodeConfig

    config = OccupancyNodeConfig.from_parameters(_defaults())
    # a 2 m wide wall 3 m ahead, and a box 6 m ahead right behind it, both in the height band
    wall = np.array([[3.05, y, 0.5] for y in np.arange(-1.0, 1.01, 0.1)])
    box = np.array([[6.05, 0.05, 0.5], [6.25, 0.05, 0.5]])
    cells, origin = obstacle_cells(
        config, ZED2_640x360, optical_to_base_transform(0.4), np.concatenate([wall, box]), np.eye(4)
    )
    res = config.grid_resolution_m

    def cell(x: float, y: float) -> int:
        return int(cells[math.floor((y - origin[1]) / res), math.floor((x - origin[0]) / res)])

    assert cell(1.5, 0.0) == 0  # in front of the wall: seen free
    assert cell(3.05, 0.0) == 100 and cell(6.05, 0.05) == 100
    assert cell(4.5, 0.0) == -1  # between wall and box: hidden, not free
    assert cell(8.0, 0.0) == -1  # behind both
    assert cell(4.5, 3.0) == 0  # beside the wall: seen past it
    # pitched down, the camera still sees the free space in front of the wall (rays are cast horizontally)
    pitched, _ = obstacle_cells(
        config, ZED2_640x360, optical_to_base_transform(0.4, pitch=0.2), wall, np.eye(4)
    )
    assert pitched[math.floor((0.0 - origin[1]) / res), math.floor((1.5 - origin[0]) / res)] == 0


def test_odom_grid_window_follows_the_robot_on_whole_cells() -> None:
    from stereovoxel_ros.core.geometry.transforms import rigid_transform_from_pose
    from stereovoxel_ros.core.occupancy.obstacle_grid import grid_window
    from stereovoxel_ros.ros.occupancy_parameters import OccupancyNodeConfig

    config = OccupancyNodeConfig.from_parameters(_defaults() | {"occupancy_grid_frame": "odom_frame"})
    yaw = 0.7
    pose = rigid_transform_from_pose((10.03, -4.51, 0.0), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))
    origin, width, height = grid_window(config, pose)
    assert width == height == 2 * math.ceil(13.0 / 0.2)
    assert origin[0] < 10.03 - 12.9 and origin[0] + width * 0.2 > 10.03 + 12.9
    assert origin[0] / 0.2 == pytest.approx(round(origin[0] / 0.2))  # cells do not shift with the robot
    with pytest.raises(Exception, match="non-finite"):
        rigid_transform_from_pose((math.nan, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))


# ---- live graph ------------------------------------------------------------------------------------------


@pytest.fixture
def graph(ros_context) -> Iterator[dict]:
    """An executor spinning in the background, as ``main()`` runs the node (inference on its worker thread)."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)
    thread = threading.Thread(target=executor.spin, daemon=True)
    state = {"executor": executor, "context": ros_context, "nodes": []}
    thread.start()
    try:
        yield state
    finally:
        executor.shutdown(timeout_sec=5.0)
        for node in state["nodes"]:
            node.destroy_node()


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _occupancy_node(graph: dict, **overrides):
    from rclpy.parameter import Parameter

    from stereovoxel_ros.ros.occupancy_node import StereoOccupancyNode

    params = {
        "backend": "sgbm",
        "left_image_topic": TOPICS["left"],
        "right_image_topic": TOPICS["right"],
        "left_info_topic": INFO_TOPICS["left"],
        "right_info_topic": INFO_TOPICS["right"],
        "diagnostics_period": 0.2,
        **overrides,
    }
    node = StereoOccupancyNode(
        context=graph["context"], parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]
    )
    graph["nodes"].append(node)
    graph["executor"].add_node(node)
    return node


class _Camera:
    """A test stereo camera publishing images and infos, and listening to the node's outputs."""

    def __init__(self, graph: dict) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from stereovoxel_ros.ros.qos import reliable_qos

        self.node = rclpy.create_node("test_camera", context=graph["context"])
        graph["nodes"].append(self.node)
        self.image = {s: self.node.create_publisher(Image, t, 10) for s, t in TOPICS.items()}
        self.info = {s: self.node.create_publisher(CameraInfo, t, 10) for s, t in INFO_TOPICS.items()}
        self.clouds: list = []
        self.grids: list = []
        self.diagnostics: list = []
        self.node.create_subscription(
            PointCloud2, "/stereo_occupancy/cloud", self.clouds.append, reliable_qos(50)
        )
        self.node.create_subscription(
            OccupancyGrid, "/stereo_occupancy/obstacle_grid", self.grids.append, reliable_qos(50)
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        graph["executor"].add_node(self.node)
        self.rng = np.random.default_rng(0)

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in (*self.image.values(), *self.info.values()))

    def publish(
        self,
        stamp_ns: int,
        encoding: str = "rgb8",
        right_size: tuple[int, int] | None = None,
        infos: bool = True,
        nan_info: bool = False,
    ) -> None:
        from std_msgs.msg import Header

        from stereovoxel_ros.core.messages.camera_info import camera_info_from_model
        from stereovoxel_ros.core.messages.image import numpy_to_image
        from stereovoxel_ros.core.messages.stamps import ns_to_stamp

        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera_0_left_optical_frame")
        if infos:
            for side in ("left", "right"):
                info = camera_info_from_model(CAMERA, side, header)
                if nan_info:
                    info.p[0] = math.nan
                self.info[side].publish(info)
            time.sleep(0.05)  # infos first, as a driver does
        w, h = CAMERA.width, CAMERA.height
        left = self.rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        right = np.roll(left, -8, axis=1)  # a fronto-parallel wall at disparity 8 px
        if encoding == "32FC1":
            left_msg = numpy_to_image(left[:, :, 0].astype(np.float32), "32FC1", header)
        else:
            left_msg = numpy_to_image(left, encoding, header)
        if right_size is not None:
            right = right[: right_size[1], : right_size[0]]
        self.image["left"].publish(left_msg)
        self.image["right"].publish(numpy_to_image(np.ascontiguousarray(right), "rgb8", header))


@pytest.mark.ros
def test_lifecycle_configure_activate_deactivate_and_failed_configure(graph) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node = _occupancy_node(graph)
    probe = _Camera(graph)
    ok = TransitionCallbackReturn.SUCCESS

    assert node.trigger_configure() == ok
    assert node.backend_in_use == "sgbm" and node.predictor is not None
    assert _wait(lambda: probe.node.count_publishers("/stereo_occupancy/cloud") == 1)
    assert probe.node.count_subscribers(TOPICS["left"]) == 0  # inactive: not listening yet

    assert node.trigger_activate() == ok
    assert _wait(probe.connected), "the node did not subscribe to the camera on activate"
    assert _wait(lambda: bool(probe.diagnostics)), "no /diagnostics while active"
    probe.publish(1_000_000_000)
    assert _wait(lambda: len(probe.clouds) >= 1 and len(probe.grids) >= 1), "no output while active"

    assert node.trigger_deactivate() == ok
    assert _wait(lambda: probe.node.count_subscribers(TOPICS["left"]) == 0)
    clouds = len(probe.clouds)
    probe.publish(2_000_000_000)
    time.sleep(0.5)
    assert len(probe.clouds) == clouds, "an inactive node published"

    assert node.trigger_cleanup() == ok
    assert node.predictor is None
    assert _wait(lambda: probe.node.count_publishers("/stereo_occupancy/cloud") == 0)

    # A bad parameter: configure fails naming it, nothing is left half-configured, diagnostics say why.
    node.set_parameters([Parameter("obstacle_max_height", value=-1.0)])
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "obstacle_max_height" in node.configure_error
    assert node.predictor is None and node.config is None
    assert probe.node.count_publishers("/stereo_occupancy/cloud") == 0
    status = node.diagnostic_status()
    assert status.level == status.ERROR and "obstacle_max_height" in status.message

    node.set_parameters([Parameter("obstacle_max_height", value=1.5)])
    assert node.trigger_configure() == ok and node.configure_error == ""


@pytest.mark.ros
def test_bad_inputs_are_counted_reported_and_survived(graph) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node = _occupancy_node(graph)
    probe = _Camera(graph)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert _wait(probe.connected)
    stamp = iter(range(10_000_000_000, 20_000_000_000, 100_000_000))

    def expect_error(publish: Callable[[], object], words: str) -> None:
        before = node.stats.input_errors
        publish()
        assert _wait(lambda: node.stats.input_errors > before, 5.0), f"no input error counted for {words!r}"
        assert words in node.stats.last_input_error, node.stats.last_input_error

    expect_error(lambda: probe.publish(next(stamp), infos=False), "no left and right CameraInfo")
    probe.publish(next(stamp))
    assert _wait(lambda: len(probe.clouds) == 1), "a good frame after a bad one was not processed"
    expect_error(lambda: probe.publish(next(stamp), right_size=(120, 90)), "right image is 120x90")
    expect_error(lambda: probe.publish(next(stamp), encoding="32FC1"), "encoding '32FC1'")
    expect_error(lambda: probe.publish(next(stamp), nan_info=True), "NaN")
    probe.publish(next(stamp))  # valid infos again
    assert _wait(lambda: len(probe.clouds) == 2)
    expect_error(lambda: probe.publish(5_000_000_000), "stamp went backwards")
    result = node.set_parameters([Parameter("camera_pitch", value=math.nan)])[0]
    assert not result.successful and "camera_pitch" in result.reason
    assert "extrinsics must be finite" in node.stats.last_input_error
    assert node.extrinsics.values == (0.4, 0.0, 0.0)  # the NaN never reached the transform

    # Still running: new frames after all that are processed and published.
    clouds = len(probe.clouds)
    probe.publish(6_000_000_000)
    assert _wait(lambda: len(probe.clouds) > clouds), "the node stopped processing after bad input"
    assert node.stats.input_errors >= 6

    def reported() -> bool:
        values = [
            {kv.key: kv.value for kv in s.values}
            for msg in probe.diagnostics[-3:]
            for s in msg.status
            if "stereo_occupancy" in s.name
        ]
        return any(
            int(v["input_errors"]) >= 6 and "extrinsics must be finite" in v["last_input_error"]
            for v in values
        )

    assert _wait(reported, 3.0), "/diagnostics does not report the input errors"
    node.publish_diagnostics()
    assert node.diagnostic_status().values  # and the node answers after all that


@pytest.mark.ros
def test_backend_choice_checkpoint_fallback_and_probabilities(graph, tmp_path) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from stereovoxel_ros.core.messages.pointcloud2 import pointcloud2_fields
    from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet, save_checkpoint
    from stereovoxel_ros.core.occupancy.occupancy_predictor import default_checkpoint_path

    node = _occupancy_node(graph, backend="stereovoxelnet", checkpoint=str(tmp_path / "missing.pt"))
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "'checkpoint'" in node.configure_error and "no such file" in node.configure_error

    node.set_parameters([Parameter("checkpoint", value="")])  # the shipped one, or classic when there is none
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.backend_in_use == ("stereovoxelnet" if default_checkpoint_path().is_file() else "classic")
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS

    checkpoint = tmp_path / "untrained.pt"
    save_checkpoint(checkpoint, create_stereovoxelnet("stereovoxelnet", DEFAULT_GRID), "stereovoxelnet")
    node.set_parameters([Parameter("checkpoint", value=str(checkpoint))])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.backend_in_use == "stereovoxelnet"
    probe = _Camera(graph)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert _wait(probe.connected)
    probe.publish(3_000_000_000)
    assert _wait(lambda: bool(probe.clouds), 20.0), node.stats.last_input_error
    intensity = pointcloud2_fields(probe.clouds[-1], ("intensity",))
    assert np.all((intensity > 0.5) & (intensity <= 1.0))  # occupied voxels carry their probability
