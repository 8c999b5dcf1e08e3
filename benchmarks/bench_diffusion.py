"""Diffusion stage throughput: our batched `DiffusionStage` vs a naive per-image diffusers loop.

    python benchmarks/bench_diffusion.py            # CUDA: real-size SD1.5 + 2 ControlNets, 512x512
    python benchmarks/bench_diffusion.py --tiny     # CPU smoke test of the same code path (tiny pipeline)

Real-size mode builds the SD 1.5 UNet, two v1.1 ControlNets, the VAE and the CLIP ViT-L/14 text encoder
with RANDOM weights from their published configs (written below as dicts; same shapes, so the same FLOPs
as the real checkpoints; no download), saves them in fp16 with `save_pretrained`, and loads them through
`synth.diffusion.loading` exactly as real weights would be. Both contenders run 20 steps with CFG 7.5 at
512x512 in half precision on the same GPU in the same run:
- naive: the diffusers tutorial loop, one `pipe(prompt=..., image=[PIL depth, PIL canny])` call per image,
  fp16, PIL output;
- stage: `DiffusionStage.__call__` on batches of samples (cfg.batch_size images per pipeline call, CFG
  halves batched, channels-last, SDPA, cached prompt embeddings, batched VAE decode, optional compile).
It prints images/s of both and their ratio, the FLOPs per image counted with `torch.utils.flop_counter`
on models built from the configs, the GPU's measured bf16 matmul peak, and the fraction of it achieved.
Goals (issue 5): stage >= 4x naive and >= 6 images/s on one H100.
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synth.hardware import cpu_model

# Published configs (huggingface.co: stable-diffusion-v1-5/stable-diffusion-v1-5 unet/vae/text_encoder
# config.json, lllyasviel/control_v11f1p_sd15_depth config.json), reduced to the keys that differ from
# the diffusers / transformers defaults or that fix the shapes.
_SD15_BLOCKS = {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
    "in_channels": 4,
}
UNET = {
    **_SD15_BLOCKS,
    "sample_size": 64,
    "out_channels": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
CONTROLNET = {**_SD15_BLOCKS, "conditioning_embedding_out_channels": [16, 32, 96, 256]}
VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

log = logging.getLogger("bench_diffusion")


def build_real_size(root: Path, device: torch.device) -> None:
    """Random-weight SD 1.5 + two ControlNets from the configs above, saved in fp16 under `root`."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from synth.diffusion import tiny

    torch.manual_seed(0)  # weight init draws from the global RNG; this script owns its process
    with torch.device(device):  # initialise on the GPU: seconds instead of minutes on the CPU
        unet = UNet2DConditionModel(**UNET).half()
        controlnets = [ControlNetModel(**CONTROLNET).half() for _ in range(2)]
        vae = AutoencoderKL(**VAE).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)).half()
    # The project's own byte-level tokenizer: ids < 514, valid for the 49408-token embedding.
    tokenizer = tiny._tokenizer(root / "tokenizer_src")
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**tiny.SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / tiny.BASE)
    controlnets[0].save_pretrained(root / tiny.CONTROLNET_DEPTH)
    controlnets[1].save_pretrained(root / tiny.CONTROLNET_CANNY)


