"""A synthetic Jackal world ray-cast with open3d: stereo pairs with exact depth, voxel, box and odometry truth.

World frame ``odom``: x forward at the start, y left, z up, ground at z = 0. The robot's ``base_link`` sits on
the ground; the left optical centre is ``camera_height`` above it (``voxel_grid.optical_to_base_transform``),
the right one ``baseline`` further along the optical x axis. Rays are cast with directions whose optical z
component is 1, so the hit distance *is* the depth along the optical axis.

Its configuration is in ``synth_config``, meshes in ``synth_meshes``, textures and lighting in
``synth_materials``, random content in ``synth_layout`` and driven sequences in ``synth_sequences``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stereovoxel_ros.core.geometry.stereo_camera import StereoCameraModel
from stereovoxel_ros.core.geometry.voxel_grid import optical_to_base_transform
from stereovoxel_ros.core.occupancy.occupancy_scoring import LABEL_CLASS_STRIDE, OBJECT_CLASSES
from stereovoxel_ros.offline.data.dataset_format import StereoSample
from stereovoxel_ros.offline.data.synth_config import SynthConfig, SynthWorldError
from stereovoxel_ros.offline.data.synth_layout import ground_plane, random_obstacles
from stereovoxel_ros.offline.data.synth_materials import TEXTURE_NAMES, Lighting, sample_texture
from stereovoxel_ros.offline.data.synth_meshes import SceneObject


@dataclass
class TexturePatch:
    """An RGB image glued flat onto one object's surface (e.g. an adversarial patch).

    ``center`` and the in-plane unit axes ``u_axis`` (image columns) and ``v_axis`` (image rows) are in the
    object's frame [m]; the patch covers ``size`` = (width, height) [m] and only surface points within
    ``thickness`` [m] of its plane.
    """

    object_index: int
    image: np.ndarray  # (h, w, 3) uint8 RGB
    center: tuple[float, float, float]
    u_axis: tuple[float, float, float]
    v_axis: tuple[float, float, float]
    size: tuple[float, float]
    thickness: float = 0.01


@dataclass
class SynthFrame:
    """One rendered stereo frame with its ground truth."""

    left: np.ndarray  # (H, W, 3) uint8 RGB
    right: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 [m] along the left optical axis, 0 where nothing is hit
    voxels: np.ndarray  # (nx, ny, nz) bool, grid of the config
    camera: StereoCameraModel
    stamp_ns: int  # [ns]
    pose: np.ndarray  # (4, 4) odom <- base_link
    twist: np.ndarray  # (6,) [vx, vy, vz, wx, wy, wz] in base_link [m/s, rad/s]
    boxes: np.ndarray  # (N, 4) float32 [x0, y0, x1, y1] px (pixel edges: x1 = last column + 1)
    classes: np.ndarray  # (N,) int64 index into DETECTION_CLASSES
    object_ids: np.ndarray  # (H, W) int32 left-view object index, -1 = sky (0 is the ground when present)
    patch_uv: np.ndarray | None = None  # (H, W, 2) float32 patch coordinates in [0, 1], -1 off-patch (left)
    shading: np.ndarray | None = (
        None  # (H, W) float32 light factor of the left view (pixel = albedo · shading)
    )
    labels: np.ndarray | None = (
        None  # (H, W) uint16 left-view object labels (occupancy_scoring.decode_labels)
    )

    @property
    def disparity(self) -> np.ndarray:
        """Left disparity [px] = f·B / depth, 0 where there is no depth."""
        return self.camera.depth_to_disparity(self.depth)

    def to_sample(self, sequence: str = ""):
        """This frame as a dataset ``StereoSample`` (boxes, classes, pose and twist in ``extras``)."""

        return StereoSample(
            left=self.left,
            right=self.right,
            depth=self.depth,
            voxels=self.voxels,
            camera=self.camera,
            stamp_ns=self.stamp_ns,
            sequence=sequence,
            extras={
                "boxes": self.boxes.astype(np.float32),
                "classes": self.classes.astype(np.int64),
                "pose": self.pose.astype(np.float64),
                "twist": self.twist.astype(np.float64),
                **({} if self.labels is None else {"labels": self.labels.astype(np.uint16)}),
            },
        )


def base_pose_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 odom <- base_link for a robot on flat ground at (x, y) [m] heading ``yaw`` [rad]."""
    c, s = math.cos(yaw), math.sin(yaw)
    t = np.eye(4)
    t[:2, :2] = [[c, -s], [s, c]]
    t[:2, 3] = (x, y)
    return t


