"""The whole stage on CPU through the tiny pipeline, loaded from disk by the normal loading code."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from synth.diffusion.conditioning import canny_condition, depth_condition, to_control_images
from synth.diffusion.config import ETHNICITIES, DiffusionConfig
from synth.diffusion.prompts import build_prompts
from synth.diffusion.stage import DiffusionStage, tune_pipeline
from synth.seeding import Stage, torch_seed

SIZE = 64
RUN_SEED = 7
# Batched CPU kernels (oneDNN convolutions, GEMMs) may pick other blockings for other batch sizes, so an
# image generated alongside others can differ from the same image generated alone by float rounding,
# which after 4 denoising steps and the VAE shows up as at most a few uint8 levels.
BATCH_TOLERANCE = 2


def _cfg(tiny_dir: Path, **changes) -> DiffusionConfig:
    base = dict(
        kind="tiny", tiny_dir=str(tiny_dir), image_size=SIZE, steps=4, images_per_sample=2, batch_size=3
    )
    return DiffusionConfig(**{**base, **changes})


def _batch(indices: list[int], size: int = SIZE) -> dict[str, np.ndarray]:
    """A face-like depth blob per sample (its radius and distance a function of the index) and its edges."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    depth, canny = [], []
    for i in indices:
        r = size * (0.25 + 0.02 * (i % 7))
        d2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / r**2
        z = np.where(d2 < 1, 0.5 + 0.1 * (i % 3) - 0.08 * np.sqrt(np.clip(1 - d2, 0, 1)), 0).astype(
            np.float32
        )
        depth.append(z)
        canny.append(cv2.Canny((z * 255 / z.max()).astype(np.uint8), 30, 90))
    return {
        "index": np.asarray(indices, dtype=np.int64),
        "depth": np.stack(depth),
        "canny": np.stack(canny),
        "mask": np.stack(depth) > 0,
    }


@pytest.fixture(scope="module")
def stage(tiny_diffusion_dir: Path) -> DiffusionStage:
    return DiffusionStage(_cfg(tiny_diffusion_dir), RUN_SEED)


def test_outputs_shapes_prompts_and_seeds(stage: DiffusionStage) -> None:
    batch = _batch([3, 11, 42])
    out = stage(batch)
    assert out["rgb"].shape == (3, 2, SIZE, SIZE, 3) and out["rgb"].dtype == np.uint8
    assert out["prompt"].shape == out["ethnicity"].shape == out["diffusion_seed"].shape == (3, 2)
    assert set(out["ethnicity"].ravel()) <= set(ETHNICITIES)
    assert np.array_equal(out["prompt"], build_prompts(stage.cfg, out["ethnicity"]))
    expected_seeds = [[torch_seed(RUN_SEED, i, Stage.DIFFUSION, j) for j in range(2)] for i in (3, 11, 42)]
    assert out["diffusion_seed"].dtype == np.int64 and out["diffusion_seed"].tolist() == expected_seeds
    for key in ("index", "depth", "canny", "mask"):  # the input columns pass through untouched
        assert out[key] is batch[key]
    assert out["rgb"].std() > 10  # not a constant image
    assert not np.array_equal(out["rgb"][0, 0], out["rgb"][0, 1])  # the k variants differ


def test_deterministic_and_independent_of_batch_composition(stage: DiffusionStage) -> None:
    together = stage(_batch([3, 11, 42]))["rgb"]
    assert np.array_equal(together, stage(_batch([3, 11, 42]))["rgb"])  # same call, same bytes
    alone = stage(_batch([11]))["rgb"][0]
    with_others = stage(_batch([99, 11]))["rgb"][1]
    for other in (alone, with_others):
        diff = np.abs(other.astype(np.int16) - together[1]).max()
        assert diff <= BATCH_TOLERANCE, diff


def test_run_seed_changes_the_images(stage: DiffusionStage) -> None:
    ref = stage(_batch([11]))["rgb"]
    other_seed = DiffusionStage(stage.cfg, RUN_SEED + 1)(_batch([11]))["rgb"]
    assert np.abs(other_seed.astype(np.int16) - ref).mean() > 5


