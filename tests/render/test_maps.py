"""The map set: normals and shading on analytic shapes, reprojection with the stored camera, rigid motion,
landmark visibility, and the on-disk encoders."""

import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from synth.render.camera import Cameras, Lights, orbit_pose
from synth.render.config import RenderConfig
from synth.render.maps import (
    depth_to_png16_mm,
    normals_to_png8,
    png8_to_normals,
    png16_mm_to_depth,
    render_maps,
)
from tests.render._scenes import camera, cube, head_center, headlight, icosphere, look_at


def _cfg(size: int, **kw) -> RenderConfig:
    return RenderConfig(image_size=size, device="cpu", **kw)


def test_cube_normals_and_lambert_shading_are_exact() -> None:
    size = 64
    v, f = cube()
    r, t = look_at(eye=(1.6, -2.0, 1.3), target=(0.0, 0.0, 0.0))
    lights = Lights(
        torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64), torch.tensor([0.25], dtype=torch.float64)
    )
    out = render_maps(
        torch.tensor(v[None]).float(), torch.from_numpy(f), camera(size, 40.0, r, t), lights, None, _cfg(size)
    )
    mask = out["mask"][0].numpy()
    normals = out["normals"][0].numpy()
    side_normals = np.concatenate([np.eye(3)[a][None] * s for a in range(3) for s in (-1, 1)]) @ r.T  # camera
    # each covered pixel's normal is one of the three visible sides' normals, exactly
    dots = normals[mask] @ side_normals.T  # (M, 6)
    assert np.abs(dots.max(-1) - 1.0).max() < 1e-6
    visible = (side_normals @ -(r @ np.zeros(3) + t)) > 0  # sides facing the camera
    assert visible.sum() == 3 and set(dots.argmax(-1)) <= set(np.flatnonzero(visible))
    # Lambert under a light at the camera: 255 * (0.25 + 0.75 * n . (0, 0, -1))
    expected = np.rint(255.0 * (0.25 + 0.75 * np.clip(-normals[mask][:, 2], 0, None)))
    np.testing.assert_array_equal(out["shaded"][0].numpy()[mask], expected)
    assert (out["shaded"][0].numpy()[~mask] == 0).all() and (normals[~mask] == 0).all()
    np.testing.assert_array_equal(out["canny"][0].numpy(), cv2.Canny(out["shaded"][0].numpy(), 50, 150))
    assert out["canny"][0].numpy().max() == 255


def test_sphere_normals_match_the_analytic_normals() -> None:
    size, dist = 64, 4.0
    v, f = icosphere(4)
    out = render_maps(
        torch.tensor((v + np.array([0.0, 0.0, dist]))[None]).float(),
        torch.from_numpy(f),
        camera(size, 40.0),
        headlight(),
        None,
        _cfg(size),
    )
    k = camera(size, 40.0).K[0].numpy()
    c = np.arange(size) + 0.5
    u, w = np.meshgrid(c, c, indexing="xy")
    z = out["depth"][0].numpy()
    pts = np.stack([(u - k[0, 2]) / k[0, 0] * z, (w - k[1, 2]) / k[1, 1] * z, z], -1)  # unprojected depth
    analytic = pts - [0.0, 0.0, dist]
    analytic /= np.linalg.norm(analytic, axis=-1, keepdims=True)
    n = out["normals"][0].numpy()
    facing = out["mask"][0].numpy() & (-analytic[..., 2] > 0.3)
    angle = np.degrees(np.arccos(np.clip((n[facing] * analytic[facing]).sum(-1), -1, 1)))
    assert np.median(angle) < 0.3 and angle.max() < 1.0
    np.testing.assert_allclose(np.linalg.norm(n[out["mask"][0].numpy()], axis=-1), 1.0, atol=1e-5)


def test_the_back_of_a_face_gets_the_normal_of_the_side_seen() -> None:
    tri = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]])
    for faces in ([[0, 1, 2]], [[0, 2, 1]]):  # front and back
        out = render_maps(
            torch.tensor(tri[None]).float(),
            torch.tensor(faces),
            camera(32, 60.0),
            headlight(),
            None,
            _cfg(32),
        )
        n = out["normals"][0][out["mask"][0]]
        np.testing.assert_allclose(n.numpy(), np.tile([0.0, 0.0, -1.0], (len(n), 1)), atol=1e-6)
        assert (out["shaded"][0][out["mask"][0]] == 255).all()


