"""numpy (N, 3) points [m] ↔ ``sensor_msgs/PointCloud2`` (x, y, z float32, optional intensity)."""

from __future__ import annotations

import numpy as np

from stereovoxel_ros.core.messages.message_types import is_rosbags_type, new_message, resolve_type
from stereovoxel_ros.core.messages.ros_message import RosMessage, RosMessageClass

# sensor_msgs/PointField datatypes -> numpy kind/size
_POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
FLOAT32 = 7


class PointCloudError(ValueError):
    """Points or a PointCloud2 message are malformed (shape, missing field, size)."""


def points_to_pointcloud2(
    points: np.ndarray,
    header: RosMessage | None = None,
    intensity: np.ndarray | None = None,
    msg_type: RosMessageClass | None = None,
) -> RosMessage:
    """An unorganised (height 1) PointCloud2 of (N, 3) points [m] with an optional (N,) intensity field."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise PointCloudError(f"points must have shape (N, 3), got {pts.shape}")
    names = ["x", "y", "z"]
    columns = [pts[:, i].astype(np.float32) for i in range(3)]
    if intensity is not None:
        inten = np.asarray(intensity, dtype=np.float32).reshape(-1)
        if inten.size != pts.shape[0]:
            raise PointCloudError(f"intensity has {inten.size} values for {pts.shape[0]} points")
        names.append("intensity")
        columns.append(inten)
    cloud = np.stack(columns, axis=1).astype("<f4", copy=False)  # (N, F) rows are the points
    cls = resolve_type(msg_type, "sensor_msgs/msg/PointCloud2")
    field_cls = _field_type(cls)
    fields = [_point_field(field_cls, name, 4 * i) for i, name in enumerate(names)]
    point_step = 4 * len(names)
    return new_message(
        cls,
        "sensor_msgs/msg/PointCloud2",
        header=header,
        height=1,
        width=pts.shape[0],
        fields=fields,
        is_bigendian=False,
        point_step=point_step,
        row_step=point_step * pts.shape[0],
        data=np.ascontiguousarray(cloud).reshape(-1).view(np.uint8),
        is_dense=bool(np.isfinite(cloud).all()),
    )


def _field_type(cloud_cls: RosMessageClass) -> RosMessageClass | None:

    if is_rosbags_type(cloud_cls):
        return None  # make_msg builds rosbags PointFields from dicts
    return resolve_type(None, "sensor_msgs/msg/PointField")


def _point_field(field_cls: RosMessageClass | None, name: str, offset: int) -> RosMessage | dict[str, object]:
    if field_cls is None:
        return {"name": name, "offset": offset, "datatype": FLOAT32, "count": 1}
    return field_cls(name=name, offset=offset, datatype=FLOAT32, count=1)


def pointcloud2_fields(msg: RosMessage, names: tuple[str, ...]) -> np.ndarray:
    """(N, len(names)) float32 array of the named scalar fields of every point (row padding skipped)."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise PointCloudError(
            f"PointCloud2 has no field(s) {', '.join(missing)}; it has {', '.join(fields) or 'none'}"
        )
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    order = ">" if msg.is_bigendian else "<"
    formats = []
    for n in names:
        code = _POINTFIELD_DTYPES.get(int(fields[n].datatype))
        if code is None:
            raise PointCloudError(f"PointCloud2 field {n} has unknown datatype {fields[n].datatype}")
        formats.append(order + code)
    dtype = np.dtype(
        {
            "names": list(names),
            "formats": formats,
            "offsets": [int(fields[n].offset) for n in names],
            "itemsize": point_step,
        }
    )
    if point_step < dtype.itemsize or row_step < width * point_step:
        raise PointCloudError(
            f"PointCloud2 point_step {point_step} / row_step {row_step} too small for its fields"
        )
    data = (
        np.frombuffer(msg.data, dtype=np.uint8)
        if not isinstance(msg.data, np.ndarray)
        else msg.data.view(np.uint8)
    )
    if data.size < row_step * height:
        raise PointCloudError(
            f"PointCloud2 data is {data.size} B but row_step {row_step} x height {height} needs {row_step * height} B"
        )
    if width * height == 0:
        return np.zeros((0, len(names)), np.float32)
    rows = data[: row_step * height].reshape(height, row_step)[:, : width * point_step]
    structured = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    return np.stack([structured[n].astype(np.float32) for n in names], axis=1)


def pointcloud2_to_points(msg: RosMessage, skip_nans: bool = False) -> np.ndarray:
    """(N, 3) float32 x, y, z [m] of a PointCloud2; ``skip_nans`` drops non-finite points."""
    pts = pointcloud2_fields(msg, ("x", "y", "z"))
    return pts[np.isfinite(pts).all(axis=1)] if skip_nans else pts
