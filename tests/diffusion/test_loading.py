import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from synth.cli import main as synth_main
from synth.diffusion.config import BASE_MODEL, CONTROLNET_CANNY, CONTROLNET_DEPTH, DiffusionConfig
from synth.diffusion.loading import check_weights, load_pipeline, local_files_only
from synth.diffusion.tiny import BASE, is_tiny_pipeline, make_tiny_pipeline
from synth.diffusion.tiny import CONTROLNET_CANNY as CANNY_DIR
from synth.diffusion.tiny import CONTROLNET_DEPTH as DEPTH_DIR
from synth.errors import SynthError


@pytest.fixture
def empty_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache, so the tests do not depend on what this machine has downloaded."""
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _tiny_sources(root: Path) -> dict[str, str]:
    return {
        "base_model": str(root / BASE),
        "controlnet_depth": str(root / DEPTH_DIR),
        "controlnet_canny": str(root / CANNY_DIR),
    }


def test_missing_hub_weights_offline_is_one_line_naming_each_id(empty_hf_cache: Path) -> None:
    cfg = DiffusionConfig(kind="sd15_controlnet", local_files_only=True)
    with pytest.raises(SynthError) as err:
        check_weights(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    for key, hub_id in [
        ("diffusion.base_model", BASE_MODEL),
        ("diffusion.controlnet_depth", CONTROLNET_DEPTH),
        ("diffusion.controlnet_canny", CONTROLNET_CANNY),
    ]:
        assert f"{key}={hub_id}" in msg
    assert "diffusion=none" in msg and "local copy" in msg


def test_only_the_missing_model_is_named(tiny_diffusion_dir: Path, tmp_path: Path) -> None:
    sources = _tiny_sources(tiny_diffusion_dir)
    cfg = DiffusionConfig(
        kind="sd15_controlnet", local_files_only=True, **{**sources, "controlnet_canny": "/nope"}
    )
    with pytest.raises(SynthError, match=r"diffusion.controlnet_canny=/nope is not a directory") as err:
        check_weights(cfg)
    assert "base_model" not in str(err.value) and "controlnet_depth" not in str(err.value)
    # A local copy without the UNet weights is incomplete, and the message says which file is missing.
    partial = tmp_path / "base"
    shutil.copytree(sources["base_model"], partial)
    for f in (partial / "unet").glob("*.safetensors"):
        f.unlink()
    cfg = DiffusionConfig(
        kind="sd15_controlnet", local_files_only=True, **{**sources, "base_model": str(partial)}
    )
    with pytest.raises(SynthError, match=r"base_model=.*lacks unet/weights"):
        check_weights(cfg)


def test_local_directories_load_through_the_same_code(tiny_diffusion_dir: Path) -> None:
    cfg = DiffusionConfig(
        kind="sd15_controlnet", local_files_only=True, device="cpu", **_tiny_sources(tiny_diffusion_dir)
    )
    pipe = load_pipeline(cfg)
    assert type(pipe).__name__ == "StableDiffusionControlNetPipeline"
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel" and len(pipe.controlnet.nets) == 2
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert pipe.safety_checker is None


def test_cli_check_exits_2_with_one_line(empty_hf_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = synth_main(["diffusion", "check", "diffusion=sd15_controlnet", "diffusion.local_files_only=true"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("synth diffusion: error: diffusion weights missing")
    assert BASE_MODEL in err and "diffusion=none" in err


def test_offline_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert local_files_only(DiffusionConfig()) is True
    assert local_files_only(DiffusionConfig(local_files_only=False)) is False


def test_make_tiny_cli_is_seeded_and_refuses_foreign_dirs(
    tiny_diffusion_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny"
    assert synth_main(["diffusion", "make-tiny", str(out)]) == 0
    assert is_tiny_pipeline(out) and not list(tmp_path.glob(".*.tmp"))
    for rel in (
        "base/unet/diffusion_pytorch_model.safetensors",
        "controlnet_depth/diffusion_pytorch_model.safetensors",
    ):
        a, b = load_file(out / rel), load_file(tiny_diffusion_dir / rel)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # same seed, same weights
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert synth_main(["diffusion", "make-tiny", str(foreign)]) == 2
    assert "not a synth tiny pipeline" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert make_tiny_pipeline(out) == out  # an existing tiny pipeline is reused as is
