"""Synthetic worlds: exact voxel/depth geometry, stereo consistency, labels, patches and determinism."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest

from stereovoxel_ros.core.geometry.grid_spec import JACKAL_WIDE_GRID
from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels
from stereovoxel_ros.offline.data.dataset_format import read_manifest, read_split
from stereovoxel_ros.offline.data.synth_config import CLASS_IDS, SynthConfig
from stereovoxel_ros.offline.data.synth_dataset import write_synthetic_dataset
from stereovoxel_ros.offline.data.synth_meshes import make_box
from stereovoxel_ros.offline.data.synth_sequences import generate_frames
from stereovoxel_ros.offline.data.synth_world import SynthWorld, base_pose_matrix

# fx·B = 10 px·m: a fronto-parallel face at 5 m has a disparity of exactly 2 px
CAM = StereoCameraModel(160, 90, fx=100.0, fy=100.0, cx=79.5, cy=44.5, baseline=0.1)
SMALL = SynthConfig.for_size(160, 90, sequence_length=4, num_obstacles=(4, 6))


def _box_world(robot_xy=(0.0, 0.0), yaw=0.0, **config) -> tuple[SynthWorld, np.ndarray]:
    """A lone box whose front face is 4.1 m ahead of the left camera, x in [-0.9, 0.9], y in [-0.4, 0.2]."""
    cfg = SynthConfig(camera=CAM, ground=False, noise_std=0.0, **config)
    # robot frame: x forward, y left, z up; camera 0.4 m up => optical y = 0.4 - z
    c, s = math.cos(yaw), math.sin(yaw)
    centre_base = np.array([4.6, 0.0])
    offset = np.array([c * centre_base[0] - s * centre_base[1], s * centre_base[0] + c * centre_base[1]])
    centre = np.asarray(robot_xy) + offset
    box = make_box((1.0, 1.8, 0.6), (centre[0], centre[1], 0.2), yaw=yaw)
    return SynthWorld(cfg, [box]), base_pose_matrix(robot_xy[0], robot_xy[1], yaw)


@pytest.mark.parametrize("robot", [((0.0, 0.0), 0.0), ((3.0, -2.0), 2.2)])
def test_box_lands_in_exactly_the_expected_voxels(robot):
    world, pose = _box_world(*robot)
    frame = world.render(pose)
    grid = JACKAL_WIDE_GRID  # origin (-6.4, -2.5, 0), 0.2 m voxels; box edges sit mid-voxel
    expected = np.zeros(grid.shape, bool)
    expected[27:37, 10:14, 20] = True  # x -0.9..0.9 -> 27..36, y -0.4..0.2 -> 10..13, z 4.1 -> 20
    occupied = {tuple(i) for i in np.argwhere(frame.voxels)}
    assert occupied == {tuple(i) for i in np.argwhere(expected)}
    centre = frame.depth[44:46, 79:81]
    np.testing.assert_allclose(centre, 4.1, atol=1e-4)
    assert frame.depth[0, 0] == 0.0  # sky: no hit, no depth
    # the 2D box label covers the projection of the front face
    assert frame.classes.tolist() == [CLASS_IDS["box"]]
    x0, y0, x1, y1 = frame.boxes[0]
    exp_x0 = CAM.cx + CAM.fx * -0.9 / 4.1
    exp_y0 = CAM.cy + CAM.fy * -0.4 / 4.1
    assert abs(x0 - math.ceil(exp_x0 - 0.5)) <= 1 and abs(y0 - math.ceil(exp_y0 - 0.5)) <= 1
    assert abs(x1 - (2 * CAM.cx + 1 - x0)) <= 1 and y1 > CAM.cy + CAM.fy * 0.2 / 4.1 - 1


def test_disparity_is_fb_over_z_and_the_right_view_agrees():
    # a fronto-parallel box at 5 m: disparity fB/Z = 2 px exactly
    cfg = SynthConfig(camera=CAM, ground=False, noise_std=0.0, shadows=False)
    box = make_box((0.5, 3.0, 1.2), (5.25, 0.0, 0.0), texture="fractal", color_a=(0.1, 0.1, 0.1),
                   color_b=(0.9, 0.9, 0.9), texture_scale=0.5)  # fmt: skip
    frame = SynthWorld(cfg, [box]).render(base_pose_matrix(0.0, 0.0, 0.0))
    valid = frame.depth > 0
    np.testing.assert_allclose(frame.disparity[valid], CAM.fx * CAM.baseline / frame.depth[valid], rtol=1e-6)
    assert np.all(frame.disparity[~valid] == 0)
    np.testing.assert_allclose(frame.disparity[valid], 2.0, atol=1e-3)
    # the right image is the left one shifted by the disparity: right[v, u - 2] == left[v, u]
    rows, cols = np.nonzero(valid)
    inner = (
        (cols >= cols.min() + 4)
        & (cols <= cols.max() - 4)
        & (rows >= rows.min() + 2)
        & (rows <= rows.max() - 2)
    )
    r, c = rows[inner], cols[inner]
    left = frame.left[r, c].astype(float)
    match = np.abs(left - frame.right[r, c - 2]).mean()
    mismatch = np.abs(left - frame.right[r, c]).mean()
    assert match < 1.0 and mismatch > max(5 * match, 3.0), (match, mismatch)


def test_dense_depth_voxels_and_labels_on_a_random_world():
    name, frame = next(generate_frames(SMALL, seed=5, num_frames=1))
    assert name.startswith("synth_s5_")
    assert frame.left.shape == (90, 160, 3) and frame.left.dtype == np.uint8
    np.testing.assert_array_equal(frame.voxels, depth_to_voxels(frame.depth, SMALL.camera, SMALL.grid))
    # the ground is seen: voxels in the slab holding y = +0.4 (optical, 0.4 m below the camera)
    ground_slab = int((0.4 - SMALL.grid.origin[1]) // SMALL.grid.voxel_size)
    assert frame.voxels[:, ground_slab - 1 : ground_slab + 1].any()
    assert frame.boxes.shape == (len(frame.classes), 4) and frame.boxes.dtype == np.float32
    assert np.all(frame.boxes[:, 2] > frame.boxes[:, 0]) and np.all(frame.boxes[:, 3] > frame.boxes[:, 1])
    for box, cls in zip(frame.boxes.astype(int), frame.classes):
        ids = frame.object_ids[box[1] : box[3], box[0] : box[2]]
        assert (ids >= 0).any() and 0 <= cls < 3
    # the left and right images differ (parallax), but not wildly
    diff = np.abs(frame.left.astype(int) - frame.right.astype(int)).mean()
    assert 0.5 < diff < 60


def test_sequence_moves_smoothly_and_is_deterministic():
    frames = [f for _, f in generate_frames(SMALL, seed=11, num_frames=4)]
    again = [f for _, f in generate_frames(SMALL, seed=11, num_frames=4)]
    other = next(generate_frames(SMALL, seed=12, num_frames=1))[1]
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.left, b.left)
        np.testing.assert_array_equal(a.right, b.right)
        np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(frames[0].left, other.left)
    stamps = np.diff([f.stamp_ns for f in frames])
    assert np.all(stamps == 100_000_000)  # 10 Hz
    steps = [np.linalg.norm(b.pose[:2, 3] - a.pose[:2, 3]) for a, b in itertools.pairwise(frames)]
    speeds = [f.twist[0] for f in frames]
    assert all(0.03 < s < 0.2 for s in steps)  # 0.3..2 m/s at 10 Hz
    np.testing.assert_allclose(steps, np.array(speeds[:-1]) * 0.1, rtol=0.15)


def test_patch_is_rendered_onto_the_object():
    world, pose = _box_world()
    patch = np.zeros((8, 8, 3), np.uint8)
    patch[:, :4] = (255, 0, 0)  # left half red, right half blue
    patch[:, 4:] = (0, 0, 255)
    world.add_patch(0, patch, center=(4.1, 0.0, 0.5), normal=(-1.0, 0.0, 0.0), size=(1.0, 0.4))
    frame = world.render(pose)
    assert frame.patch_uv is not None and frame.shading is not None
    on = frame.patch_uv[..., 0] >= 0
    rows, cols = np.nonzero(on)
    # 1.0 m x 0.4 m at 4.1 m -> about 24 x 10 px centred on the image centre column
    assert 22 <= cols.max() - cols.min() + 1 <= 26 and 8 <= rows.max() - rows.min() + 1 <= 12
    u = frame.patch_uv[rows, cols, 0]
    rgb = frame.left[rows, cols].astype(float)
    lit = 255.0 * frame.shading[rows, cols]  # pixel = albedo * shading (noise is off)
    red, blue = u < 0.45, u > 0.55  # red on the viewer's left, blue on the right
    assert red.sum() > 50 and blue.sum() > 50
    np.testing.assert_allclose(rgb[red, 0], lit[red], atol=1.0)
    np.testing.assert_allclose(rgb[blue, 2], lit[blue], atol=1.0)
    assert rgb[red, 2].max() <= 1 and rgb[blue, 0].max() <= 1


def test_dataset_is_byte_identical_for_a_seed(tmp_path):
    write_synthetic_dataset(tmp_path / "a", SMALL, seed=2, num_frames=3, progress=False)
    write_synthetic_dataset(tmp_path / "b", SMALL, seed=2, num_frames=3, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 + 3 + 1
    for rel in files:
        digest_a = hashlib.sha256((tmp_path / "a" / rel).read_bytes()).hexdigest()
        assert digest_a == hashlib.sha256((tmp_path / "b" / rel).read_bytes()).hexdigest(), rel
    manifest = read_manifest(tmp_path / "a")
    assert manifest.num_samples == 3 and manifest.extra["class_names"] == ["person", "cone", "box"]
    assert sum(len(read_split(tmp_path / "a", s)) for s in ("train", "val", "test")) == 3


@pytest.mark.parametrize("size", [(320, 180), (100, 75)])
def test_any_image_size_renders(size):
    """Texture lookups are laid out 1024 wide for cv2.remap; sizes whose pixel count is not a multiple work."""
    world = SynthWorld.random(SynthConfig.for_size(*size), seed=0)
    frame = world.render(np.eye(4))
    assert frame.left.shape == (size[1], size[0], 3) and frame.right.shape == frame.left.shape
    assert frame.left.std() > 5  # textured, not a constant fill