@pytest.fixture(scope="module")
def head_render(anny_head):
    """Three poses of the infant head at 128 px, with every 40th vertex as landmarks."""
    verts, faces = anny_head
    center = head_center(verts)
    poses = [(0, 0, 0, 0.4), (35, 10, -8, 0.38), (-60, -12, 5, 0.42)]
    rt = [orbit_pose(y, p, r, d, (0.0, 0.0), center) for y, p, r, d in poses]
    cams = Cameras(
        K=camera(128, 30.0, batch=3).K,
        R=torch.tensor(np.stack([r for r, _ in rt])),
        t=torch.tensor(np.stack([t for _, t in rt])),
        width=128,
        height=128,
    )
    v = torch.from_numpy(verts)[None].expand(3, -1, -1)
    lmk = v[:, ::40]
    out = render_maps(v, torch.from_numpy(faces), cams, headlight(3, 0.3), lmk, _cfg(128, fov_deg=30.0))
    return verts, faces, cams, lmk, {k: x.numpy() for k, x in out.items()}


def test_depth_unprojects_onto_the_mesh_with_the_stored_camera(head_render) -> None:
    import trimesh

    verts, faces, cams, _, out = head_render
    # in mm: trimesh's closest-point tolerances are absolute and misfire on sub-mm triangles in metres
    mesh = trimesh.Trimesh(verts.astype(np.float64) * 1000.0, faces, process=False)
    rng = np.random.default_rng(0)
    for i in range(3):
        meta = cams.to_meta(i)
        k, r, t = (np.array(meta[key]) for key in ("K", "R", "t"))
        rows, cols = np.nonzero(out["mask"][i])
        pick = rng.choice(len(rows), 300, replace=False)
        z = out["depth"][i][rows[pick], cols[pick]].astype(np.float64)
        pix = np.stack([cols[pick] + 0.5, rows[pick] + 0.5, np.ones(300)], axis=1)  # pixel centres
        cam = (pix @ np.linalg.inv(k).T) * z[:, None]
        world = (cam - t) @ r  # R^T (x - t)
        _, dist_mm, _ = trimesh.proximity.closest_point(mesh, world * 1000.0)
        assert dist_mm.max() < 1e-3  # 1 micrometre: float32 depth of a surface ~0.4 m away


def test_landmarks_land_where_the_depth_map_says(head_render) -> None:
    _, _, cams, lmk, out = head_render
    tol = RenderConfig().landmark_depth_tol_m
    uvz = cams.project(lmk.double()).numpy()
    lmk2d = out["lmk2d"]
    np.testing.assert_allclose(lmk2d[..., :2], uvz[..., :2], atol=1e-4)
    col, row = np.floor(uvz[..., 0]).astype(int), np.floor(uvz[..., 1]).astype(int)
    zb = np.stack([out["depth"][i][row[i], col[i]] for i in range(3)])
    vis = lmk2d[..., 2] == 1
    hidden = ~vis
    assert set(np.unique(lmk2d[..., 2])) <= {0.0, 1.0}
    assert vis[0].mean() > 0.4 and hidden.sum() > 20  # frontal view sees the face; the back is hidden
    z = uvz[..., 2]
    assert (z[vis] <= zb[vis] + tol).all() or (zb[vis] == 0).any()  # nothing in front of a visible one
    on_surface = vis & (zb > 0)
    # visible landmarks sit on the depth map, except within a pixel of a silhouette (farther surface behind)
    assert (np.abs(zb[on_surface] - z[on_surface]) <= tol).mean() > 0.9
    assert (z[hidden] > zb[hidden] + tol).all()


def test_landmark_visibility_agrees_with_an_embree_ray_cast(head_render) -> None:
    import trimesh

    verts, faces, cams, lmk, out = head_render
    mesh = trimesh.Trimesh(verts.astype(np.float64), faces, process=False)
    tol = RenderConfig().landmark_depth_tol_m
    agree = []
    for i in range(3):
        eye = -cams.R[i].numpy().T @ cams.t[i].numpy()
        ray = lmk[i].double().numpy() - eye
        length = np.linalg.norm(ray, axis=1)
        unit = ray / length[:, None]
        loc, idx, _ = mesh.ray.intersects_location(
            np.repeat(eye[None], len(ray), 0), unit, multiple_hits=False
        )
        first = np.full(len(ray), np.inf)
        first[idx] = np.linalg.norm(loc - eye, axis=1)
        cos = unit @ cams.R[i].numpy()[2]  # depth per unit of ray length
        gap = (length - first) * cos  # how far (in depth) the landmark lies behind the first surface hit
        flagged = out["lmk2d"][i][:, 2] == 1
        exact = gap <= tol
        agree.append(flagged == exact)
        # the map samples pixel centres, the ray cast the landmark itself: they may disagree only at the
        # tolerance boundary or within a pixel of a depth discontinuity (a silhouette)
        depth = np.pad(out["depth"][i], 1)
        u, v = out["lmk2d"][i][:, 0].astype(int) + 1, out["lmk2d"][i][:, 1].astype(int) + 1
        for j in np.flatnonzero(flagged != exact):
            window = depth[v[j] - 1 : v[j] + 2, u[j] - 1 : u[j] + 2]
            near_boundary = abs(gap[j] - tol) < tol / 2
            silhouette = window.min() == 0 or window.max() - window.min() > tol
            assert near_boundary or silhouette, (i, j, gap[j])
    assert np.mean(agree) > 0.95


