"""RenderStage on hand-made batches: outputs, seeding per sample, batch and thread independence."""

import numpy as np
import pytest
import torch

from synth.errors import SynthError
from synth.render.camera import sample_cameras, sample_lights
from synth.render.config import RasterBackend, RenderConfig
from synth.render.raster import pytorch3d_available
from synth.render.stage import RenderStage, face_centers
from synth.seeding import Stage, numpy_rng

MAPS = ("depth", "normals", "mask", "shaded", "canny", "lmk2d", "K", "R", "t", "light")


@pytest.fixture(scope="module")
def batch(anny_head) -> dict[str, np.ndarray]:
    verts, _ = anny_head
    rng = np.random.default_rng(0)
    # four slightly different heads (scaled, shifted): each sample's camera follows its own mesh
    scale = rng.uniform(0.9, 1.1, (4, 1, 1)).astype(np.float32)
    shift = rng.uniform(-0.05, 0.05, (4, 1, 3)).astype(np.float32)
    v = verts[None] * scale + shift
    return {"index": np.array([10, 11, 12, 13], dtype=np.int64), "vertices": v, "lmk3d": v[:, ::150].copy()}


@pytest.fixture(scope="module")
def stage(anny_head) -> RenderStage:
    return RenderStage(RenderConfig(image_size=64, device="cpu"), anny_head[1], run_seed=3)


@pytest.fixture(scope="module")
def rendered(stage, batch) -> dict[str, np.ndarray]:
    return stage(batch)


def test_outputs_and_the_cameras_they_were_rendered_with(batch, rendered) -> None:
    b, n_lmk = 4, batch["lmk3d"].shape[1]
    shapes = {
        "depth": (b, 64, 64),
        "normals": (b, 64, 64, 3),
        "mask": (b, 64, 64),
        "shaded": (b, 64, 64),
        "canny": (b, 64, 64),
        "lmk2d": (b, n_lmk, 3),
        "K": (b, 3, 3),
        "R": (b, 3, 3),
        "t": (b, 3),
        "light": (b, 4),
    }
    for name, shape in shapes.items():
        assert rendered[name].shape == shape, name
    assert rendered["vertices"] is batch["vertices"] and rendered["index"] is batch["index"]
    cfg = RenderConfig(image_size=64)
    cams = sample_cameras(
        cfg, [numpy_rng(3, i, Stage.CAMERA) for i in batch["index"]], face_centers(batch["vertices"])
    )
    np.testing.assert_array_equal(rendered["R"], cams.R.numpy())
    np.testing.assert_array_equal(rendered["t"], cams.t.numpy())
    np.testing.assert_array_equal(rendered["K"], cams.K.numpy())
    lights = sample_lights(cfg, [numpy_rng(3, i, Stage.LIGHT) for i in batch["index"]])
    np.testing.assert_array_equal(rendered["light"], lights.as_array())
    # every head is in view and the face centre projects near the image centre
    assert (rendered["mask"].reshape(b, -1).mean(1) > 0.15).all()


def test_a_sample_renders_the_same_bytes_alone_in_any_batch_and_thread_count(stage, batch, rendered) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = stage({k: v[2:3] for k, v in batch.items()})
        torch.set_num_threads(2)
        reordered = stage({k: v[[3, 2, 0]] for k, v in batch.items()})
    finally:
        torch.set_num_threads(threads)
    for name in MAPS:
        assert np.array_equal(alone[name][0], rendered[name][2]), name
        assert np.array_equal(reordered[name][1], rendered[name][2]), name


def test_a_different_index_or_run_seed_gives_a_different_camera(anny_head, stage, batch, rendered) -> None:
    other = RenderStage(RenderConfig(image_size=64, device="cpu"), anny_head[1], run_seed=4)(batch)
    assert not np.array_equal(other["R"], rendered["R"])
    moved = stage({**batch, "index": batch["index"] + 1})
    np.testing.assert_array_equal(moved["light"][:3], rendered["light"][1:])  # the light follows the index
    assert (moved["light"] != rendered["light"]).any(axis=1).all()


def test_without_landmarks_there_is_no_lmk2d(stage, batch) -> None:
    out = stage({"index": batch["index"][:1], "vertices": batch["vertices"][:1]})
    assert "lmk2d" not in out and out["depth"].shape == (1, 64, 64)


def test_bad_batches_and_arguments_raise(anny_head, stage, batch) -> None:
    with pytest.raises(ValueError, match="vertices"):
        stage({"index": batch["index"][:2], "vertices": batch["vertices"][:3]})
    with pytest.raises(ValueError, match="faces"):
        RenderStage(RenderConfig(), np.zeros((3, 4), np.int64), 0)
    with pytest.raises(ValueError, match="run_seed"):
        RenderStage(RenderConfig(), anny_head[1], -1)
    if not pytorch3d_available():
        with pytest.raises(SynthError, match=r"render\.backend=pytorch3d"):
            RenderStage(RenderConfig(backend=RasterBackend.pytorch3d), anny_head[1], 0)