def synthetic_maps(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n face-like depth blobs (n, size, size) float32 metres and their Canny edges (n, size, size) uint8."""
    import cv2

    yy, xx = np.mgrid[:size, :size] + 0.5
    depth, canny = [], []
    for i in range(n):
        r = size * (0.3 + 0.01 * (i % 9))
        d2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / r**2
        z = np.where(d2 < 1, 0.5 - 0.08 * np.sqrt(np.clip(1 - d2, 0, 1)), 0).astype(np.float32)
        depth.append(z)
        canny.append(cv2.Canny((z * 255 / z.max()).astype(np.uint8), 30, 90))
    return np.stack(depth), np.stack(canny)


def count_flops_per_image(pipe, cfg, device: torch.device) -> float:
    """FLOPs of one image: steps x (UNet + both ControlNets) on the CFG pair, plus one VAE decode."""
    from torch.utils.flop_counter import FlopCounterMode

    f = pipe.vae_scale_factor
    latent_size, batch = cfg.image_size // f, 2 if cfg.guidance_scale > 1 else 1
    dtype = pipe.unet.dtype
    latents = torch.zeros(batch, 4, latent_size, latent_size, device=device, dtype=dtype)
    text = torch.zeros(batch, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    cond = torch.zeros(batch, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as step:
        down, mid = pipe.controlnet(latents, t, text, [cond, cond], [1.0, 1.0], return_dict=False)
        pipe.unet(latents, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    with torch.inference_mode(), FlopCounterMode(display=False) as decode:
        pipe.vae.decode(latents[:1])
    return float(cfg.steps * step.get_total_flops() + decode.get_total_flops())


def bf16_matmul_peak(device: torch.device) -> float:
    """Measured dense bf16 matmul FLOP/s (8192^3 GEMMs) on `device`."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    reps, t0 = 30, time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def naive_loop(pipe, cfg, depth: np.ndarray, canny: np.ndarray, prompts: list[str], device) -> float:
    """Seconds for the tutorial loop: one pipeline call per image, PIL in, PIL out."""
    from PIL import Image

    from synth.diffusion.conditioning import depth_condition

    depth_u8 = (depth_condition(depth) * 255).round().astype(np.uint8)
    depth_pil = [Image.fromarray(d).convert("RGB") for d in depth_u8]
    canny_pil = [Image.fromarray(c).convert("RGB") for c in canny]
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        pipe(
            prompt=prompt,
            negative_prompt=cfg.negative_prompt,
            image=[depth_pil[i], canny_pil[i]],
            height=cfg.image_size,
            width=cfg.image_size,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            controlnet_conditioning_scale=[cfg.depth_scale, cfg.canny_scale],
            generator=torch.Generator(device).manual_seed(i),
        ).images[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny pipeline")
    parser.add_argument(
        "--images", type=int, default=None, help="images through the stage (default 64, tiny 16)"
    )
    parser.add_argument("--naive-images", type=int, default=None, help="images through the naive loop")
    parser.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (default 16)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20, tiny 4)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 512, tiny 64)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet, ControlNets and VAE")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workdir", default=None, help="where the random weights are saved (default: tmp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from synth.diffusion.config import ETHNICITIES, DiffusionConfig
    from synth.diffusion.loading import load_pipeline
    from synth.diffusion.prompts import build_prompt
    from synth.diffusion.stage import DiffusionStage
    from synth.diffusion.tiny import BASE, CONTROLNET_CANNY, CONTROLNET_DEPTH, make_tiny_pipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        log.info("no CUDA device: the real-size benchmark needs a GPU; nothing measured.")
        log.info("Run `python benchmarks/bench_diffusion.py --tiny` for a CPU smoke test of the code path.")
        return 0
    device = torch.device("cuda" if cuda and not args.tiny else "cpu")
    tiny = args.tiny
    n_images = args.images or (16 if tiny else 64)
    n_naive = args.naive_images or (4 if tiny else 8)
    size = args.size or (64 if tiny else 512)
    steps = args.steps or (4 if tiny else 20)
    batch_size = args.batch_size or 16

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_diffusion_") as tmp:
        root = Path(tmp) / "weights"
        t0 = time.perf_counter()
        if tiny:
            make_tiny_pipeline(root)
        else:
            build_real_size(root, device)
        log.info("weights built and saved in %.1f s", time.perf_counter() - t0)
        dtype = "float32" if device.type == "cpu" else "float16"
        cfg = DiffusionConfig(
            kind="sd15_controlnet",
            base_model=str(root / BASE),
            controlnet_depth=str(root / CONTROLNET_DEPTH),
            controlnet_canny=str(root / CONTROLNET_CANNY),
            local_files_only=True,
            image_size=size,
            steps=steps,
            guidance_scale=7.5,
            batch_size=batch_size,
            dtype=dtype,
            device=device.type,
            compile=args.compile,
        )
        depth, canny = synthetic_maps(max(n_images, n_naive), size)

        # Naive loop first, on its own untouched pipeline (same weights, same dtype).
        naive = load_pipeline(cfg)
        prompts = [build_prompt(cfg.prompt_template, ETHNICITIES[i % 6]) for i in range(n_naive)]
        naive_loop(naive, cfg, depth[:1], canny[:1], prompts[:1], device)  # warm-up
        naive_s = naive_loop(naive, cfg, depth[:n_naive], canny[:n_naive], prompts, device)
        flops = count_flops_per_image(naive, cfg, device)
        del naive
        if cuda:
            torch.cuda.empty_cache()

        stage = DiffusionStage(cfg, run_seed=0)
        index = np.arange(n_images, dtype=np.int64)
        batch = {"index": index, "depth": depth[:n_images], "canny": canny[:n_images]}
        warm = {k: v[:batch_size] for k, v in batch.items()}
        t0 = time.perf_counter()
        stage(warm)  # warm-up (and compilation with --compile)
        log.info("stage warm-up %.1f s", time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = stage(batch)
        stage_s = time.perf_counter() - t0
        assert out["rgb"].shape == (n_images, 1, size, size, 3)

    naive_ips, stage_ips = n_naive / naive_s, n_images / stage_s
    hardware = f"{_gpu_name(device)} | {cpu_model()}, {torch.get_num_threads()} torch threads"
    log.info("hardware: %s | torch %s", hardware, torch.__version__)
    log.info(
        "setting: %dx%d, %d steps, CFG 7.5, %s, batch %d images, compile=%s",
        size,
        size,
        steps,
        dtype,
        batch_size,
        args.compile,
    )
    log.info("naive per-image loop: %d images in %.2f s = %.3f images/s", n_naive, naive_s, naive_ips)
    log.info("DiffusionStage:       %d images in %.2f s = %.3f images/s", n_images, stage_s, stage_ips)
    log.info("speed-up stage / naive: %.2fx (goals on one H100: >= 4x, >= 6 images/s)", stage_ips / naive_ips)
    log.info("FLOPs per image (counted): %.4g GFLOP", flops / 1e9)
    if device.type == "cuda":
        peak = bf16_matmul_peak(device)
        achieved = flops * stage_ips
        log.info(
            "achieved %.1f TFLOP/s = %.1f%% of the measured bf16 matmul peak %.1f TFLOP/s",
            achieved / 1e12,
            100 * achieved / peak,
            peak / 1e12,
        )
    return 0


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU (CPU run)"


if __name__ == "__main__":
    sys.exit(main())
