"""Property: any valid sample (any dims, member subset, RGB count) survives write -> validate -> load."""

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.records import load_webdataset
from synth.records.config import OutputConfig
from synth.records.schema import LATENT_NAMES, OPTIONAL_MEMBERS
from synth.records.validate import validate_dataset
from synth.records.writer import write_dataset_files, write_manifest, write_shard

LOSSLESS = ("mesh", "au", "au_nnls", "lmk2d", "lmk3d", "mask", "canny", "shaded")


def flags(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, (n, 1)).astype(np.float32)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[dict], list[str], int]:
    n_verts, n_au, n_lmk = draw(st.integers(3, 30)), draw(st.integers(1, 8)), draw(st.integers(0, 5))
    height, width = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    n_rgb, side = draw(st.integers(0, 3)), draw(st.integers(8, 24))
    dims = {name: draw(st.integers(1, 6)) for name in LATENT_NAMES}
    members = draw(st.lists(st.sampled_from(OPTIONAL_MEMBERS), unique=True))
    n_samples = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    samples = []
    for i in range(n_samples):
        mask = rng.uniform(size=(height, width)) < 0.6
        normal = rng.normal(size=(height, width, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        normal[~mask] = 0
        samples.append({
            "index": 1000 + 3 * i,
            "mesh": rng.normal(size=(n_verts, 3)).astype(np.float32),
            "latents": {k: rng.normal(size=d).astype(np.float32) for k, d in dims.items()},
            "au": rng.uniform(size=n_au).astype(np.float32),
            "au_nnls": rng.uniform(size=n_au).astype(np.float32),
            "lmk2d": np.concatenate([rng.uniform(0, 9, (n_lmk, 2)), flags(rng, n_lmk)], 1).astype(np.float32),
            "lmk3d": rng.normal(size=(n_lmk, 3)).astype(np.float32),
            "depth": np.where(mask, rng.uniform(0.1, 3.0, (height, width)), 0).astype(np.float32),
            "normal": normal,
            "mask": mask,
            "canny": rng.integers(0, 256, (height, width), dtype=np.uint8),
            "shaded": rng.integers(0, 256, (height, width), dtype=np.uint8),
            "rgb": [np.full((side, side, 3), 17 * k, np.uint8) for k in range(n_rgb)],
            "meta": {
                "split": "test", "identity_id": i, "expression": "x", "model_id": "m", "seed": 3,
                "camera": {"K": np.eye(3), "R": np.eye(3), "t": np.zeros(3), "width": width,
                           "height": height},
                "prompts": ["p"] * n_rgb,
            },
        })  # fmt: skip
    return samples, members, n_au


@settings(max_examples=15, deadline=None)
@given(datasets())
def test_any_valid_dataset_round_trips(case: tuple[list[dict], list[str], int]) -> None:
    samples, members, n_au = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = OutputConfig(dir=tmp, members=members)
        au_names = [f"AU{i}" for i in range(n_au)]
        write_dataset_files(root, np.array([[0, 1, 2]]), au_names)
        info = write_shard(root, 0, samples, cfg)
        write_manifest(root, [info], config={}, model={"id": "m", "path": "", "hash": ""},
                       au_names=au_names, samples_per_shard=len(samples))  # fmt: skip
        report = validate_dataset(root)
        assert report.ok, [str(p) for p in report.problems]
        loaded = {s["__key__"]: s for s in load_webdataset(root)}
        assert len(loaded) == len(samples)
        for sample in samples:
            got = loaded[f"{sample['index']:09d}"]
            for name in LOSSLESS:
                if name in members or name in ("mesh", "au"):
                    assert np.array_equal(got[name].numpy(), sample[name]), name
                else:
                    assert name not in got
            for name in LATENT_NAMES:
                assert np.array_equal(got["latents"][name].numpy(), sample["latents"][name])
            if "depth" in members:
                assert np.abs(got["depth"].numpy() - sample["depth"]).max() <= 0.0005 + 1e-6
            if "normal" in members:
                assert np.abs(got["normal"].numpy() - sample["normal"]).max() <= 0.01
            if "rgb" in members and sample["rgb"]:
                assert got["rgb"].shape == (len(sample["rgb"]), *sample["rgb"][0].shape)
                assert np.abs(got["rgb"].numpy().astype(int) - np.stack(sample["rgb"])).max() <= 2
            else:
                assert "rgb" not in got
