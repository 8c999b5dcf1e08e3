"""Hand-made samples in the pipeline's dict format (64x64 maps), independent of the other stages."""

from pathlib import Path

import numpy as np
import pytest

from synth.records.config import OutputConfig
from synth.records.writer import write_dataset_files, write_manifest, write_shard

SIZE = 64
N_VERTS = 40
N_AU = 46
N_LMK = 23
AU_NAMES = [f"AU{i}" for i in range(1, N_AU + 1)]


def make_faces(n_verts: int = N_VERTS) -> np.ndarray:
    """(F, 3) int64 triangles of a strip over `n_verts` vertices."""
    i = np.arange(n_verts - 2)
    return np.stack([i, i + 1, i + 2], axis=1).astype(np.int64)


def smooth_rgb(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a random colour gradient (JPEG keeps it within a few levels)."""
    ramp = np.linspace(0.0, 1.0, size)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = a + (b - a) * (ramp[:, None, None] + ramp[None, :, None]) / 2  # (S, S, 3)
    return np.rint(image).astype(np.uint8)


def make_sample(index: int, n_rgb: int = 1, size: int = SIZE, seed: int = 0) -> dict:
    """One random but valid sample; the maps are a disc (foreground) on background."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2  # (H, W) bool
    depth = np.where(mask, rng.uniform(0.3, 0.8, (size, size)), 0.0).astype(np.float32)
    normal = rng.normal(size=(size, size, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[~mask] = 0.0
    lmk2d = np.concatenate([rng.uniform(0, size, (N_LMK, 2)), rng.integers(0, 2, (N_LMK, 1))], axis=1).astype(
        np.float32
    )
    focal = 1.5 * size
    camera = {
        "K": np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]]),
        "R": np.eye(3),
        "t": np.array([0.0, 0.0, 0.5]),
        "width": size,
        "height": size,
    }
    identity = index // 4
    return {
        "index": index,
        "mesh": rng.normal(0, 0.05, (N_VERTS, 3)).astype(np.float32),
        "latents": {
            "z_id": rng.normal(size=7).astype(np.float32),
            "z_ex": rng.normal(size=5).astype(np.float32),
            "w_id": rng.normal(size=9).astype(np.float32),
            "w_ex": rng.normal(size=6).astype(np.float32),
        },
        "au": rng.uniform(0, 1, N_AU).astype(np.float32),
        "au_nnls": np.linspace(0, 1, N_AU, dtype=np.float32),  # no rng draw: other members unchanged
        "lmk2d": lmk2d,
        "lmk3d": rng.normal(0, 0.05, (N_LMK, 3)).astype(np.float32),
        "depth": depth,
        "normal": normal,
        "mask": mask,
        "canny": (rng.uniform(size=(size, size)) > 0.9).astype(np.uint8) * np.uint8(255),
        "shaded": rng.integers(0, 256, (size, size), dtype=np.uint8),
        "rgb": [smooth_rgb(rng, size) for _ in range(n_rgb)],
        "meta": {
            "split": ("train", "val", "test")[identity % 3],
            "identity_id": identity,
            "expression": ("neutral", "smile", "cry", "surprise")[index % 4],
            "model_id": "test-model",
            "seed": seed,
            "camera": camera,
            "light": {"direction": [0.0, -1.0, 0.5], "ambient": 0.2},
            "prompts": [f"portrait {k}" for k in range(n_rgb)],
            "ethnicity": "Filipino",
            "diffusion_seeds": [1000 * index + k for k in range(n_rgb)],
            "phenotype": {"age": float(rng.uniform(0, 0.1)), "gender": float(rng.uniform())},
        },
    }


def write_dataset(
    root: Path, num_samples: int = 10, samples_per_shard: int = 4, n_rgb: int = 1, seed: int = 0
) -> Path:
    """A complete dataset (shards, index, dataset files, manifest) of `num_samples` hand-made samples."""
    cfg = OutputConfig(dir=str(root), samples_per_shard=samples_per_shard)
    write_dataset_files(root, make_faces(), AU_NAMES, landmarks={"names": [f"l{i}" for i in range(N_LMK)]})
    infos = []
    for shard_id, start in enumerate(range(0, num_samples, samples_per_shard)):
        stop = min(start + samples_per_shard, num_samples)
        samples = [make_sample(i, n_rgb=n_rgb, seed=seed) for i in range(start, stop)]
        infos.append(write_shard(root, shard_id, samples, cfg))
    write_manifest(
        root,
        infos,
        config={"output": {"dir": str(root), "samples_per_shard": samples_per_shard}},
        model={"id": "test-model", "path": "/nowhere", "hash": "0" * 64},
        au_names=AU_NAMES,
        samples_per_shard=samples_per_shard,
        timings={"total": 1.0},
    )
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-sample dataset in 3 shards (4, 4, 2), one RGB image per sample; do not modify it."""
    return write_dataset(tmp_path_factory.mktemp("ds"))