class SynthWorld:
    """A static scene (ground plane plus obstacles) that renders stereo frames from any robot pose."""

    def __init__(
        self,
        config: SynthConfig,
        objects: list[SceneObject],
        lighting: Lighting | None = None,
        ground_object: SceneObject | None = None,
    ) -> None:
        import open3d as o3d

        self.config = config
        self.lighting = lighting or Lighting()
        self.objects: list[SceneObject] = []
        if config.ground:
            self.objects.append(ground_object or ground_plane())
        self.objects.extend(objects)
        if len(self.objects) >= LABEL_CLASS_STRIDE:
            raise SynthWorldError(
                f"{len(self.objects)} objects: label images hold at most {LABEL_CLASS_STRIDE - 1}"
            )
        self.patches: list[TexturePatch] = []
        self._scene = o3d.t.geometry.RaycastingScene()
        for i, obj in enumerate(self.objects):
            if obj.texture not in TEXTURE_NAMES:
                raise SynthWorldError(f"object {i} ({obj.kind}) has unknown texture {obj.texture!r}")
            if not obj.texture_scale > 0:
                raise SynthWorldError(
                    f"object {i} ({obj.kind}) texture_scale must be positive, got {obj.texture_scale}"
                )
            gid = self._scene.add_triangles(
                o3d.core.Tensor(obj.world_vertices().astype(np.float32)),
                o3d.core.Tensor(np.asarray(obj.triangles, np.uint32)),
            )
            if gid != i:
                raise SynthWorldError(f"open3d gave geometry id {gid} to object {i}")
        self._invalid_id = o3d.t.geometry.RaycastingScene.INVALID_ID
        # per-object tables for vectorised shading; one extra last row stands for the sky
        rows = self.objects
        self._obj_x = np.array([o.position[0] for o in rows] + [0.0], np.float32)
        self._obj_y = np.array([o.position[1] for o in rows] + [0.0], np.float32)
        self._obj_z = np.array([o.position[2] for o in rows] + [0.0], np.float32)
        self._obj_cos = np.array([math.cos(o.yaw) for o in rows] + [1.0], np.float32)
        self._obj_sin = np.array([math.sin(o.yaw) for o in rows] + [0.0], np.float32)
        self._obj_tex = np.array([TEXTURE_NAMES.index(o.texture) for o in rows] + [0], np.intp)
        self._obj_inv_scale = np.array([1.0 / o.texture_scale for o in rows] + [1.0], np.float32)
        color_a = np.array([o.color_a for o in rows] + [(0.0, 0.0, 0.0)], np.float32)
        color_b = np.array([o.color_b for o in rows] + [(0.0, 0.0, 0.0)], np.float32)
        self._obj_a = [np.ascontiguousarray(color_a[:, k]) for k in range(3)]
        self._obj_ab = [np.ascontiguousarray(color_b[:, k] - color_a[:, k]) for k in range(3)]
        self._obj_label = np.array([o.label for o in rows], np.int64)
        # object index -> label image value ((class + 1) * stride + index; 0 for the ground and the sky)
        self._label_lut = np.array(
            [
                (OBJECT_CLASSES.index(o.kind) + 1) * LABEL_CLASS_STRIDE + i if o.kind in OBJECT_CLASSES else 0
                for i, o in enumerate(rows)
            ]
            + [0],
            np.uint16,
        )
        cam = config.camera
        v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float32)
        self._dirs_optical = np.stack(
            [((u - cam.cx) / cam.fx).ravel(), ((v - cam.cy) / cam.fy).ravel(), np.ones(u.size, np.float32)]
        )  # (3, n): optical z component 1
        self._pixel_u, self._pixel_v = u, v  # (H, W) float32 pixel coordinates
        self._inv_dir_norm = (1.0 / np.linalg.norm(self._dirs_optical, axis=0)).astype(np.float32)
        self._noise_buffer: np.ndarray | None = None
        self._camera_on_base = optical_to_base_transform(config.camera_height, config.camera_pitch)

    # --------------------------------------------------------------------------------- construction
    @classmethod
    def random(
        cls, config: SynthConfig, seed: int | tuple[int, ...], path_xy: np.ndarray | None = None
    ) -> SynthWorld:
        """A random world; obstacles keep ``config.clearance`` from the (N, 2) path [m] the robot will drive."""
        rng = np.random.default_rng(seed)
        if path_xy is None:
            path_xy = np.stack([np.linspace(0, 3, 31), np.zeros(31)], 1)
        lighting = Lighting.random(rng)
        objects = random_obstacles(config, rng, path_xy)
        ground = ground_plane(rng)
        return cls(config, objects, lighting, ground)

    def add_patch(
        self,
        object_index: int,
        image: np.ndarray,
        center: tuple[float, float, float],
        normal: tuple[float, float, float],
        size: tuple[float, float],
        up: tuple[float, float, float] = (0.0, 0.0, 1.0),
    ) -> TexturePatch:
        """Glue ``image`` onto object ``object_index`` at world point ``center`` facing world ``normal``.

        Image rows run against ``up``; ``size`` = (width, height) [m]. Returns the patch (object frame).
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise SynthWorldError(f"patch image must be (h, w, 3) uint8, got {img.shape} {img.dtype}")
        if not 0 <= object_index < len(self.objects):
            raise SynthWorldError(
                f"patch object index {object_index} is out of range 0..{len(self.objects) - 1}"
            )
        obj = self.objects[object_index]
        n = np.asarray(normal, float)
        n /= np.linalg.norm(n)
        up_v = np.asarray(up, float)
        v_axis = -(up_v - n * (up_v @ n))
        if np.linalg.norm(v_axis) < 1e-6:
            raise SynthWorldError("patch normal is parallel to its up vector")
        v_axis /= np.linalg.norm(v_axis)
        u_axis = np.cross(v_axis, n)  # image x to the right when looking at the patch
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        to_local = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        patch = TexturePatch(
            object_index,
            img,
            tuple(to_local @ (np.asarray(center, float) - np.asarray(obj.position))),
            tuple(to_local @ u_axis),
            tuple(to_local @ v_axis),
            (float(size[0]), float(size[1])),
        )
        self.patches.append(patch)
        return patch

    # -------------------------------------------------------------------------------------- render
    def camera_pose(self, base_pose: np.ndarray) -> np.ndarray:
        """4x4 odom <- left optical frame for a robot pose odom <- base_link."""
        return np.asarray(base_pose, float) @ self._camera_on_base

    def render(
        self,
        base_pose: np.ndarray,
        rng: np.random.Generator | None = None,
        stamp_ns: int = 0,
        twist: np.ndarray | None = None,
    ) -> SynthFrame:
        """Render the stereo pair seen from robot pose ``base_pose`` (4x4 odom <- base_link).

        Both views go through one ``cast_rays`` call; shading runs on whole images, one vector component at
        a time (misses index a sky row of the per-object tables), which numpy does far faster than (N, 3)
        matrix products or per-pixel compaction.
        """
        import open3d as o3d

        cfg, cam, light = self.config, self.config.camera, self.lighting
        rng = rng if rng is not None else np.random.default_rng(0)
        h, w = cam.height, cam.width
        n_px = h * w
        f32 = np.float32
        t_opt = self.camera_pose(base_pose).astype(f32)
        rot = t_opt[:3, :3]
        origins = np.stack([t_opt[:3, 3], t_opt[:3, 3] + rot[:, 0] * f32(cam.baseline)])  # (2, 3)
        do = self._dirs_optical
        dirs = [
            do[0] * rot[k, 0] + do[1] * rot[k, 1] + do[2] * rot[k, 2] for k in range(3)
        ]  # world, (n,) each
        rays = np.empty((2, n_px, 6), f32)
        for k in range(3):
            rays[:, :, k] = origins[:, k, None]
            rays[:, :, 3 + k] = dirs[k]
        hits = self._scene.cast_rays(o3d.core.Tensor(rays.reshape(-1, 6)))
        gid = hits["geometry_ids"].numpy().reshape(2, n_px)
        hit = gid != self._invalid_id
        obj = np.where(hit, gid, len(self.objects)).astype(np.intp)  # the last table row is the sky
        depth2 = np.where(hit, hits["t_hit"].numpy().reshape(2, n_px), f32(0.0))  # t_hit is the depth
        normals = hits["primitive_normals"].numpy().reshape(2, n_px, 3)
        p = [origins[:, k, None] + depth2 * dirs[k] for k in range(3)]  # world hit points, (2, n) each
        facing = normals[..., 0] * dirs[0] + normals[..., 1] * dirs[1] + normals[..., 2] * dirs[2]
        flip = np.where(facing > 0, f32(-1.0), f32(1.0))  # make normals face the camera
        nrm = [normals[..., k] * flip for k in range(3)]

        sun = np.asarray(light.sun_direction, f32)
        sun /= np.linalg.norm(sun)
        lambert = np.maximum(nrm[0] * sun[0] + nrm[1] * sun[1] + nrm[2] * sun[2], f32(0.0))
        lambert *= hit
        if cfg.shadows:  # one occlusion ray towards the sun from every lit pixel
            lit = np.flatnonzero(lambert)
            shadow_rays = np.empty((len(lit), 6), f32)
            for k in range(3):
                shadow_rays[:, k] = p[k].reshape(-1)[lit] + nrm[k].reshape(-1)[lit] * f32(2e-3)
                shadow_rays[:, 3 + k] = sun[k]
            blocked = self._scene.test_occlusions(o3d.core.Tensor(shadow_rays)).numpy()
            lambert.reshape(-1)[lit[blocked]] = 0.0

        # object-frame coordinates for the solid textures (objects only turn about z)
        c, s = self._obj_cos[obj], self._obj_sin[obj]
        rx = p[0] - self._obj_x[obj]
        ry = p[1] - self._obj_y[obj]
        lx = c * rx + s * ry
        ly = c * ry - s * rx
        lz = p[2] - self._obj_z[obj]
        nx = np.abs(c * nrm[0] + s * nrm[1])
        ny = np.abs(c * nrm[1] - s * nrm[0])
        nz = np.abs(nrm[2])
        # tri-planar: project onto the plane across the dominant normal axis; texture rows run down (-z)
        along_x = (nx >= ny) & (nx >= nz)
        along_z = ~along_x & (nz >= ny)
        inv_scale = self._obj_inv_scale[obj]
        tu = np.where(along_x, ly, lx) * inv_scale
        tv = np.where(along_z, ly, -lz) * inv_scale
        cos_view = np.abs(facing) * self._inv_dir_norm
        footprint = depth2 * (inv_scale / f32(cam.fx)) / np.maximum(cos_view, f32(0.2))
        value = sample_texture(self._obj_tex[obj], tu, tv, footprint)

        shade = (f32(light.ambient) + f32(light.sun_intensity) * lambert) * f32(light.exposure * 255.0)
        gains = (1.0 + rng.normal(0.0, 0.01, size=2)).astype(f32)
        shade *= gains[:, None]
        # sky where nothing is hit: horizon-to-zenith gradient over the ray elevation (albedo there is 0)
        elevation = np.sqrt(np.clip(dirs[2] * self._inv_dir_norm, 0.0, 1.0))
        sky_scale = np.where(hit, f32(0.0), gains[:, None] * f32(light.exposure * 255.0))
        horizon, zenith = light.sky_horizon, light.sky_zenith
        img = np.empty((2, n_px, 3), f32)
        for k in range(3):
            albedo = self._obj_a[k][obj] + self._obj_ab[k][obj] * value
            sky = f32(horizon[k]) + f32(zenith[k] - horizon[k]) * elevation
            img[..., k] = albedo * shade + sky * sky_scale

        patch_uv = None
        if self.patches:
            patch_uv = self._apply_patches(img, obj, lx, ly, lz, shade)
        if cfg.noise_std > 0:
            img += self._noise(rng, img.size).reshape(img.shape)
        img += f32(0.5)
        images = np.clip(img, 0, 255, out=img).astype(np.uint8).reshape(2, h, w, 3)

        depth = depth2[0].reshape(h, w)
        object_ids = np.where(hit[0], gid[0], -1).astype(np.int32).reshape(h, w)
        boxes, classes = self._boxes(object_ids)
        return SynthFrame(
            left=images[0],
            right=images[1],
            depth=depth,
            voxels=self._surface_voxels(depth),
            camera=cam,
            stamp_ns=int(stamp_ns),
            pose=np.asarray(base_pose, np.float64),
            twist=np.zeros(6) if twist is None else np.asarray(twist, np.float64),
            boxes=boxes,
            classes=classes,
            object_ids=object_ids,
            patch_uv=None if patch_uv is None else patch_uv[0].reshape(h, w, 2),
            shading=None if patch_uv is None else shade[0].reshape(h, w) / f32(255.0),
            labels=self._label_lut[object_ids],  # -1 (sky) indexes the last entry, 0
        )

    def _surface_voxels(self, depth: np.ndarray) -> np.ndarray:
        """``voxel_grid.depth_to_voxels(depth, camera, grid)`` bit for bit, without its per-call pixel grid
        and ``np.add.at`` (the same float32 back-projection and float64 binning, so bags agree exactly)."""
        cam, grid = self.config.camera, self.config.grid
        valid = depth > 0  # the renderer's depth is finite, 0 where nothing is hit
        z = depth[valid]
        x = (self._pixel_u[valid] - cam.cx) * z / cam.fx
        y = (self._pixel_v[valid] - cam.cy) * z / cam.fy
        index = np.zeros(z.shape, np.int64)
        inside = np.ones(z.shape, bool)
        for axis, coord in enumerate((x, y, z)):
            rel = (coord.astype(np.float64) - grid.origin[axis]) / grid.voxel_size
            i = np.floor(np.clip(rel, -1.0, np.iinfo(np.int32).max)).astype(np.int64)
            inside &= (i >= 0) & (i < grid.shape[axis])
            index = index * grid.shape[axis] + i
        occupied = np.zeros(grid.num_voxels, bool)
        occupied[index[inside]] = True
        return occupied.reshape(grid.shape)

    def _apply_patches(self, img, obj, lx, ly, lz, shade) -> np.ndarray:
        """Overwrite shaded patch pixels in ``img`` (2, n, 3); returns patch coordinates (2, n, 2), -1 off-patch."""
        f32 = np.float32
        patch_uv = np.full((*obj.shape, 2), -1.0, f32)
        for patch in self.patches:
            on = np.nonzero(obj == patch.object_index)
            q = np.stack([lx[on], ly[on], lz[on]], axis=-1) - np.asarray(patch.center, f32)
            pu = q @ np.asarray(patch.u_axis, f32) / f32(patch.size[0]) + f32(0.5)
            pv = q @ np.asarray(patch.v_axis, f32) / f32(patch.size[1]) + f32(0.5)
            off_plane = np.abs(q @ np.cross(patch.u_axis, patch.v_axis).astype(f32))
            inside = (pu >= 0) & (pu < 1) & (pv >= 0) & (pv < 1) & (off_plane <= patch.thickness)
            sel = tuple(i[inside] for i in on)
            ph, pw = patch.image.shape[:2]
            cols = np.minimum((pu[inside] * pw).astype(np.intp), pw - 1)
            rows = np.minimum((pv[inside] * ph).astype(np.intp), ph - 1)
            albedo = patch.image[rows, cols].astype(f32) / f32(255.0)
            img[sel] = albedo * shade[sel][:, None]
            patch_uv[sel] = np.stack([pu[inside], pv[inside]], axis=-1)
        return patch_uv

    def _noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Gaussian sensor noise [DN]: a random window into a fixed buffer (drawing fresh normals is slow)."""
        if self._noise_buffer is None or self._noise_buffer.size < 2 * size:
            buffer_rng = np.random.default_rng(7)
            self._noise_buffer = buffer_rng.standard_normal(2 * size, dtype=np.float32) * np.float32(
                self.config.noise_std
            )
        start = int(rng.integers(0, self._noise_buffer.size - size))
        return self._noise_buffer[start : start + size]

    def _boxes(self, object_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """2D boxes [px] and class ids of the labelled objects with enough visible pixels."""
        counts = np.bincount(object_ids.reshape(-1) + 1, minlength=len(self.objects) + 1)[1:]
        boxes, classes = [], []
        for k in np.flatnonzero((self._obj_label >= 0) & (counts >= self.config.min_box_pixels)):
            mask = object_ids == k
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            classes.append(self._obj_label[k])
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)