def test_depth_goes_to_the_depth_controlnet_and_canny_to_the_canny_one(stage: DiffusionStage) -> None:
    seen: list[list[torch.Tensor]] = [[], []]
    hooks = [
        net.register_forward_pre_hook(
            lambda _m, _a, kw, i=i: seen[i].append(kw["controlnet_cond"]), with_kwargs=True
        )
        for i, net in enumerate(stage.pipe.controlnet.nets)
    ]
    try:
        batch = _batch([4, 9])
        stage(batch)
    finally:
        for hook in hooks:
            hook.remove()
    depth = to_control_images(depth_condition(batch["depth"]), SIZE)  # (2, 3, S, S)
    canny = to_control_images(canny_condition(batch["canny"]), SIZE)
    # Each denoising step sees every image twice (classifier-free guidance halves), k = 2 images per sample.
    expected = [np.concatenate([np.repeat(m, 2, axis=0)] * 2) for m in (depth, canny)]
    assert len(seen[0]) == len(seen[1]) == stage.cfg.steps * 2  # 4 images in chunks of 3: two calls
    for net, maps in enumerate(expected):
        first_chunk, second_chunk = seen[net][0].numpy(), seen[net][-1].numpy()
        np.testing.assert_array_equal(first_chunk, np.concatenate([maps[:3], maps[4:7]]))
        np.testing.assert_array_equal(second_chunk, np.concatenate([maps[3:4], maps[7:8]]))
    assert not np.array_equal(expected[0], expected[1])


def test_matches_a_plain_diffusers_call(stage: DiffusionStage) -> None:
    """The stage's cached embeddings, per-image generators and own VAE decode reproduce diffusers' standard
    path for one image: prompt strings in, numpy image out."""
    batch = _batch([5])
    out = stage(batch)
    cfg = stage.cfg
    control = [
        torch.from_numpy(to_control_images(depth_condition(batch["depth"]), SIZE)),
        torch.from_numpy(to_control_images(canny_condition(batch["canny"]), SIZE)),
    ]
    image = stage.pipe(
        prompt=str(out["prompt"][0, 1]),
        negative_prompt=cfg.negative_prompt,
        image=control,
        height=SIZE,
        width=SIZE,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        controlnet_conditioning_scale=[cfg.depth_scale, cfg.canny_scale],
        generator=torch.Generator().manual_seed(int(out["diffusion_seed"][0, 1])),
        output_type="np",
    ).images[0]
    reference = (image * 255).round().astype(np.int16)
    assert np.abs(reference - out["rgb"][0, 1]).max() <= 1


def test_dpmsolver_without_guidance_sweep_and_resized_maps(tiny_diffusion_dir: Path) -> None:
    cfg = _cfg(
        tiny_diffusion_dir,
        scheduler="dpmsolver_pp",
        guidance_scale=1.0,
        images_per_sample=6,
        ethnicity_mode="sweep",
        image_size=32,
        batch_size=4,
    )
    stage = DiffusionStage(cfg, 0)
    assert type(stage.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and not stage.cfg_guidance
    out = stage(_batch([0, 1]))  # 64x64 maps, 32x32 images
    assert out["rgb"].shape == (2, 6, 32, 32, 3)
    assert all(list(row) == list(ETHNICITIES) for row in out["ethnicity"])
    assert np.array_equal(out["rgb"], stage(_batch([0, 1]))["rgb"])


def test_gpu_tuning_keeps_the_images(stage: DiffusionStage) -> None:
    """SDPA, fused QKV and channels-last weights (the CUDA path, minus compile) change rounding only."""
    batch = _batch([2, 8])
    ref = stage(batch)["rgb"]
    tuned = DiffusionStage(stage.cfg, RUN_SEED)
    tune_pipeline(tuned.pipe, compile_models=False)
    assert tuned.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert {type(p).__name__ for p in tuned.pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert np.abs(tuned(batch)["rgb"].astype(np.int16) - ref).max() <= BATCH_TOLERANCE


def test_empty_batch_and_disabled_config(stage: DiffusionStage) -> None:
    empty = {
        "index": np.zeros(0, np.int64),
        "depth": np.zeros((0, SIZE, SIZE), np.float32),
        "canny": np.zeros((0, SIZE, SIZE), np.uint8),
    }
    out = stage(empty)
    assert out["rgb"].shape == (0, 2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="kind"):
        DiffusionStage(DiffusionConfig(), 0)
