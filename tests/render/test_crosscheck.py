"""Cross-check of the rasterizer against an independent ray caster (trimesh + Embree) on the infant head.

Issue 4's bar: mask IoU >= 0.995 and median depth difference < 0.05 mm, on cameras the stage samples;
the tests also hold the much tighter agreement actually reached (IoU 1, depth within 10 micrometres).
"""

import numpy as np
import pytest
import torch

from synth.render.camera import sample_cameras
from synth.render.config import RasterBackend, RenderConfig
from synth.render.raster import get_rasterizer
from synth.seeding import Stage, numpy_rng
from tests.render._scenes import head_center


def embree_depth(
    verts: np.ndarray, faces: np.ndarray, k: np.ndarray, r: np.ndarray, t: np.ndarray, size: int
):
    """(size, size) camera-frame z of the first hit of each pixel-centre ray (0 = miss), via Embree."""
    import trimesh

    assert trimesh.ray.has_embree, "embreex is a test dependency"
    mesh = trimesh.Trimesh(verts.astype(np.float64), faces, process=False)
    c = np.arange(size) + 0.5
    u, v = np.meshgrid(c, c, indexing="xy")
    d_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d_world = d_cam @ r  # R^T d
    eye = -r.T @ t
    loc, ray_idx, _ = mesh.ray.intersects_location(
        np.repeat(eye[None], len(d_world), 0), d_world, multiple_hits=False
    )
    depth = np.zeros(size * size)
    depth[ray_idx] = (loc - eye) @ r[2]  # camera z = third row of R . (x - eye)
    return depth.reshape(size, size)


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_rasterizer_matches_embree_on_the_anny_head(anny_head, backend) -> None:
    verts, faces = anny_head
    size = 256 if backend == "warp" else 96  # the torch reference is slow
    cfg = RenderConfig(image_size=size, device="cpu", yaw_deg=(-60.0, 60.0))
    indices = (0, 1, 2) if backend == "warp" else (0,)
    cams = sample_cameras(cfg, [numpy_rng(0, i, Stage.CAMERA) for i in indices], head_center(verts))
    v = torch.from_numpy(verts)[None].expand(len(indices), -1, -1)
    verts_cam = cams.world_to_camera(v)
    frags = get_rasterizer(RasterBackend(backend), torch.device("cpu")).rasterize(
        verts_cam, torch.from_numpy(faces), cams.intrinsics(), size, size
    )
    for i in range(len(indices)):
        ref = embree_depth(verts, faces, cams.K[i].numpy(), cams.R[i].numpy(), cams.t[i].numpy(), size)
        ours = frags.zbuf[i].numpy().astype(np.float64)
        a, b = ours > 0, ref > 0
        iou = (a & b).sum() / (a | b).sum()
        assert iou >= 0.995, iou  # the bar; measured: 1.0 (no pixel differs at 256 and 512 px)
        diff = np.abs(ours[a & b] - ref[a & b])
        assert np.median(diff) < 0.05e-3, np.median(diff)  # the bar; measured ~1e-8 m
        assert iou >= 0.999 and np.quantile(diff, 0.99) < 1e-6 and diff.max() < 1e-5  # what we achieve
