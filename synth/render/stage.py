"""The render stage of the pipeline: a plain class over batches of numpy arrays (Ray Data style)."""

import numpy as np
import torch

from synth.render.camera import sample_cameras, sample_lights
from synth.render.config import RenderConfig
from synth.render.maps import render_maps
from synth.render.raster import get_rasterizer, resolve_device
from synth.seeding import Stage, numpy_rng


def face_centers(vertices: np.ndarray) -> np.ndarray:
    """vertices (B, N, 3) -> (B, 3) centre of each mesh's axis-aligned bounding box (what cameras look at).

    Per sample, so a sample's camera depends only on its own mesh and seeds, never on its batch.
    """
    return 0.5 * (vertices.min(axis=1) + vertices.max(axis=1)).astype(np.float64)


class RenderStage:
    """Cameras, lights and the map set for each sample of a batch.

    `__call__(batch)` reads "index" (B,) int64 global sample indices, "vertices" (B, N, 3) float32 world
    metres and optionally "lmk3d" (B, L, 3); it returns the batch plus:
    "depth" (B, H, W) float32 m, "normals" (B, H, W, 3) float32, "mask" (B, H, W) bool, "shaded" and
    "canny" (B, H, W) uint8, "lmk2d" (B, L, 3) float32 (when "lmk3d" is given), "K" (B, 3, 3), "R"
    (B, 3, 3), "t" (B, 3) float64 (the meta.json camera), "light" (B, 4) float32 (direction towards the
    light in the camera frame, ambient). Camera i is drawn from `numpy_rng(run_seed, index[i],
    Stage.CAMERA)` around the centre of mesh i, light i from `numpy_rng(run_seed, index[i], Stage.LIGHT)`.
    """

    def __init__(self, cfg: RenderConfig, faces: np.ndarray, run_seed: int) -> None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"faces must be an (F, 3) integer array, got {faces.dtype} {faces.shape}")
        if run_seed < 0:
            raise ValueError(f"run_seed={run_seed} must be >= 0")
        # fail at construction, not mid-run, on an unusable backend or device (SynthError says how to fix)
        get_rasterizer(cfg.backend, resolve_device(cfg.device))
        self.cfg = cfg
        self.faces = torch.from_numpy(faces.astype(np.int64))
        self.run_seed = int(run_seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = np.asarray(batch["index"], dtype=np.int64)
        vertices = np.asarray(batch["vertices"], dtype=np.float32)
        if vertices.ndim != 3 or vertices.shape[0] != index.shape[0] or vertices.shape[2] != 3:
            raise ValueError(f"batch vertices must be (B, N, 3) with B = len(index); got {vertices.shape}")
        # 1. per-sample camera and light
        cams = sample_cameras(
            self.cfg, [numpy_rng(self.run_seed, int(i), Stage.CAMERA) for i in index], face_centers(vertices)
        )
        lights = sample_lights(self.cfg, [numpy_rng(self.run_seed, int(i), Stage.LIGHT) for i in index])
        # 2. maps
        lmk3d = batch.get("lmk3d")
        maps = render_maps(
            torch.from_numpy(vertices),
            self.faces,
            cams,
            lights,
            None if lmk3d is None else torch.from_numpy(np.asarray(lmk3d, dtype=np.float32)),
            self.cfg,
        )
        # 3. back to numpy, with the camera arrays
        out = dict(batch)
        out.update({name: value.cpu().numpy() for name, value in maps.items()})
        out["K"] = cams.K.numpy()
        out["R"] = cams.R.numpy()
        out["t"] = cams.t.numpy()
        out["light"] = lights.as_array()
        return out
