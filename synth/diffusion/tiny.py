"""A randomly initialised, very small SD 1.5 + two-ControlNet pipeline for offline tests and quick runs.

Same classes as the real model (UNet2DConditionModel, two ControlNetModel, AutoencoderKL, CLIPTextModel,
CLIPTokenizer, the SD 1.5 scheduler), so the stage runs the real loading and inference code; only the
widths are tiny (~7.5 MB on disk, ~0.2 s per 64x64 image at 4 steps on one CPU core). The images are
noise, but deterministic noise that depends on the prompt, both conditioning maps and the seed.

Directory layout (the same as real weights laid out locally, so `diffusion.base_model=DIR/base` etc. would
load it as well):
    DIR/base/               StableDiffusionPipeline.save_pretrained (no safety checker)
    DIR/controlnet_depth/   ControlNetModel.save_pretrained
    DIR/controlnet_canny/   ControlNetModel.save_pretrained
    DIR/synth_tiny.json     seed and library versions
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from synth.atomic import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

BASE, CONTROLNET_DEPTH, CONTROLNET_CANNY = "base", "controlnet_depth", "controlnet_canny"
MARKER = "synth_tiny.json"
TINY_VERSION = 1
"""Bump when the tiny architecture changes, so stale cached copies are rebuilt."""

_WIDTHS = (8, 16)  # UNet / ControlNet block widths
_TEXT_DIM = 32  # CLIP hidden size = cross-attention dim
# SD 1.5's noise schedule (stable-diffusion-v1-5 scheduler/scheduler_config.json).
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "prediction_type": "epsilon",
}


def is_tiny_pipeline(path: str | os.PathLike) -> bool:
    """Whether `path` holds a complete tiny pipeline of the current `TINY_VERSION`."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("tiny_version") == TINY_VERSION


def make_tiny_pipeline(out_dir: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the tiny pipeline from `seed` and save it to `out_dir` atomically (temp dir + rename).

    Returns `out_dir`. An existing complete tiny pipeline is kept unless `overwrite`; any other existing
    content is an error, so a user's directory is never replaced by accident.
    """
    out = Path(out_dir).expanduser()
    if out.exists():
        if is_tiny_pipeline(out) and not overwrite:
            return out
        if not is_tiny_pipeline(out) and any(out.iterdir()):
            raise FileExistsError(
                f"{out} exists and is not a synth tiny pipeline; choose an empty or new directory"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        _save_components(tmp, seed)
        if out.exists():
            if is_tiny_pipeline(out) and not overwrite:  # another process finished first: keep its copy
                shutil.rmtree(tmp)
                return out
            shutil.rmtree(out)  # `overwrite`, or an empty directory
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    log.info("tiny diffusion pipeline written to %s", out)
    return out


def _save_components(root: Path, seed: int) -> None:
    """Build every component from `seed` and save the three model directories and the marker into `root`."""
    # Module constructors draw from torch's global RNG; fork it so the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _tokenizer(root / "tokenizer_src")
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_TEXT_DIM,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=_WIDTHS,
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=_TEXT_DIM,
            attention_head_dim=4,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
        controlnets = [_controlnet(), _controlnet()]
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / BASE, safe_serialization=True)
    controlnets[0].save_pretrained(root / CONTROLNET_DEPTH, safe_serialization=True)
    controlnets[1].save_pretrained(root / CONTROLNET_CANNY, safe_serialization=True)
    shutil.rmtree(root / "tokenizer_src")
    marker = {
        "tiny_version": TINY_VERSION,
        "seed": seed,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    atomic_write_text(root / MARKER, json.dumps(marker, indent=2) + "\n")


def _controlnet() -> ControlNetModel:
    """A tiny ControlNet; its zero-initialised output convs get small random weights so that the
    conditioning images visibly change the result (a freshly trained ControlNet starts as a no-op)."""
    net = ControlNetModel(
        in_channels=4,
        block_out_channels=_WIDTHS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
        # log2(VAE scale factor 2) + 1 = 2 entries: the conditioning image is downsampled to latent size.
        conditioning_embedding_out_channels=(8, 16),
    )
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.05)
        net.controlnet_cond_embedding.conv_out.weight.normal_(0.0, 0.05)
    return net


def _tokenizer(src: Path) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer whose vocabulary (every byte symbol, alone and word-final) and
    merge list (empty: words split into bytes) the project writes itself, loaded back from its files."""
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    src.mkdir(parents=True)
    ids = {tok: i for i, tok in enumerate(vocab)}
    atomic_write_text(src / "vocab.json", json.dumps(ids, ensure_ascii=False))
    atomic_write_text(src / "merges.txt", "#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(src, model_max_length=77)
