"""`DiffusionStage`: depth + canny maps of a batch of samples -> k RGB images per sample.

Determinism: image j of sample i starts from the noise of its own `torch.Generator` seeded with
`torch_seed(run_seed, i, Stage.DIFFUSION, j)` (a CPU generator, so the noise is the same on any device),
its prompt embedding is computed for that prompt alone (cached), and the schedulers used are
deterministic (UniPC, DPM-Solver++ without SDE noise). So an image does not depend on which other samples
share its batch, up to the floating point differences batched kernels may make (none observed on CPU fp32
in the tests; see docs/diffusion.md).

Speed (CUDA): half precision, all images of a batch (and both halves of classifier-free guidance) in one
UNet / ControlNet call, SDPA attention, channels-last weights, fused QKV projections, optional
`torch.compile`, one batched VAE decode per chunk with the uint8 conversion on the GPU, and the CPU work
(prompt encoding through the cache, conditioning images into pinned memory) done before the denoising
loop.
"""

import logging

import numpy as np
import torch

from synth.diffusion.conditioning import canny_condition, depth_condition, to_control_images
from synth.diffusion.config import DiffusionConfig
from synth.diffusion.loading import check_weights, load_pipeline
from synth.diffusion.prompts import build_prompts, choose_ethnicities
from synth.seeding import Stage, torch_seed

log = logging.getLogger(__name__)

_PROMPT_CACHE_SIZE = 4096


class DiffusionStage:
    """Loaded once; `__call__` maps a batch dict to the same dict plus the generated images.

    Input batch: "index" (B,) int64 global sample indices, "depth" (B, H, W) float32 metres with
    0 = background, "canny" (B, H, W) uint8 0/255. Added: "rgb" (B, k, S, S, 3) uint8, "prompt" (B, k)
    str, "ethnicity" (B, k) str, "diffusion_seed" (B, k) int64, with k = cfg.images_per_sample and
    S = cfg.image_size.
    """

    def __init__(self, cfg: DiffusionConfig, run_seed: int) -> None:
        if not cfg.enabled:
            raise ValueError("DiffusionStage needs diffusion.kind tiny or sd15_controlnet, got none")
        if run_seed < 0:
            raise ValueError(f"run_seed must be >= 0, got {run_seed}")
        self.cfg = cfg
        self.run_seed = run_seed
        self.pipe = load_pipeline(cfg, check_weights(cfg))
        self.device = self.pipe.unet.device
        self.dtype = self.pipe.unet.dtype
        self._embeds: dict[str, torch.Tensor] = {}
        if self.device.type == "cuda":
            tune_pipeline(self.pipe, compile_models=cfg.compile)

    @property
    def cfg_guidance(self) -> bool:
        """Whether classifier-free guidance runs (diffusers' rule: guidance scale > 1)."""
        return self.cfg.guidance_scale > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg, k, size = self.cfg, self.cfg.images_per_sample, self.cfg.image_size
        indices = np.asarray(batch["index"], dtype=np.int64)  # (B,)
        depth, canny = np.asarray(batch["depth"]), np.asarray(batch["canny"])
        if depth.shape[0] != len(indices) or canny.shape[0] != len(indices):
            raise ValueError(
                f"batch sizes differ: index {indices.shape}, depth {depth.shape}, canny {canny.shape}"
            )

        # 1. Prompts and seeds per image.
        ethnicity = choose_ethnicities(cfg, self.run_seed, indices)  # (B, k)
        prompt = build_prompts(cfg, ethnicity)  # (B, k)
        seeds = np.array(
            [[torch_seed(self.run_seed, int(i), Stage.DIFFUSION, j) for j in range(k)] for i in indices],
            dtype=np.int64,
        ).reshape(len(indices), k)

        # 2. Conditioning images, once per sample, on the CPU.
        depth_img = _to_torch(to_control_images(depth_condition(depth), size), self.device)  # (B, 3, S, S)
        canny_img = _to_torch(to_control_images(canny_condition(canny), size), self.device)  # (B, 3, S, S)

        # 3. Denoise the B * k images in chunks of cfg.batch_size, flattened sample-major.
        rows = np.repeat(np.arange(len(indices)), k)  # (B*k,) sample row of each image
        flat_prompts, flat_seeds = prompt.ravel(), seeds.ravel()
        chunks = []
        for start in range(0, len(rows), cfg.batch_size):
            sl = slice(start, start + cfg.batch_size)
            cond = depth_img[rows[sl]], canny_img[rows[sl]]
            chunks.append(self._generate(*cond, flat_prompts[sl], flat_seeds[sl]))
        rgb = torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, size, size, 3), np.uint8)

        out = dict(batch)
        out["rgb"] = rgb.reshape(len(indices), k, size, size, 3)
        out["prompt"] = prompt
        out["ethnicity"] = ethnicity
        out["diffusion_seed"] = seeds
        return out

    @torch.inference_mode()
    def _generate(
        self, depth_img: torch.Tensor, canny_img: torch.Tensor, prompts: np.ndarray, seeds: np.ndarray
    ) -> torch.Tensor:
        """n images: depth_img, canny_img (n, 3, S, S) on the device, prompts (n,), seeds (n,) -> (n, S, S, 3)
        uint8 on the device."""
        cfg = self.cfg
        pos = torch.cat([self._embed(str(p)) for p in prompts])  # (n, 77, D)
        neg = self._embed(cfg.negative_prompt).expand(len(prompts), -1, -1) if self.cfg_guidance else None
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents = self.pipe(
            prompt_embeds=pos,
            negative_prompt_embeds=neg,
            image=[depth_img.to(self.dtype), canny_img.to(self.dtype)],
            height=cfg.image_size,
            width=cfg.image_size,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            controlnet_conditioning_scale=[cfg.depth_scale, cfg.canny_scale],
            generator=generators,
            output_type="latent",
        ).images  # (n, 4, S/f, S/f)
        vae = self.pipe.vae
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]  # (n, 3, S, S), [-1, 1]
        # Same rounding as diffusers' numpy -> PIL postprocessing.
        image = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return image.permute(0, 2, 3, 1)

    def _embed(self, text: str) -> torch.Tensor:
        """(1, 77, D) text embedding of `text` on the device, computed once per distinct text."""
        hit = self._embeds.get(text)
        if hit is None:
            if len(self._embeds) >= _PROMPT_CACHE_SIZE:
                self._embeds.clear()
            hit, _ = self.pipe.encode_prompt(text, self.device, 1, False)
            self._embeds[text] = hit
        return hit


def tune_pipeline(pipe, compile_models: bool) -> None:
    """In place: SDPA attention and channels-last weights for the UNet, both ControlNets and the VAE, fused
    QKV projections in the UNet and VAE (one GEMM instead of three; diffusers offers no fusion for
    ControlNetModel), and optionally `torch.compile` of the UNet, the ControlNets and the VAE decoder. The
    stage applies it on CUDA; it is numerically neutral up to rounding on any device."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for net in [pipe.unet, *pipe.controlnet.nets, pipe.vae]:
        net.set_attn_processor(AttnProcessor2_0())
        net.to(memory_format=torch.channels_last)
    pipe.unet.fuse_qkv_projections()
    pipe.vae.fuse_qkv_projections()
    if compile_models:
        pipe.unet = torch.compile(pipe.unet)
        for i, net in enumerate(pipe.controlnet.nets):
            pipe.controlnet.nets[i] = torch.compile(net)
        pipe.vae.decode = torch.compile(pipe.vae.decode)


def _to_torch(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 host array on `device`, through pinned memory and an asynchronous copy on CUDA."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor
