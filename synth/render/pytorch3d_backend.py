"""The PyTorch3D rasterizer behind the `Rasterizer` interface (optional: needs the `pytorch3d` package).

PyTorch3D rasterizes in its NDC screen space: +X left, +Y up, the shorter image side spanning [-1, 1]
and pixel (row y, column x) sampled at the pixel centre. An OpenCV pixel coordinate (u, v) with centres
at +0.5 maps to x_ndc = (W - 2u) / S, y_ndc = (H - 2v) / S with S = min(H, W); z stays the camera-frame
depth, which PyTorch3D uses for the z-buffer and the perspective-correct barycentrics. Faces with a
vertex nearer than `NEAR_M` are made degenerate (PyTorch3D skips them) so face ids keep their meaning.
Ties between equal depths are resolved by PyTorch3D's kernel order, not by face id.
"""

import torch
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
from pytorch3d.structures import Meshes
from torch import Tensor

from synth.render.raster import NEAR_M, Fragments, check_inputs, screen_coords


class PyTorch3DRasterizer:
    """`Rasterizer` on `pytorch3d.renderer.mesh.rasterize_meshes` (CPU or CUDA, following the inputs)."""

    name = "pytorch3d"

    def rasterize(
        self, verts_cam: Tensor, faces: Tensor, intrinsics: Tensor, height: int, width: int
    ) -> Fragments:
        check_inputs(verts_cam, faces, intrinsics, height, width)
        dev = verts_cam.device
        b_count, n_faces = verts_cam.shape[0], faces.shape[0]
        faces = faces.to(dev, torch.int64)
        screen = screen_coords(verts_cam.float(), intrinsics.to(dev).float())  # (B, N, 3) (u, v, z)
        s = float(min(height, width))
        ndc = torch.stack(
            [(width - 2.0 * screen[..., 0]) / s, (height - 2.0 * screen[..., 1]) / s, screen[..., 2]], dim=-1
        )
        too_near = (screen[..., 2] < NEAR_M)[:, faces].any(dim=-1)  # (B, F)
        face_list = [torch.where(too_near[b, :, None], 0, faces) for b in range(b_count)]
        p2f, zbuf, bary, _ = rasterize_meshes(
            Meshes(verts=list(ndc), faces=face_list),
            image_size=(height, width),
            blur_radius=0.0,
            faces_per_pixel=1,
            perspective_correct=True,
            clip_barycentric_coords=False,
            cull_backfaces=False,
        )
        p2f, zbuf, bary = p2f[..., 0], zbuf[..., 0], bary[..., 0, :]
        covered = p2f >= 0
        offsets = (torch.arange(b_count, device=dev) * n_faces)[:, None, None]  # packed -> per-mesh ids
        return Fragments(
            pix_to_face=torch.where(covered, p2f - offsets, -1),
            bary=torch.where(covered[..., None], bary, 0.0).float(),
            zbuf=torch.where(covered, zbuf, 0.0).float(),
        )
