"""`synth generate` / `synth preview` command lines: presets compose, bad input gets one line and exit 2."""

import subprocess
import sys
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from synth.cli import main as synth_main
from synth.cli._hydra import compose_config
from synth.pipeline.config import Executor, GenerateConfig, SamplerKind

CONF = Path(str(resources.files("synth.conf")))
GROUPS = ("model", "sampler", "render", "diffusion", "output", "runtime")
# Presets that need a value no default can give.
REQUIRED = {("model", "tensor"): ["model.tensor_path=faces.npz"]}


def _presets() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_presets() -> None:
    found = {g for g, _ in _presets()}
    assert found == set(GROUPS)
    assert len(_presets()) >= 14


def _plain(value: Any) -> Any:
    """A dataclass field's value as YAML writes it (enum members by name, as OmegaConf reads them)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _leaves(node: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


@pytest.mark.parametrize(("group", "name"), _presets(), ids=lambda x: str(x))
def test_every_preset_composes_and_its_values_reach_the_dataclass(group: str, name: str) -> None:
    cfg = compose_config("generate", [f"{group}={name}", *REQUIRED.get((group, name), [])])
    assert isinstance(cfg, GenerateConfig)
    preset = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    for key, value in _leaves(preset):
        if value == "???":  # mandatory, given by REQUIRED
            continue
        got = getattr(cfg, group)
        for part in key.split("."):
            got = getattr(got, part)
        assert _plain(got) == value, f"{group}={name}: {key} is {got!r}, the preset says {value!r}"


def test_defaults_are_the_documented_local_run() -> None:
    cfg = compose_config("generate", [])
    assert cfg.sampler.kind is SamplerKind.prior and cfg.sampler.prior.neutral_share is None  # the prior
    assert not cfg.diffusion.enabled
    assert cfg.runtime.executor is Executor.ray and cfg.runtime.address is None
    assert cfg.model.path is None  # the default model, built and cached on first use


def test_sweep_values_compose() -> None:
    cfg = compose_config(
        "generate",
        ["sampler=au", "+sampler.targets.AU12=1.5", "sampler.intensity=2.0", "diffusion.ethnicities=[Black]"],
    )
    assert cfg.sampler.targets == {"AU12": 1.5} and cfg.sampler.intensity == 2.0
    assert cfg.diffusion.ethnicities == ["Black"]


def _run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> int:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["synth", *args])
    try:
        return synth_main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)


BAD = [
    (["nonsense_key=1"], "nonsense_key"),
    (["num_samples=-5"], "num_samples"),
    (["render.image_size=5"], "render.image_size"),
    (["runtime.num_workers=-1"], "runtime.num_workers"),
    (["sampler=bogus"], "sampler"),
    (["sampler.truncation=1.5"], "sampler.truncation"),
    (["splits.train=0.9"], "splits.train"),
    (["model.path=/nonexistent/synth-model"], "/nonexistent/synth-model"),
    (["output.dir=nosuch://bucket/faces"], "output.dir"),
]


@pytest.mark.parametrize(("args", "names"), BAD, ids=lambda x: str(x))
def test_bad_input_one_line_exit_2_nothing_written(
    args: list[str],
    names: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "ds"
    full = (
        ["generate", *args]
        if any(a.startswith("output.dir") for a in args)
        else ["generate", *args, f"output.dir={out}"]
    )
    assert _run_cli(full, monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0], err
    assert list(tmp_path.iterdir()) == []  # no dataset, no Hydra outputs/ in the working directory


def test_missing_bucket_is_refused_in_one_line_before_any_work(
    s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert _run_cli(["generate", "output.dir=s3://no-such-bucket/faces"], monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bucket 'no-such-bucket' does not exist" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_sampler_asking_for_what_the_model_lacks_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "generate",
        f"model.path={tiny_model_dir}",
        "sampler=au",
        "+sampler.targets.AU99=1.0",
        f"output.dir={tmp_path / 'ds'}",
    ]
    assert _run_cli(args, monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampler.targets.AU99" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_missing_diffusion_weights_are_named_before_any_work(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [
        "generate", f"model.path={tiny_model_dir}", "diffusion=sd15_controlnet",
        "diffusion.base_model=/nonexistent/sd15", f"output.dir={tmp_path / 'ds'}",
    ]  # fmt: skip
    assert _run_cli(args, monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent/sd15" in err[0] and "diffusion=none" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    synth = Path(sys.executable).parent / "synth"
    run = subprocess.run(
        [str(synth), "generate", "num_samples=-1"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synth generate: error:") and "num_samples" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_preview_cli_refuses_what_is_not_a_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert _run_cli(["preview", str(tmp_path / "missing")], monkeypatch, tmp_path) == 2
    (tmp_path / "empty").mkdir()
    assert _run_cli(["preview", str(tmp_path / "empty")], monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a directory" in err[0] and "no samples found" in err[1], err


def test_bench_runs_a_benchmark_of_the_checkout(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import synth.cli.bench as bench

    assert synth_main(["bench"]) == 0
    listed = capsys.readouterr().out
    assert "facemodel" in listed and "records" in listed
    assert synth_main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    # a real run (its output goes to the child's stdout) and the child's exit code passed on
    args = ["bench", "facemodel", "--model", str(tiny_model_dir), "--batch", "8", "--loop", "4"]
    assert synth_main([*args, "--repeat", "1"]) == 0
    assert synth_main(["bench", "facemodel", "--no-such-flag"]) == 2  # argparse's exit code
    # installed from a wheel there is no checkout: one line, exit 2
    monkeypatch.setattr(bench, "benchmarks_dir", lambda: None)
    assert synth_main(["bench", "facemodel"]) == 2
    assert "source checkout" in capsys.readouterr().err
