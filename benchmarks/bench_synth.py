"""Synthetic stereo generation speed at 640x360: frames/s of the renderer against a naive baseline.

Run: ``.venv/bin/python -m benchmarks.bench_synth [--frames N] [--width W --height H]``.
The baseline renders the same images the textbook way: one ray cast per view, shading on the compacted
hit pixels with (N, 3) matrix products, bilinear texturing by numpy gathers, ``voxel_grid.depth_to_voxels``.
The product renderer casts both views in one call, shades whole images one vector component at a time,
textures through ``cv2.remap`` on a padded mip atlas and bins voxels without ``np.add.at``. Both are checked
to produce the same depth and (noise-free) images.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

import numpy as np

from stereovoxel_ros.core.geometry.voxel_grid import depth_to_voxels
from stereovoxel_ros.offline.data.synth_config import SynthConfig
from stereovoxel_ros.offline.data.synth_materials import texture_bank
from stereovoxel_ros.offline.data.synth_sequences import random_trajectory
from stereovoxel_ros.offline.data.synth_world import SynthWorld, base_pose_matrix


def sample_texture_gather(tex: np.ndarray, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Baseline texture lookup: four numpy gathers per pixel from the flat mip bank (bilinear)."""
    flat, offsets, sizes = texture_bank()
    level = np.log2(np.maximum(footprint * np.float32(sizes[0]), np.float32(1.0)))
    level = np.minimum(level, np.float32(len(sizes) - 1)).astype(np.intp)
    s_int = sizes[level]
    s = s_int.astype(np.float32)
    mask = s_int - 1
    base = offsets[tex, level]
    fu, fv = u * s - np.float32(0.5), v * s - np.float32(0.5)
    iu_f, iv_f = np.floor(fu), np.floor(fv)
    au, av = fu - iu_f, fv - iv_f
    iu, iv = iu_f.astype(np.intp), iv_f.astype(np.intp)
    iu0, iu1 = iu & mask, (iu + 1) & mask
    r0, r1 = base + (iv & mask) * s_int, base + ((iv + 1) & mask) * s_int
    top = flat[r0 + iu0] + (flat[r0 + iu1] - flat[r0 + iu0]) * au
    bottom = flat[r1 + iu0] + (flat[r1 + iu1] - flat[r1 + iu0]) * au
    return top + (bottom - top) * av


