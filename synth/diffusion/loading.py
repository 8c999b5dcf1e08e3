"""Finding and loading the diffusion weights: SD 1.5 + a depth and a canny ControlNet.

`check_weights(cfg)` runs before any work and either returns where each model is or raises a one-line
`SynthError` naming every missing model and how to fix it. `load_pipeline(cfg)` is the only way a
pipeline is built, for real weights and for the tiny test pipeline alike.
"""

import functools
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from synth.diffusion.config import DiffusionConfig, DiffusionKind, DType, SchedulerKind
from synth.errors import SynthError

log = logging.getLogger(__name__)

_WEIGHTS = ("*.safetensors", "*.bin")
# The components StableDiffusionControlNetPipeline loads from the base model (safety checker and
# feature extractor are switched off), with the files each needs.
_BASE_COMPONENTS = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "scheduler": ("scheduler_config.json",),
}


_DTYPES = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16}


@dataclass(frozen=True)
class WeightSources:
    """Where each model comes from: a local directory or a hub id (resolved through the HF cache)."""

    base: str
    depth: str
    canny: str


def resolve_device(cfg: DiffusionConfig) -> torch.device:
    """`cfg.device`, with auto = CUDA when available, else CPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SynthError(
            f"diffusion.device={cfg.device} but CUDA is not available here; use diffusion.device=cpu"
        )
    return device


def resolve_dtype(cfg: DiffusionConfig, device: torch.device) -> torch.dtype:
    """`cfg.dtype`, with auto = float16 on CUDA and float32 on CPU."""
    if cfg.dtype is DType.auto:
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[cfg.dtype]


def local_files_only(cfg: DiffusionConfig) -> bool:
    """`cfg.local_files_only`, with None = true when HF_HUB_OFFLINE is set or the hub cannot be reached."""
    if cfg.local_files_only is not None:
        return cfg.local_files_only
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return not _hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.cache
def _hub_reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=3):
            return True
    except OSError:
        return False


def resolve_sources(cfg: DiffusionConfig) -> WeightSources:
    """The three model sources of `cfg`; for `kind=tiny` the tiny pipeline, built on first use."""
    if cfg.kind is DiffusionKind.tiny:
        from synth.diffusion import tiny

        root = cfg.resolved_tiny_dir()
        if not tiny.is_tiny_pipeline(root):
            log.info("building the tiny diffusion pipeline in %s (first use)", root)
            tiny.make_tiny_pipeline(root)
        return WeightSources(
            str(root / tiny.BASE), str(root / tiny.CONTROLNET_DEPTH), str(root / tiny.CONTROLNET_CANNY)
        )
    if cfg.kind is DiffusionKind.none:
        raise ValueError("diffusion.kind=none has no weights")
    return WeightSources(cfg.base_model, cfg.controlnet_depth, cfg.controlnet_canny)


def check_weights(cfg: DiffusionConfig) -> WeightSources:
    """Verify, before any work, that every model of `cfg` can be loaded; return their sources.

    Local directories must hold a complete `save_pretrained` layout; hub ids must be in the local HF cache
    when downloads are off (`local_files_only`), else exist on the hub. Raises `SynthError` with one line
    naming every missing model (config key and id or path) and how to fix it.
    """
    sources = resolve_sources(cfg)
    offline = local_files_only(cfg)
    problems = {
        key: problem
        for key, source, kind in (
            ("diffusion.base_model", sources.base, "base"),
            ("diffusion.controlnet_depth", sources.depth, "controlnet"),
            ("diffusion.controlnet_canny", sources.canny, "controlnet"),
        )
        if (problem := _problem(key, source, kind, offline)) is not None
    }
    if problems:
        first = next(iter(problems))
        raise SynthError(
            "diffusion weights missing: "
            + "; ".join(problems.values())
            + f". Fix: point {'each key' if len(problems) > 1 else first} at a local copy of the weights"
            + f" (e.g. {first}=/path/to/weights)"
            + (", download them with `hf download <id>` where there is network" if offline else "")
            + ", or run with diffusion=none (or diffusion=tiny for the offline test pipeline)"
        )
    return sources


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") != 1


def _problem(key: str, source: str, kind: str, offline: bool) -> str | None:
    """None when `source` is loadable, else a short description of what is missing."""
    path = Path(source).expanduser()
    if path.is_dir():
        missing = _missing_files(path, kind)
        return f"{key}={source} lacks {', '.join(missing)}" if missing else None
    if _looks_like_path(source):
        return f"{key}={source} is not a directory"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        cached = Path(snapshot_download(source, local_files_only=True))
    except LocalEntryNotFoundError:
        cached = None
    if cached is not None:
        missing = _missing_files(cached, kind)
        if not missing or not offline:
            return None  # complete in the cache, or the missing files can still be downloaded
        return f"{key}={source} is only partly in the local Hugging Face cache (lacks {', '.join(missing)})"
    if offline:
        return f"{key}={source} is not in the local Hugging Face cache and downloads are off (offline)"
    from huggingface_hub import model_info

    try:
        model_info(source)
    except (HfHubHTTPError, OSError) as err:
        return f"{key}={source} cannot be found on the Hugging Face hub ({type(err).__name__})"
    return None


def _missing_files(root: Path, kind: str) -> list[str]:
    """The files a `save_pretrained` directory of `kind` ("base" or "controlnet") lacks."""
    if kind == "controlnet":
        return _missing_model(root, "config.json")
    if not (root / "model_index.json").is_file():
        return ["model_index.json"]
    missing = []
    for name, files in _BASE_COMPONENTS.items():
        if name == "scheduler":
            missing += [f"scheduler/{f}" for f in files if not (root / name / f).is_file()]
        else:
            missing += [f"{name}/{m}" for m in _missing_model(root / name, *files)]
    tok = root / "tokenizer"
    bpe_files = all((tok / f).is_file() for f in ("vocab.json", "merges.txt"))
    if not (tok / "tokenizer.json").is_file() and not bpe_files:
        missing.append("tokenizer/(tokenizer.json or vocab.json + merges.txt)")
    return missing


def _missing_model(root: Path, *configs: str) -> list[str]:
    missing = [f for f in configs if not (root / f).is_file()]
    if not any(any(root.glob(pattern)) for pattern in _WEIGHTS):
        missing.append("weights (*.safetensors or *.bin)")
    return missing


def load_pipeline(cfg: DiffusionConfig, sources: WeightSources | None = None):
    """Load `StableDiffusionControlNetPipeline` with `MultiControlNetModel([depth, canny])` and the
    configured scheduler, on `resolve_device(cfg)` in `resolve_dtype(cfg)`. `sources` defaults to
    `check_weights(cfg)`."""
    from diffusers import (
        ControlNetModel,
        DPMSolverMultistepScheduler,
        MultiControlNetModel,
        StableDiffusionControlNetPipeline,
        UniPCMultistepScheduler,
    )

    sources = check_weights(cfg) if sources is None else sources
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    offline = local_files_only(cfg)
    controlnet = MultiControlNetModel(
        [
            ControlNetModel.from_pretrained(
                src, dtype=dtype, local_files_only=offline, low_cpu_mem_usage=False
            )
            for src in (sources.depth, sources.canny)
        ]
    )
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        sources.base,
        controlnet=controlnet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=dtype,
        low_cpu_mem_usage=False,
        local_files_only=offline,
    )
    if cfg.scheduler is SchedulerKind.unipc:
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    else:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
