"""Image ↔ numpy for a 1280×720 rgb8 frame: the message layer against naive per-element conversion.

Run: ``.venv/bin/python -m benchmarks.bench_messages [--repeats 30]``. Target: both directions in a few ms on an
rclpy ``sensor_msgs/Image``. Baseline, measured in the same run: what code without the layer does —
``msg.data = array.flatten().tolist()`` (the rosidl setter then checks and copies element by element) and
``np.array(list(msg.data))``. Also shows the rosbags flavour and rclpy CDR serialization for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from stereovoxel_ros.core.messages.image import image_to_numpy, numpy_to_image

WIDTH, HEIGHT = 1280, 720


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def naive_to_image(pixels: np.ndarray):
    from sensor_msgs.msg import Image

    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding="rgb8", step=pixels.shape[1] * 3)
    msg.data = pixels.reshape(-1).tolist()
    return msg


def naive_to_numpy(msg) -> np.ndarray:
    return np.array(list(msg.data), dtype=np.uint8).reshape(msg.height, msg.width, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs of the fast paths (median)")
    parser.add_argument("--naive-repeats", type=int, default=3, help="timed runs of the naive baseline")
    args = parser.parse_args()

    from rclpy.serialization import serialize_message

    from stereovoxel_ros.core.bags.typestore import get_typestore

    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    msg = numpy_to_image(pixels, "rgb8")
    assert np.array_equal(image_to_numpy(msg), pixels) and np.array_equal(naive_to_numpy(msg), pixels)
    assert naive_to_image(pixels).data == msg.data
    bag_type = get_typestore().types["sensor_msgs/msg/Image"]

    naive_read = median_ms(lambda: naive_to_numpy(msg), args.naive_repeats)
    rows = [
        (
            "numpy -> Image (rclpy)",
            median_ms(lambda: numpy_to_image(pixels, "rgb8"), args.repeats),
            median_ms(lambda: naive_to_image(pixels), args.naive_repeats),
        ),
        (
            "Image (rclpy) -> numpy, zero-copy view",
            median_ms(lambda: image_to_numpy(msg), args.repeats),
            naive_read,
        ),
        # the naive result owns its memory: this row is the like-for-like comparison
        (
            "Image (rclpy) -> numpy, owned copy",
            median_ms(lambda: image_to_numpy(msg).copy(), args.repeats),
            naive_read,
        ),
        (
            "numpy -> Image (rosbags)",
            median_ms(lambda: numpy_to_image(pixels, "rgb8", msg_type=bag_type), args.repeats),
            None,
        ),
        (
            "rclpy serialize_message (for scale)",
            median_ms(lambda: serialize_message(msg), args.repeats),
            None,
        ),
    ]
    print(f"sensor_msgs/Image {WIDTH}x{HEIGHT} rgb8 ({pixels.nbytes / 1e6:.1f} MB), median of runs")
    print(f"{'operation':<40} {'ours [ms]':>10} {'naive [ms]':>11} {'speed-up':>9}")
    for name, ours, naive in rows:
        naive_s = f"{naive:11.1f}" if naive is not None else f"{'-':>11}"
        ratio_s = f"{naive / ours:8.0f}x" if naive is not None else f"{'-':>9}"
        print(f"{name:<40} {ours:10.3f} {naive_s} {ratio_s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
