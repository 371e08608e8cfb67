"""Bags: write and read back in mcap and sqlite3, typestore helpers, and clear errors for bad bags."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from stereovoxel_ros.core.bags.bag_reader import BagError, BagReader
from stereovoxel_ros.core.bags.bag_writer import BagWriter
from stereovoxel_ros.core.bags.typestore import TypestoreError, get_typestore, make_msg

IMAGE = "sensor_msgs/msg/Image"
TF = "tf2_msgs/msg/TFMessage"
SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}


def _image(i: int, width: int = 8, height: int = 4):
    data = np.full(width * height, i % 256, np.uint8)
    return make_msg(
        IMAGE,
        stamp_ns=1_000_000_000 + i,
        frame_id="cam",
        height=height,
        width=width,
        encoding="mono8",
        step=width,
        data=data,
    )


def _write_bag(path: Path, storage: str, n: int = 20) -> Path:
    with BagWriter(path, storage) as bag:
        for i in range(n):
            bag.write("/left", IMAGE, _image(i), timestamp_ns=5_000 + 10 * i)
            if i % 5 == 0:
                tf = make_msg(TF, transforms=[{"child_frame_id": f"f{i}", "header": {"frame_id": "odom"}}])
                bag.write("/tf", TF, tf, timestamp_ns=5_000 + 10 * i + 1)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip(tmp_path: Path, storage: str) -> None:
    path = _write_bag(tmp_path / "bag", storage)
    assert (path / "metadata.yaml").exists()
    assert (path / f"bag{SUFFIX[storage]}").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    with BagReader(path) as bag:
        assert bag.topics == {"/left": IMAGE, "/tf": TF}
        assert bag.message_count == 24
        assert bag.topic_counts == {"/left": 20, "/tf": 4}
        assert bag.start_time_ns == 5_000
        images = list(bag.messages(["/left"]))
        everything = list(bag.messages())
        raw = list(bag.raw_messages(["/tf"]))
    assert len(images) == 20 and len(everything) == 24 and len(raw) == 4
    stamps = [t for _, t, _ in everything]
    assert stamps == sorted(stamps)
    topic, t, msg = images[7]
    assert topic == "/left" and t == 5_070
    assert msg.header.stamp.sec == 1 and msg.header.stamp.nanosec == 7 and msg.header.frame_id == "cam"
    assert msg.encoding == "mono8" and (msg.width, msg.height, msg.step) == (8, 4, 8)
    np.testing.assert_array_equal(msg.data, np.full(32, 7, np.uint8))
    tf = get_typestore().deserialize_cdr(raw[1][3], TF)
    assert tf.transforms[0].child_frame_id == "f5" and tf.transforms[0].header.frame_id == "odom"


def test_single_storage_file_and_missing_metadata(tmp_path: Path) -> None:
    path = _write_bag(tmp_path / "bag", "mcap", n=5)
    with BagReader(path / "bag.mcap") as bag:  # the storage file itself
        assert len(list(bag.messages(["/left"]))) == 5
    (path / "metadata.yaml").unlink()  # a recording killed before it wrote metadata
    with BagReader(path) as bag:
        assert bag.message_count == 6


def test_writer_refuses_existing_and_discards_on_error(tmp_path: Path) -> None:
    path = _write_bag(tmp_path / "bag", "mcap", n=2)
    with pytest.raises(BagError, match="already exists"):
        BagWriter(path).open()
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="boom"), BagWriter(failed, "sqlite3") as bag:
        bag.write("/left", IMAGE, _image(0), 1)
        raise RuntimeError("boom")
    assert not failed.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]
    with pytest.raises(BagError, match="cannot also write"), BagWriter(tmp_path / "b2") as bag:
        bag.write("/left", IMAGE, _image(0), 1)
        bag.write("/left", TF, make_msg(TF), 2)
    with pytest.raises(BagError, match="unknown bag storage 'rosbag1'"):
        BagWriter(tmp_path / "b3", storage="rosbag1")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("keep", [0.1, 0.6, 0.95])
def test_truncated_bag_is_a_clear_error(tmp_path: Path, storage: str, keep: float) -> None:
    path = _write_bag(tmp_path / "bag", storage)
    storage_file = path / f"bag{SUFFIX[storage]}"
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BagError, match=re.escape(str(path))), BagReader(path) as bag:
        list(bag.messages())


def test_missing_and_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(BagError, match=r"nothing_here: bag does not exist"):
        BagReader(tmp_path / "nothing_here").open()
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BagError, match="empty_dir: not a rosbag2 bag"):
        BagReader(tmp_path / "empty_dir").open()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match=r"notes\.txt: not a rosbag2 bag"):
        BagReader(tmp_path / "notes.txt").open()
    path = _write_bag(tmp_path / "bag", "mcap", n=2)
    (path / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    with pytest.raises(BagError, match="cannot open bag"):
        BagReader(path).open()
    shutil.rmtree(path)
    path = _write_bag(tmp_path / "bag", "mcap", n=2)
    with pytest.raises(BagError, match="no topic"), BagReader(path) as bag:
        list(bag.messages(["/does/not/exist"]))


def test_make_msg_defaults_and_errors() -> None:
    info = make_msg("sensor_msgs/msg/CameraInfo", stamp_ns=3_000_000_007, frame_id="left", p=np.arange(12))
    assert info.header.stamp.sec == 3 and info.header.stamp.nanosec == 7
    assert info.p.dtype == np.float64 and info.p[11] == 11 and info.k.shape == (9,) and info.d.size == 0
    clock = make_msg("rosgraph_msgs/msg/Clock", clock=2_500_000_000)
    assert (clock.clock.sec, clock.clock.nanosec) == (2, 500_000_000)
    with pytest.raises(TypestoreError, match="unknown message type 'no_msgs/msg/Nope'"):
        make_msg("no_msgs/msg/Nope")
    with pytest.raises(TypestoreError, match="has no field"):
        make_msg(IMAGE, colour="red")
    with pytest.raises(TypestoreError, match=r"CameraInfo.p: fixed-size array needs 12"):
        make_msg("sensor_msgs/msg/CameraInfo", p=[1.0, 2.0])
    with pytest.raises(TypestoreError, match="no header"):
        make_msg("rosgraph_msgs/msg/Clock", stamp_ns=1)
