"""Device selection: CUDA renders match CPU renders where CUDA exists; elsewhere asking for it is refused."""

import numpy as np
import pytest
import torch

from synth.errors import SynthError
from synth.render.camera import sample_cameras, sample_lights
from synth.render.config import RenderConfig
from synth.render.maps import render_maps
from synth.render.raster import resolve_device
from synth.seeding import Stage, numpy_rng
from tests.render._scenes import head_center


def test_cuda_renders_match_cpu_renders_or_cuda_is_refused(anny_head) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(SynthError, match=r"render\.device=cuda"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
        return
    assert resolve_device("auto").type == "cuda" and resolve_device("auto").index is not None
    verts, faces = anny_head
    out = {}
    for device in ("cpu", "cuda"):
        cfg = RenderConfig(image_size=128, device=device)
        cams = sample_cameras(cfg, [numpy_rng(0, i, Stage.CAMERA) for i in range(4)], head_center(verts))
        lights = sample_lights(cfg, [numpy_rng(0, i, Stage.LIGHT) for i in range(4)])
        v = torch.from_numpy(verts)[None].expand(4, -1, -1)
        maps = render_maps(v, torch.from_numpy(faces), cams, lights, v[:, ::100], cfg)
        out[device] = {k: x.cpu().numpy() for k, x in maps.items()}
    cpu, gpu = out["cpu"], out["cuda"]
    assert (cpu["mask"] == gpu["mask"]).mean() > 0.999  # FMA contraction may flip a pixel on an edge
    both = cpu["mask"] & gpu["mask"]
    np.testing.assert_allclose(gpu["depth"][both], cpu["depth"][both], atol=1e-6)
    assert np.abs(gpu["normals"][both] - cpu["normals"][both]).max() < 1e-4
    np.testing.assert_allclose(gpu["lmk2d"], cpu["lmk2d"], atol=1e-4)


def test_the_warp_kernels_compile_for_cuda(tmp_path) -> None:
    """Without a GPU, Warp still compiles the CUDA build (NVRTC, sm_90 = H100) of every render kernel."""
    import warp as wp

    wp.init()
    for module in ("synth.render.warp_backend", "synth.render.shading"):
        (ptx,) = wp.compile_aot_module(module, arch=90, module_dir=tmp_path, use_ptx=True)
        text = ptx.read_text(errors="replace")
        assert ".entry" in text
        if module.endswith("warp_backend"):
            assert "atom.global.min.u64" in text  # the deterministic 64-bit z-buffer
