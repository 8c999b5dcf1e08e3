"""The conditioning and label maps of a batch of meshes, and their on-disk encodings.

`render_maps` turns meshes + cameras + lights into depth, camera-space normals, mask, Lambert-shaded
grayscale, its Canny edges and 2D landmarks with visibility, all batched. The encoders at the bottom fix
the on-disk conventions used by the records writer (DESIGN section 4):

- depth PNG: uint16, camera-frame z in millimetres, rounded to the nearest mm; 0 = background
  (foreground is at least 1, so a surface nearer than 0.5 mm still reads as foreground; at most 65.535 m).
- normal PNG: uint8 RGB = round((n + 1) * 127.5) per component of the unit normal n in the camera frame
  (OpenCV axes: x right, y down, z forward; visible surfaces have n_z < 0, so blue < 128); background is
  (0, 0, 0), which no unit normal maps to.
"""

import cv2
import numpy as np
import torch
from torch import Tensor

from synth.render.camera import Cameras, Lights
from synth.render.config import RenderConfig
from synth.render.raster import get_rasterizer, resolve_device
from synth.render.shading import shade_fragments


def canny(shaded: Tensor, low: int, high: int) -> Tensor:
    """OpenCV Canny edges of each image: shaded (B, H, W) uint8 -> (B, H, W) uint8 in {0, 255}."""
    images = shaded.cpu().numpy()
    edges = np.stack([cv2.Canny(img, low, high) for img in images]) if len(images) else images.copy()
    return torch.from_numpy(edges).to(shaded.device)


def project_landmarks(landmarks3d: Tensor, cameras: Cameras, depth: Tensor, tol_m: float) -> Tensor:
    """landmarks3d: (B, L, 3) world m; depth: (B, H, W) m -> (B, L, 3) float32 (x_px, y_px, visible).

    Visible (1.0) when the landmark projects inside the image, in front of the camera, and lies at most
    `tol_m` behind the depth map at the pixel containing it (a background pixel hides nothing).
    """
    b_count, height, width = depth.shape
    uvz = cameras.project(landmarks3d.double())  # (B, L, 3)
    u, v, z = uvz.unbind(-1)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height) & (z > 0)
    col = torch.nan_to_num(u).floor().clamp(0, width - 1).long()  # in range even for points at z = 0
    row = torch.nan_to_num(v).floor().clamp(0, height - 1).long()
    bidx = torch.arange(b_count, device=depth.device)[:, None].expand_as(col)
    zb = depth[bidx, row.to(depth.device), col.to(depth.device)].to(z.device, torch.float64)  # (B, L)
    visible = inside & ((zb == 0) | (z <= zb + tol_m))
    return torch.stack([u, v, visible.to(u.dtype)], dim=-1).float()


def render_maps(
    vertices: Tensor,
    faces: Tensor,
    cameras: Cameras,
    lights: Lights,
    landmarks3d: Tensor | None,
    cfg: RenderConfig,
) -> dict[str, Tensor]:
    """Render the full map set of a batch.

    vertices: (B, N, 3) world metres; faces: (F, 3) int; cameras, lights: B each; landmarks3d: (B, L, 3)
    world metres or None. Returns tensors on the render device (`cfg.device`):
    depth (B, H, W) float32 metres (0 background), normals (B, H, W, 3) float32 camera-frame unit (0
    background), mask (B, H, W) bool, shaded (B, H, W) uint8, canny (B, H, W) uint8, and lmk2d (B, L, 3)
    float32 (x_px, y_px, visible) when landmarks are given.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, N, 3), got {tuple(vertices.shape)}")
    if len(cameras) != vertices.shape[0] or lights.direction.shape[0] != vertices.shape[0]:
        raise ValueError(
            f"got {vertices.shape[0]} meshes, {len(cameras)} cameras and {lights.direction.shape[0]} lights"
        )
    if landmarks3d is not None and (landmarks3d.ndim != 3 or landmarks3d.shape[0] != vertices.shape[0]):
        raise ValueError(f"landmarks3d must be (B, L, 3), got {tuple(landmarks3d.shape)}")
    device = resolve_device(cfg.device)
    rasterizer = get_rasterizer(cfg.backend, device)

    # 1. world -> camera frame (float64 math, float32 result)
    cameras = cameras.to(device)
    faces = faces.to(device, torch.int64)
    verts_cam = cameras.world_to_camera(vertices.to(device)).float()  # (B, N, 3)
    # 2. rasterize: nearest face, perspective-correct barycentrics and depth at each pixel centre
    frags = rasterizer.rasterize(verts_cam, faces, cameras.intrinsics(), cameras.height, cameras.width)
    # 3. normals, shading, edges
    normals, shaded = shade_fragments(frags, verts_cam, faces, lights)
    out = {
        "depth": frags.zbuf,
        "normals": normals,
        "mask": frags.pix_to_face >= 0,
        "shaded": shaded,
        "canny": canny(shaded, cfg.canny_low, cfg.canny_high),
    }
    # 4. landmarks
    if landmarks3d is not None:
        out["lmk2d"] = project_landmarks(
            landmarks3d.to(device), cameras, frags.zbuf, cfg.landmark_depth_tol_m
        )
    return out


def depth_to_png16_mm(depth: np.ndarray) -> np.ndarray:
    """depth (..., H, W) float metres, 0 = background -> uint16 millimetres (see the module docstring)."""
    depth = np.asarray(depth, dtype=np.float64)
    mm = np.clip(np.rint(depth * 1000.0), 1.0, 65535.0)
    return np.where(depth > 0, mm, 0.0).astype(np.uint16)


def png16_mm_to_depth(png: np.ndarray) -> np.ndarray:
    """The inverse of `depth_to_png16_mm` (to 0.5 mm): uint16 millimetres -> float32 metres."""
    return np.asarray(png, dtype=np.float32) / np.float32(1000.0)


def normals_to_png8(normals: np.ndarray) -> np.ndarray:
    """normals (..., 3) camera-frame unit vectors, all-zero = background -> uint8 (..., 3) (module doc)."""
    normals = np.asarray(normals, dtype=np.float32)  # float32 is exact enough for 8 bits and twice as fast
    rgb = (normals + np.float32(1.0)) * np.float32(127.5)
    np.rint(rgb, out=rgb)
    np.clip(rgb, 0.0, 255.0, out=rgb)
    rgb[~np.any(normals != 0, axis=-1)] = 0.0  # background stays (0, 0, 0)
    return rgb.astype(np.uint8)


def png8_to_normals(png: np.ndarray) -> np.ndarray:
    """Inverse of `normals_to_png8` (to about 0.5 degree): uint8 (..., 3) -> float32 unit normals, 0 = bg."""
    rgb = np.asarray(png, dtype=np.float32)
    n = rgb / np.float32(127.5) - np.float32(1.0)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    background = ~np.any(rgb != 0, axis=-1, keepdims=True)
    return np.where(background, 0.0, n / np.maximum(norm, 1e-12)).astype(np.float32)
