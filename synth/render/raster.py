"""The rasterizer interface, backend selection, and the pure-PyTorch reference backend.

Every backend takes camera-space vertices (OpenCV axes, metres) and pinhole intrinsics and returns
`Fragments` for the nearest surface at each pixel centre (column i, row j sampled at (i + 0.5, j + 0.5)):

- the visible face per pixel (ties in depth go to the lower face id, so the output never depends on the
  order triangles are visited — by threads, GPU blocks or tiles),
- perspective-correct barycentrics of the pixel centre in that face (interpolating any vertex attribute
  with them is perspective-correct),
- the camera-frame depth z of the surface at the pixel centre.

Coverage rule: a pixel centre belongs to a triangle when it is inside or exactly on an edge; each shared
edge is evaluated in one canonical vertex order, so a mesh without holes renders without cracks. Triangles
with a vertex closer than `near` (metres) are dropped, not clipped (cameras orbit far outside the face).
"""

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from synth.errors import SynthError
from synth.render.config import RasterBackend

log = logging.getLogger(__name__)

NEAR_M = 0.01


@dataclass(frozen=True)
class Fragments:
    """Rasterizer output for a batch of B images of H x W pixels.

    pix_to_face: (B, H, W) int64 face index into `faces`, -1 for background;
    bary: (B, H, W, 3) float32 perspective-correct barycentrics of the pixel centre (0 for background);
    zbuf: (B, H, W) float32 camera-frame z of the surface at the pixel centre in metres (0 for background).
    """

    pix_to_face: Tensor
    bary: Tensor
    zbuf: Tensor


class Rasterizer(Protocol):
    """A backend: `rasterize(verts_cam, faces, intrinsics, height, width) -> Fragments`."""

    name: str

    def rasterize(
        self, verts_cam: Tensor, faces: Tensor, intrinsics: Tensor, height: int, width: int
    ) -> Fragments:
        """verts_cam: (B, N, 3) camera-frame m; faces: (F, 3) int; intrinsics: (B, 4) (fx, fy, cx, cy)."""
        ...


def check_inputs(verts_cam: Tensor, faces: Tensor, intrinsics: Tensor, height: int, width: int) -> None:
    """Front-loaded shape checks shared by all backends; raise `ValueError` naming the bad argument."""
    if verts_cam.ndim != 3 or verts_cam.shape[-1] != 3:
        raise ValueError(f"verts_cam must be (B, N, 3), got {tuple(verts_cam.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if intrinsics.shape != (verts_cam.shape[0], 4):
        raise ValueError(
            f"intrinsics must be (B, 4) = ({verts_cam.shape[0]}, 4), got {tuple(intrinsics.shape)}"
        )
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= verts_cam.shape[1]):
        raise ValueError(f"faces index vertices outside [0, {verts_cam.shape[1]})")


def screen_coords(verts_cam: Tensor, intrinsics: Tensor) -> Tensor:
    """verts_cam: (B, N, 3), intrinsics: (B, 4) -> (B, N, 3) `(u, v, z)`: pixel coordinates and camera z."""
    fx, fy, cx, cy = (intrinsics[:, i, None] for i in range(4))  # each (B, 1)
    x, y, z = verts_cam.unbind(-1)  # each (B, N)
    return torch.stack([fx * x / z + cx, fy * y / z + cy, z], dim=-1)


