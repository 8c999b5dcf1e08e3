from pathlib import Path

import pytest

from synth.cli.diffusion import compose_diffusion
from synth.diffusion.config import (
    BASE_MODEL,
    CONTROLNET_CANNY,
    CONTROLNET_DEPTH,
    ETHNICITIES,
    DiffusionConfig,
    DiffusionKind,
    DType,
    SchedulerKind,
)
from synth.errors import SynthError


def test_presets_compose_to_validated_configs() -> None:
    none = compose_diffusion(["diffusion=none"])
    assert none.kind is DiffusionKind.none and not none.enabled
    tiny = compose_diffusion(["diffusion=tiny"])
    assert tiny.kind is DiffusionKind.tiny and tiny.enabled and tiny.local_files_only is True
    assert (tiny.image_size, tiny.dtype, tiny.device) == (64, DType.float32, "cpu")
    sd = compose_diffusion(["diffusion=sd15_controlnet"])
    assert (sd.base_model, sd.controlnet_depth, sd.controlnet_canny) == (
        BASE_MODEL,
        CONTROLNET_DEPTH,
        CONTROLNET_CANNY,
    )
    assert (sd.image_size, sd.steps, sd.guidance_scale, sd.scheduler) == (512, 20, 7.5, SchedulerKind.unipc)
    assert sd.ethnicities == list(ETHNICITIES)


def test_overrides_reach_the_dataclass() -> None:
    cfg = compose_diffusion(
        ["diffusion=sd15_controlnet", "diffusion.base_model=/models/sd15", "diffusion.scheduler=dpmsolver_pp"]
    )
    assert cfg.base_model == "/models/sd15" and cfg.scheduler is SchedulerKind.dpmsolver_pp


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("diffusion.steps=0", "diffusion.steps=0"),
        ("diffusion.image_size=100", "diffusion.image_size=100"),
        ("diffusion.device=gpu", "diffusion.device='gpu'"),
        ("diffusion.prompt_template=portrait", "{ethnicity}"),
        ("diffusion.prompt_template='{ethnicity} {age}'", "{article}"),
        ("diffusion.ethnicities=[]", "diffusion.ethnicities"),
        ("diffusion.canny_scale=-1", "diffusion.canny_scale"),
        ("diffusion.nonsense=1", "nonsense"),
        ("diffusion.scheduler=ddim", "scheduler"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override: str, needle: str) -> None:
    with pytest.raises(SynthError) as err:
        compose_diffusion(["diffusion=tiny", override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_plain_python_construction_accepts_enum_values() -> None:
    cfg = DiffusionConfig(kind="tiny", scheduler="dpmsolver_pp", dtype="bfloat16")
    assert (cfg.kind, cfg.scheduler, cfg.dtype) == (
        DiffusionKind.tiny,
        SchedulerKind.dpmsolver_pp,
        DType.bfloat16,
    )
    with pytest.raises(ValueError, match=r"diffusion\.batch_size"):
        DiffusionConfig(batch_size=0)


def test_tiny_dir_defaults_to_the_synth_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    assert DiffusionConfig().resolved_tiny_dir() == tmp_path / "diffusion" / "tiny"
    monkeypatch.delenv("SYNTH_CACHE_DIR")
    assert DiffusionConfig().resolved_tiny_dir() == Path.home() / ".cache" / "synth" / "diffusion" / "tiny"
    assert DiffusionConfig(tiny_dir=str(tmp_path)).resolved_tiny_dir() == tmp_path
