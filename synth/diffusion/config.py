"""`DiffusionConfig`: the schema of the `diffusion` config group (presets in `synth/conf/diffusion/`)."""

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

ETHNICITIES = ("Black", "Chinese", "Indian", "Filipino", "White", "Hispanic")
"""The paper's ethnicity tokens (BabyFlow section 4.5)."""

PROMPT_TEMPLATE = "Realistic frontal view portrait of {article} {ethnicity} infant"
"""The paper's structured prompt; `{article}` becomes "a" or "an" to agree with the token."""

NEGATIVE_PROMPT = "cartoon, drawing, painting, illustration, deformed, disfigured, blurry, low quality"

BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CONTROLNET_DEPTH = "lllyasviel/control_v11f1p_sd15_depth"
CONTROLNET_CANNY = "lllyasviel/control_v11p_sd15_canny"


# Enum members are lower case because they are what users type (`diffusion.scheduler=dpmsolver_pp`).
class DiffusionKind(Enum):
    """Which pipeline runs: none (diffusion off), the tiny offline test pipeline, or SD 1.5 + ControlNets."""

    none = "none"
    tiny = "tiny"
    sd15_controlnet = "sd15_controlnet"


class SchedulerKind(Enum):
    unipc = "unipc"
    dpmsolver_pp = "dpmsolver_pp"


class EthnicityMode(Enum):
    """SAMPLE: each sample draws its tokens from its own seeded stream; SWEEP: tokens cycle with the index."""

    sample = "sample"
    sweep = "sweep"


class DType(Enum):
    """AUTO: float16 on CUDA, float32 on CPU (CPU half precision is slow and inexact)."""

    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class DiffusionConfig:
    """Diffusion stage settings; `kind=none` turns the stage off.

    Weights: `base_model`, `controlnet_depth` and `controlnet_canny` are each a Hugging Face hub id or a
    local directory (a `save_pretrained` layout). `kind=tiny` ignores them and uses the tiny pipeline in
    `tiny_dir` (default `$SYNTH_CACHE_DIR/diffusion/tiny` or `~/.cache/synth/diffusion/tiny`), built on
    first use. `local_files_only=None` means: true when `HF_HUB_OFFLINE` is set or the hub is unreachable.
    """

    kind: DiffusionKind = DiffusionKind.none
    base_model: str = BASE_MODEL
    controlnet_depth: str = CONTROLNET_DEPTH
    controlnet_canny: str = CONTROLNET_CANNY
    local_files_only: bool | None = None
    tiny_dir: str | None = None
    scheduler: SchedulerKind = SchedulerKind.unipc
    steps: int = 20
    guidance_scale: float = 7.5
    depth_scale: float = 1.0
    canny_scale: float = 0.5
    negative_prompt: str = NEGATIVE_PROMPT
    image_size: int = 512
    images_per_sample: int = 1
    prompt_template: str = PROMPT_TEMPLATE
    ethnicities: list[str] = field(default_factory=lambda: list(ETHNICITIES))
    ethnicity_mode: EthnicityMode = EthnicityMode.sample
    dtype: DType = DType.auto
    device: str = "auto"
    batch_size: int = 8
    compile: bool = False

    def __post_init__(self) -> None:
        # OmegaConf hands enums over already converted; plain Python callers may pass their values.
        self.kind = DiffusionKind(self.kind)
        self.scheduler = SchedulerKind(self.scheduler)
        self.ethnicity_mode = EthnicityMode(self.ethnicity_mode)
        self.dtype = DType(self.dtype)
        self.ethnicities = list(self.ethnicities)
        for key in ("base_model", "controlnet_depth", "controlnet_canny"):
            if not str(getattr(self, key)).strip():
                raise ValueError(f"diffusion.{key} is empty: give a hub id or a local directory")
        _check_range("steps", self.steps, 1, 1000)
        _check_range("guidance_scale", self.guidance_scale, 0.0, 50.0)
        _check_range("depth_scale", self.depth_scale, 0.0, 5.0)
        _check_range("canny_scale", self.canny_scale, 0.0, 5.0)
        _check_range("image_size", self.image_size, 16, 2048)
        if self.image_size % 8:
            raise ValueError(
                f"diffusion.image_size={self.image_size} must be a multiple of 8 (VAE and UNet strides)"
            )
        _check_range("images_per_sample", self.images_per_sample, 1, 64)
        _check_range("batch_size", self.batch_size, 1, 4096)
        if not self.ethnicities or any(not str(t).strip() for t in self.ethnicities):
            raise ValueError(
                f"diffusion.ethnicities={self.ethnicities} must be a non-empty list of non-empty tokens"
            )
        if "{ethnicity}" not in self.prompt_template:
            raise ValueError(
                f"diffusion.prompt_template={self.prompt_template!r} must contain '{{ethnicity}}' "
                "(and may contain '{article}')"
            )
        try:
            self.prompt_template.format(article="a", ethnicity="x")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"diffusion.prompt_template={self.prompt_template!r} is not a valid template ({err}); "
                "only the fields {article} and {ethnicity} are allowed"
            ) from None
        if not _DEVICE.match(self.device):
            raise ValueError(f"diffusion.device={self.device!r} must be auto, cpu, cuda or cuda:N")

    @property
    def enabled(self) -> bool:
        return self.kind is not DiffusionKind.none

    def resolved_tiny_dir(self) -> Path:
        """Where the tiny pipeline lives (`tiny_dir`, else under the synth user cache)."""
        if self.tiny_dir is not None:
            return Path(self.tiny_dir).expanduser()
        root = os.environ.get("SYNTH_CACHE_DIR")
        base = Path(root).expanduser() if root else Path.home() / ".cache" / "synth"
        return base / "diffusion" / "tiny"


def _check_range(key: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"diffusion.{key}={value!r} is out of range: allowed {lo} .. {hi}")