def _canonical_edge(ia: Tensor, a: Tensor, ib: Tensor, b: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Edge function of directed edge a->b at points p, evaluated from the lower vertex id so that the two
    triangles sharing an edge see exactly opposite values (watertight coverage).

    ia, ib: (K,) vertex ids; a, b: (K, 2) screen points; px, py: (P, 1) -> (P, K).
    """
    swap = ia > ib  # (K,)
    lo = torch.where(swap[:, None], b, a)
    hi = torch.where(swap[:, None], a, b)
    e = (hi[:, 0] - lo[:, 0]) * (py - lo[:, 1]) - (hi[:, 1] - lo[:, 1]) * (px - lo[:, 0])  # (P, K)
    return torch.where(swap, -e, e)


class TorchRasterizer:
    """Pure PyTorch reference: 8x8 pixel tiles, each tested against the triangles whose box overlaps it.

    Computes in float64 on any torch device. Slow (seconds per 512 px image on CPU); it exists to cross-check
    the fast backends with an independent implementation.
    """

    name = "torch"
    tile = 8

    def rasterize(
        self, verts_cam: Tensor, faces: Tensor, intrinsics: Tensor, height: int, width: int
    ) -> Fragments:
        check_inputs(verts_cam, faces, intrinsics, height, width)
        dev = verts_cam.device
        faces = faces.to(dev, torch.int64)
        b_count = verts_cam.shape[0]
        pix_to_face = torch.full((b_count, height, width), -1, dtype=torch.int64, device=dev)
        bary = torch.zeros((b_count, height, width, 3), dtype=torch.float32, device=dev)
        zbuf = torch.zeros((b_count, height, width), dtype=torch.float32, device=dev)
        screen = screen_coords(verts_cam.double(), intrinsics.double())  # (B, N, 3)
        fid_all = torch.arange(faces.shape[0], device=dev)
        for b in range(b_count):
            tri = screen[b][faces]  # (F, 3 corners, 3)
            xy, z = tri[..., :2], tri[..., 2]
            area = (xy[:, 1, 0] - xy[:, 0, 0]) * (xy[:, 2, 1] - xy[:, 0, 1]) - (xy[:, 1, 1] - xy[:, 0, 1]) * (
                xy[:, 2, 0] - xy[:, 0, 0]
            )
            valid = (z >= NEAR_M).all(dim=1) & (area != 0)
            lo = xy.amin(dim=1) - 0.5  # (F, 2): a pixel index i is covered only if lo <= i <= hi
            hi = xy.amax(dim=1) - 0.5
            for y0 in range(0, height, self.tile):
                y1 = min(y0 + self.tile, height)
                for x0 in range(0, width, self.tile):
                    x1 = min(x0 + self.tile, width)
                    sel = (
                        valid
                        & (hi[:, 0] >= x0)
                        & (lo[:, 0] <= x1 - 1)
                        & (hi[:, 1] >= y0)
                        & (lo[:, 1] <= y1 - 1)
                    )
                    k = fid_all[sel]
                    if k.numel() == 0:
                        continue
                    self._tile(b, k, faces, xy, z, x0, x1, y0, y1, pix_to_face, bary, zbuf)
        return Fragments(pix_to_face, bary, zbuf)

    @staticmethod
    def _tile(b, k, faces, xy, z, x0, x1, y0, y1, pix_to_face, bary, zbuf) -> None:
        """Resolve one tile against candidate faces k (K,); writes the winners into the output buffers."""
        dev = xy.device
        ys, xs = torch.meshgrid(
            torch.arange(y0, y1, device=dev, dtype=torch.float64) + 0.5,
            torch.arange(x0, x1, device=dev, dtype=torch.float64) + 0.5,
            indexing="ij",
        )
        px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)  # (P, 1)
        vid = faces[k]  # (K, 3)
        p = xy[k]  # (K, 3, 2)
        # w_i: edge function of the edge opposite corner i.
        w0 = _canonical_edge(vid[:, 1], p[:, 1], vid[:, 2], p[:, 2], px, py)  # (P, K)
        w1 = _canonical_edge(vid[:, 2], p[:, 2], vid[:, 0], p[:, 0], px, py)
        w2 = _canonical_edge(vid[:, 0], p[:, 0], vid[:, 1], p[:, 1], px, py)
        s = w0 + w1 + w2
        inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (s > 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0) & (s < 0))
        iz = 1.0 / z[k]  # (K, 3)
        l0, l1, l2 = w0 * iz[:, 0], w1 * iz[:, 1], w2 * iz[:, 2]
        inv = l0 + l1 + l2
        depth = torch.where(inside, s / torch.where(inside, inv, 1.0), math.inf)  # (P, K)
        zmin = depth.min(dim=1, keepdim=True).values  # (P, 1)
        hit = inside & (depth == zmin)
        # k is ascending, so the lowest hit column is the lowest hit face id: the deterministic tie-break.
        n_k = k.shape[0]
        col = torch.where(hit, torch.arange(n_k, device=dev)[None, :], n_k).min(dim=1).values  # (P,)
        covered = col < n_k
        col = col.clamp(max=n_k - 1)
        winner = k[col]
        rows = torch.arange(px.shape[0], device=dev)
        lw = torch.stack([l0[rows, col], l1[rows, col], l2[rows, col]], dim=-1)  # (P, 3)
        inv_w = inv[rows, col][:, None]
        h, w = y1 - y0, x1 - x0
        pix_to_face[b, y0:y1, x0:x1] = torch.where(covered, winner, -1).view(h, w)
        bary[b, y0:y1, x0:x1] = torch.where(covered[:, None], lw / inv_w, 0.0).view(h, w, 3).float()
        zbuf[b, y0:y1, x0:x1] = torch.where(covered, zmin[:, 0], 0.0).view(h, w).float()


def resolve_device(device: str) -> torch.device:
    """`RenderConfig.device` -> torch device ("auto": the first CUDA device when available, else CPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SynthError(f"render.device={device}: CUDA is not available; use render.device=cpu or auto")
        if dev.index is None:  # an explicit index, so torch and Warp name the same device
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def pytorch3d_available() -> bool:
    """Whether the optional `pytorch3d` package imports."""
    try:
        import pytorch3d.renderer  # noqa: F401
    except ImportError:
        return False
    return True


def get_rasterizer(backend: RasterBackend, device: torch.device) -> Rasterizer:
    """The rasterizer for `backend` on `device`; `auto` picks PyTorch3D on CUDA when importable, else Warp.

    Warp is the default by measurement (docs/rendering.md: ~1000x the torch reference on CPU at 512 px);
    PyTorch3D is preferred on CUDA only because it is the field's reference implementation.
    """
    if backend is RasterBackend.auto:
        backend = (
            RasterBackend.pytorch3d if device.type == "cuda" and pytorch3d_available() else RasterBackend.warp
        )
        log.debug("render backend auto -> %s on %s", backend.value, device)
    if backend is RasterBackend.torch:
        return TorchRasterizer()
    if backend is RasterBackend.warp:
        from synth.render.warp_backend import WarpRasterizer

        return WarpRasterizer()
    if backend is RasterBackend.pytorch3d:
        if not pytorch3d_available():
            raise SynthError(
                "render.backend=pytorch3d but the pytorch3d package is not importable; "
                "install it or set render.backend=warp"
            )
        from synth.render.pytorch3d_backend import PyTorch3DRasterizer

        return PyTorch3DRasterizer()
    raise ValueError(f"unknown render backend {backend!r}")
