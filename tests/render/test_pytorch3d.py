"""The PyTorch3D backend agrees with the Warp rasterizer (runs only where PyTorch3D is installed)."""

import numpy as np
import pytest
import torch

pytest.importorskip(
    "pytorch3d.renderer",
    reason="pytorch3d is not installed (not on the package registries this project uses)",
)

from synth.render.camera import sample_cameras
from synth.render.config import RasterBackend, RenderConfig
from synth.render.raster import get_rasterizer
from synth.render.warp_backend import WarpRasterizer
from synth.seeding import Stage, numpy_rng
from tests.render._scenes import head_center


@pytest.mark.parametrize("size", [(96, 96), (64, 80)])
def test_pytorch3d_matches_warp_on_the_anny_head(anny_head, size) -> None:
    verts, faces = anny_head
    height, width = size
    cfg = RenderConfig(image_size=96, device="cpu")
    cams = sample_cameras(cfg, [numpy_rng(0, i, Stage.CAMERA) for i in range(2)], head_center(verts))
    verts_cam = cams.world_to_camera(torch.from_numpy(verts)[None].expand(2, -1, -1))
    intr = cams.intrinsics()
    intr[:, 2], intr[:, 3] = width / 2, height / 2
    f = torch.from_numpy(faces)
    ours = WarpRasterizer().rasterize(verts_cam, f, intr, height, width)
    theirs = get_rasterizer(RasterBackend.pytorch3d, torch.device("cpu")).rasterize(
        verts_cam, f, intr, height, width
    )
    same = ours.pix_to_face == theirs.pix_to_face
    assert same.float().mean() > 0.995
    np.testing.assert_allclose(theirs.zbuf[same].numpy(), ours.zbuf[same].numpy(), atol=1e-5)
    np.testing.assert_allclose(theirs.bary[same].numpy(), ours.bary[same].numpy(), atol=1e-3)