def render_naive(world: SynthWorld, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: per-view ``cast_rays``, per-hit compaction, (N, 3) products, gather texturing and the
    shared ``depth_to_voxels``; returns (images, depth)."""
    import open3d as o3d

    cam, light = world.config.camera, world.lighting
    t_opt = world.camera_pose(pose)
    rot = t_opt[:3, :3].astype(np.float32)
    dirs = (world._dirs_optical.T @ rot.T).astype(np.float32)
    sun = np.asarray(light.sun_direction, np.float32)
    sun /= np.linalg.norm(sun)
    images, depth = [], None
    for origin in (t_opt[:3, 3], t_opt[:3, 3] + t_opt[:3, 0] * cam.baseline):
        rays = np.concatenate([np.broadcast_to(origin.astype(np.float32), dirs.shape), dirs], axis=1)
        hits = world._scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays)))
        gid = hits["geometry_ids"].numpy()
        hit = gid != world._invalid_id
        idx = np.flatnonzero(hit)
        t = hits["t_hit"].numpy()[idx]
        d = dirs[idx]
        p = origin + t[:, None] * d
        obj = gid[idx].astype(np.intp)
        nrm = hits["primitive_normals"].numpy()[idx]
        facing = np.einsum("ij,ij->i", nrm, d)
        nrm = np.where((facing > 0)[:, None], -nrm, nrm)
        lambert = np.maximum(nrm @ sun, 0.0)
        if world.config.shadows:
            shadow = np.concatenate([p + nrm * np.float32(2e-3), np.broadcast_to(sun, p.shape)], axis=1)
            lambert[world._scene.test_occlusions(o3d.core.Tensor(shadow.astype(np.float32))).numpy()] = 0.0
        c, s = world._obj_cos[obj], world._obj_sin[obj]
        rot_obj = np.zeros((len(obj), 3, 3), np.float32)  # world -> object frame, per hit
        rot_obj[:, 0, 0], rot_obj[:, 0, 1], rot_obj[:, 1, 0], rot_obj[:, 1, 1] = c, s, -s, c
        rot_obj[:, 2, 2] = 1.0
        pos = np.stack([world._obj_x[obj], world._obj_y[obj], world._obj_z[obj]], axis=1)
        local = np.einsum("nij,nj->ni", rot_obj, p - pos)
        n_local = np.abs(np.einsum("nij,nj->ni", rot_obj, nrm))
        along_x = (n_local[:, 0] >= n_local[:, 1]) & (n_local[:, 0] >= n_local[:, 2])
        along_z = ~along_x & (n_local[:, 2] >= n_local[:, 1])
        inv_scale = world._obj_inv_scale[obj]
        tu = np.where(along_x, local[:, 1], local[:, 0]) * inv_scale
        tv = np.where(along_z, local[:, 1], -local[:, 2]) * inv_scale
        cos_view = np.abs(facing) / np.linalg.norm(d, axis=1)
        footprint = t * inv_scale / np.float32(cam.fx) / np.maximum(cos_view, np.float32(0.2))
        value = sample_texture_gather(world._obj_tex[obj], tu, tv, footprint)
        a = np.stack([world._obj_a[k][obj] for k in range(3)], axis=1)
        ab = np.stack([world._obj_ab[k][obj] for k in range(3)], axis=1)
        shade = (light.ambient + light.sun_intensity * lambert) * light.exposure * 255.0
        img = np.zeros((dirs.shape[0], 3), np.float32)
        elev = np.sqrt(np.clip(dirs[:, 2] / np.linalg.norm(dirs, axis=1), 0, 1))[:, None]
        horizon, zenith = np.asarray(light.sky_horizon), np.asarray(light.sky_zenith)
        img[~hit] = ((horizon + (zenith - horizon) * elev) * light.exposure * 255.0)[~hit]
        img[idx] = (a + ab * value[:, None]) * shade[:, None]
        images.append(np.clip(img + 0.5, 0, 255).astype(np.uint8).reshape(cam.height, cam.width, 3))
        if depth is None:
            depth = np.zeros(dirs.shape[0], np.float32)
            depth[idx] = t
            depth = depth.reshape(cam.height, cam.width)
    assert depth is not None
    depth_to_voxels(depth, cam, world.config.grid)  # the baseline also pays for its ground truth
    return np.stack(images), depth


def _rate(fn, poses) -> tuple[float, float]:
    """(frames/s of wall-clock time, CPU seconds of all threads per frame)."""
    fn(poses[0])  # warm up (first-touch allocations)
    start, cpu = time.perf_counter(), time.process_time()
    for pose in poses:
        fn(pose)
    return len(poses) / (time.perf_counter() - start), (time.process_time() - cpu) / len(poses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per measurement")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    texture_bank()
    config = SynthConfig.for_size(args.width, args.height, sequence_length=args.frames)
    rng = np.random.default_rng(args.seed)
    poses_xy, _ = random_trajectory(config, rng, args.frames)
    poses = [base_pose_matrix(*p) for p in poses_xy]
    path = np.stack([poses_xy[:, 0], poses_xy[:, 1]], 1)
    world = SynthWorld.random(config, (args.seed, 1), path_xy=path)
    quiet = SynthWorld(replace(config, noise_std=0.0), world.objects[1:], world.lighting, world.objects[0])
    quiet_rng = np.random.default_rng(0)

    # same output check (noise off; the renderer's per-view gain jitter is the only difference)
    frame = quiet.render(poses[0], rng=quiet_rng)
    naive_images, naive_depth = render_naive(quiet, poses[0])
    assert np.array_equal(frame.depth, naive_depth), "baseline and renderer disagree on depth"
    image_diff = float(np.abs(naive_images[0].astype(float) - frame.left).mean())
    assert image_diff < 3.0, f"baseline and renderer images differ by {image_diff:.2f} DN on average"

    rows = [
        ("naive: per-view cast, compacted (N,3) shading", lambda p: render_naive(world, p)),
        ("renderer (shadows, noise, voxels, boxes)", lambda p: world.render(p)),
    ]
    no_shadow = SynthWorld(
        replace(config, shadows=False), world.objects[1:], world.lighting, world.objects[0]
    )
    rows.append(("renderer without shadow rays", lambda p: no_shadow.render(p)))

    from stereovoxel_ros.offline.data.dataset_format import write_sample

    out_dir = tempfile.mkdtemp(prefix="bench_synth_")

    def render_and_write(p):
        write_sample(os.path.join(out_dir, "s.npz"), world.render(p).to_sample("bench"), config.grid)

    rows.append(("renderer + compressed .npz sample write", render_and_write))

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"synthetic stereo generation, {args.width}x{args.height}, {args.frames} frames per row, {cpus} CPUs"
    )
    print(f"(baseline == renderer: identical depth, images within {image_diff:.2f} DN mean)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(1-min load average {load:.1f}: other processes share the CPUs; CPU ms/frame counts all threads)")
    print(f"{'method':<48} {'frames/s':>9} {'ms/frame':>9} {'CPU ms/fr':>10} {'vs naive':>9}")
    base = None
    for name, fn in rows:
        fps, cpu_s = _rate(fn, poses)
        base = base or fps
        print(f"{name:<48} {fps:9.2f} {1000 / fps:9.1f} {1000 * cpu_s:10.1f} {fps / base:8.2f}x")


if __name__ == "__main__":
    main()
