"""Property-based fuzzing of the message layer (hypothesis): round trips hold, and bad fields only ever raise
the module's own error class, never an IndexError, a numpy error or a crash."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraError, StereoCameraModel
from stereovoxel_ros.core.messages.image import ImageEncodingError, image_to_numpy, numpy_to_image
from stereovoxel_ros.core.messages.occupancy_grid import (
    OccupancyGridError,
    array_to_occupancy_grid,
    occupancy_grid_to_array,
)
from stereovoxel_ros.core.messages.pointcloud2 import (
    PointCloudError,
    pointcloud2_to_points,
    points_to_pointcloud2,
)
from stereovoxel_ros.core.messages.stamps import StampError, ns_to_stamp, stamp_to_ns

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = {"mono8": (np.uint8, 1), "rgb8": (np.uint8, 3), "bgra8": (np.uint8, 4), "mono16": (np.uint16, 1),
             "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1), "64FC3": (np.float64, 3)}  # fmt: skip
ANY_ENCODING = st.sampled_from(
    [*ENCODINGS, "8UC2", "32SC4", "bayer_rggb8", "nv21", "", "rgb", "16FC1", "yuv422"]
)


@st.composite
def images(draw):
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    dtype, channels = ENCODINGS[encoding]
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    shape = (h, w) if channels == 1 else (h, w, channels)
    elements = st.floats(-1e6, 1e6, width=32) if dtype is np.float32 else None
    if dtype is np.float64:
        elements = st.floats(-1e6, 1e6)
    return encoding, draw(hnp.arrays(dtype, shape, elements=elements))


@FAST
@given(images())
def test_image_round_trip(case) -> None:
    encoding, array = case
    msg = numpy_to_image(array, encoding)
    np.testing.assert_array_equal(image_to_numpy(msg), array)


@FAST
@given(images(), st.integers(1, 9), st.booleans())
def test_padded_and_big_endian_rows_read_back(case, pad, big_endian) -> None:
    encoding, array = case
    h, w = array.shape[:2]
    order = ">" if big_endian else "<"
    rows = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(order))).view(np.uint8).reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = SimpleNamespace(
        encoding=encoding, height=h, width=w, step=padded.shape[1], is_bigendian=int(big_endian),
        data=padded.tobytes(),
    )  # fmt: skip
    np.testing.assert_array_equal(image_to_numpy(msg), array)


@FAST
@given(
    ANY_ENCODING,
    st.integers(-3, 20),
    st.integers(-3, 20),
    st.integers(-5, 200),
    st.binary(max_size=400),
    st.integers(0, 1),
)
def test_inconsistent_image_fields_raise_only_image_encoding_error(encoding, h, w, step, data, big) -> None:
    msg = SimpleNamespace(encoding=encoding, height=h, width=w, step=step, is_bigendian=big, data=data)
    try:
        pixels = image_to_numpy(msg)
    except ImageEncodingError:
        return
    assert pixels.shape[:2] == (h, w)


@FAST
@given(st.integers(0, 2**63 - 1))
def test_stamp_round_trip(ns) -> None:
    pytest.importorskip("builtin_interfaces")
    stamp = ns_to_stamp(ns)
    assert 0 <= stamp.nanosec < 10**9 and stamp_to_ns(stamp) == ns


@FAST
@given(st.integers(-(2**62), -1))
def test_negative_stamps_are_refused(ns) -> None:
    with pytest.raises(StampError):
        ns_to_stamp(ns)


@FAST
@given(
    hnp.arrays(
        np.int8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=16), elements=st.sampled_from([-1, 0, 100])
    )
)
def test_occupancy_grid_round_trip(grid) -> None:
    pytest.importorskip("nav_msgs")
    msg = array_to_occupancy_grid(grid, 0.2)
    np.testing.assert_array_equal(occupancy_grid_to_array(msg), grid)


@FAST
@given(
    hnp.arrays(
        np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=st.floats(allow_nan=True)
    )
)
def test_bad_occupancy_arrays_raise_only_occupancy_grid_error(grid) -> None:
    pytest.importorskip("nav_msgs")
    with contextlib.suppress(OccupancyGridError):
        array_to_occupancy_grid(grid, 0.2)


@FAST
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(0, 40), st.just(3)), elements=st.floats(-100, 100, width=32))
)
def test_pointcloud_round_trip(points) -> None:
    pytest.importorskip("sensor_msgs")
    msg = points_to_pointcloud2(points)
    np.testing.assert_array_equal(pointcloud2_to_points(msg), points)


@FAST
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)))
def test_bad_point_arrays_raise_only_pointcloud_error(points) -> None:
    pytest.importorskip("sensor_msgs")
    try:
        points_to_pointcloud2(points)
    except PointCloudError:
        assert points.ndim != 2 or points.shape[1] != 3


def _info(width, height, fx, fy, cx, cy, tx):
    return SimpleNamespace(
        width=width, height=height, k=[fx, 0, cx, 0, fy, cy, 0, 0, 1], d=[0.0] * 5, distortion_model="plumb_bob",
        r=[1, 0, 0, 0, 1, 0, 0, 0, 1], p=[fx, 0, cx, tx, 0, fy, cy, 0, 0, 0, 1, 0],
    )  # fmt: skip


@FAST
@given(
    st.integers(-2, 4000),
    st.integers(-2, 4000),
    *(st.floats(allow_nan=True, allow_infinity=True) for _ in range(5)),
)
def test_camera_infos_build_a_model_or_raise_stereo_camera_error(width, height, fx, fy, cx, cy, tx) -> None:
    left, right = _info(width, height, fx, fy, cx, cy, 0.0), _info(width, height, fx, fy, cx, cy, tx)
    try:
        model = StereoCameraModel.from_camera_infos(left, right)
    except StereoCameraError:
        return
    assert model.fx > 0 and model.baseline > 0 and np.isfinite([model.fx, model.cx, model.baseline]).all()