@given(
    angles=st.tuples(st.floats(-180, 180), st.floats(-90, 90), st.floats(-180, 180)),
    shift=st.tuples(*[st.floats(-0.5, 0.5)] * 3),
)
@settings(max_examples=5, deadline=None)
def test_rigid_motion_of_mesh_and_camera_leaves_the_maps_unchanged(head_render, angles, shift) -> None:
    verts, faces, cams, lmk, out = head_render
    q = Rotation.from_euler("zyx", angles, degrees=True).as_matrix()
    s = np.array(shift)
    moved = torch.tensor(verts.astype(np.float64) @ q.T + s)[None].expand(3, -1, -1)
    lmk_moved = lmk.double() @ torch.tensor(q.T) + torch.tensor(s)
    r2 = cams.R @ torch.tensor(q.T)
    t2 = cams.t - torch.einsum("bij,j->bi", r2, torch.tensor(s))
    cams2 = Cameras(cams.K, r2, t2, cams.width, cams.height)
    again = render_maps(
        moved.float(),
        torch.from_numpy(faces),
        cams2,
        headlight(3, 0.3),
        lmk_moved.float(),
        _cfg(128, fov_deg=30.0),
    )
    np.testing.assert_allclose(again["lmk2d"].numpy()[..., :2], out["lmk2d"][..., :2], atol=2e-3)
    same = again["mask"].numpy() == out["mask"]
    assert same.mean() > 0.998
    both = again["mask"].numpy() & out["mask"]
    depth_err = np.abs(again["depth"].numpy()[both] - out["depth"][both])
    assert np.median(depth_err) < 1e-6 and (depth_err < 1e-4).mean() > 0.995


def test_render_maps_shapes_and_dtypes(head_render) -> None:
    out = head_render[-1]
    assert out["depth"].shape == (3, 128, 128) and out["depth"].dtype == np.float32
    assert out["normals"].shape == (3, 128, 128, 3) and out["normals"].dtype == np.float32
    assert (
        out["mask"].dtype == np.bool_ and out["shaded"].dtype == np.uint8 and out["canny"].dtype == np.uint8
    )
    assert out["lmk2d"].shape == (3, 114, 3) and out["lmk2d"].dtype == np.float32
    assert ((out["depth"] > 0) == out["mask"]).all()


def test_depth_png_encoding() -> None:
    depth = np.array([[0.0, 0.0004, 0.4123, 0.41249], [0.41251, 1.0, 65.5349, 80.0]], dtype=np.float32)
    png = depth_to_png16_mm(depth)
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, [[0, 1, 412, 412], [413, 1000, 65535, 65535]])
    back = png16_mm_to_depth(png)
    ok = (depth > 0.0005) & (depth < 65.0)
    assert np.abs(back[ok] - depth[ok]).max() <= 0.0005 + 1e-7


@given(st.lists(st.tuples(*[st.floats(-1, 1)] * 3), min_size=1, max_size=50))
@settings(max_examples=30, deadline=None)
def test_normal_png_round_trip(vectors) -> None:
    n = np.array(vectors, dtype=np.float64)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(norm > 1e-3, n / np.maximum(norm, 1e-12), [0.0, 0.0, -1.0])
    n = np.concatenate([n, np.zeros((1, 3))])  # plus one background pixel
    png = normals_to_png8(n.astype(np.float32))
    assert png.dtype == np.uint8 and (png[-1] == 0).all() and (png[:-1].max(axis=1) > 0).all()
    back = png8_to_normals(png)
    assert (back[-1] == 0).all()
    cos = (back[:-1] * n[:-1]).sum(-1)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.7
    np.testing.assert_array_equal(normals_to_png8(np.array([0.0, 0.0, -1.0])), [128, 128, 0])


def test_canny_thresholds_come_from_the_config(head_render) -> None:
    verts, faces, cams, _, out = head_render
    v = torch.from_numpy(verts)[None].expand(3, -1, -1)
    none = render_maps(
        v, torch.from_numpy(faces), cams, headlight(3, 0.3), None, _cfg(128, canny_low=1000, canny_high=1000)
    )
    for i in range(3):
        expected = cv2.Canny(none["shaded"][i].numpy(), 1000, 1000)
        np.testing.assert_array_equal(none["canny"][i].numpy(), expected)
    assert 0 < (none["canny"] > 0).sum() < (out["canny"] > 0).sum()  # only the strongest (silhouette) edges
    assert "lmk2d" not in none
    assert math.isclose(float(out["canny"].max()), 255.0)
