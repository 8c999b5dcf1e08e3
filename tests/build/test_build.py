"""Model configs and presets, `build_model` (cache, atomic output, refusals), the build-model and
model-report commands, the report."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from synth.build.build import build_model, cache_root, resolve_model, select_expressions
from synth.build.config import ModelConfig, ModelSource, build_spec, config_from_spec
from synth.build.report import model_report
from synth.cli import main as synth_main
from synth.cli._hydra import compose_config
from synth.errors import SynthError
from synth.facemodel import FaceModel
from synth.sources.tensor_file import save_tensor_npz
from tests._facemodels import synthetic_config, synthetic_model, synthetic_tensor


@pytest.fixture(scope="module")
def tensor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tensor_npz(tmp_path_factory.mktemp("tensor") / "t.npz", synthetic_tensor(n_id=10, n_ex=5))


def _tensor_config(path: Path, **changes: object) -> ModelConfig:
    return dataclasses.replace(synthetic_config(epochs=10), tensor_path=str(path), **changes)


@pytest.mark.parametrize("preset", ["anny_infant", "tiny", "tensor"])
def test_every_model_preset_composes_and_validates(preset: str) -> None:
    overrides = [f"model={preset}"] + (["model.tensor_path=x.npz"] if preset == "tensor" else [])
    config = compose_config("build_model", overrides).model
    assert isinstance(config, ModelConfig)
    if preset == "anny_infant":
        assert config == ModelConfig()  # the default model is the dataclass default (default_model())
        assert config.n_identities == 95 and config.expressions == [] and config.flow.layers == 6
    if preset == "tiny":
        assert config.n_identities < 10 and 0 < len(config.expressions) < 10
    if preset == "tensor":
        assert config.source is ModelSource.tensor


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.variance_id=0", "variance_id"),
        ("model.flow.pca_variance=1.5", "pca_variance"),
        ("model.intensity=-1", "intensity"),
        ("model.flow.layers=0", "layers"),
        ("model=tensor", "tensor_path"),
        ("model.path=/x", "model.path"),
    ],
)
def test_bad_model_config_is_one_clear_error(override: str, key: str) -> None:
    with pytest.raises(SynthError, match=key) as info:
        compose_config("build_model", [override])
    assert "\n" not in str(info.value)


def test_build_recipe_roundtrips_and_keys_the_cache() -> None:
    config = ModelConfig()
    assert config_from_spec(json.loads(json.dumps(build_spec(config)))) == config
    tiny = compose_config("build_model", ["model=tiny"]).model
    assert config_from_spec(json.loads(json.dumps(build_spec(tiny)))) == tiny
    assert dataclasses.replace(config, out="/somewhere").build_key() == config.build_key()
    assert dataclasses.replace(config, seed=1).build_key() != config.build_key()
    # a recipe of an older format (before stratified ages, the conditional, the HOSVD common component)
    with pytest.raises(ValueError, match="format_version 1"):
        config_from_spec({**build_spec(config), "format_version": 1})


def test_build_from_tensor_file_is_cached_atomic_and_refuses_foreign_dirs(
    tensor_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    config = _tensor_config(tensor_file)
    path = resolve_model(config, progress=False)
    assert path == cache_root() / config.build_key() and path.parent == tmp_path / "cache" / "models"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    model = FaceModel.load(path)
    assert model.info["build_key"] == config.build_key() and model.identity_ids[0] == "id-000"
    stamp = (path / "model.json").stat().st_mtime_ns
    assert resolve_model(config, progress=False) == path  # cached: not rebuilt
    assert (path / "model.json").stat().st_mtime_ns == stamp
    # the same recipe builds the same model
    again = build_model(config, tmp_path / "again", progress=False)
    assert FaceModel.load(again).model_id == model.model_id
    # a non-empty directory of something else is refused; model.path must be a model
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="exists"):
        build_model(config, tmp_path / "busy", progress=False)
    with pytest.raises(SynthError, match="not a built model"):
        resolve_model(dataclasses.replace(config, path=str(tmp_path / "busy")))
    assert resolve_model(dataclasses.replace(config, path=str(again))) == again


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(tensor_file: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from synth.build.build import _building_prefix

    target = tmp_path / "models" / "m"
    target.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = target.parent / (_building_prefix(target, int(dead.stdout)) + "abc")
    running = target.parent / (_building_prefix(target, os.getpid()) + "def")
    other_host = target.parent / ".m.building-elsewhere-1-ghi"
    for d in (stale, running, other_host):
        d.mkdir()
        (d / "bilinear.safetensors").write_bytes(b"partial")
    build_model(_tensor_config(tensor_file), target, progress=False)
    assert not stale.exists()  # its process is gone
    assert running.exists() and other_host.exists()  # a live build here, and one we cannot judge
    assert (target / "model.json").is_file()


def test_expression_subset_keeps_neutral_and_rejects_unknown_names() -> None:
    tensor = synthetic_tensor(n_id=4, n_ex=5)
    sub = select_expressions(tensor, ["expr_3", "expr_1"], "model.expressions")
    assert sub.expression_names == ["neutral", "expr_1", "expr_3"]
    assert (sub.vertices[:, 2] == tensor.vertices[:, 3]).all()
    with pytest.raises(SynthError, match="unknown expressions"):
        select_expressions(tensor, ["nope"], "model.expressions")


def test_report_on_held_out_identities() -> None:
    full = synthetic_tensor(n_id=14, n_ex=5)
    train = dataclasses.replace(full, vertices=full.vertices[:10], identity_ids=full.identity_ids[:10])
    held = dataclasses.replace(full, vertices=full.vertices[10:], identity_ids=full.identity_ids[10:])
    model = synthetic_model(train, epochs=10)
    report = model_report(model, held)
    errors = report["held_out"]["error_mm_refit_expressions"]
    # the synthetic identities have 4 degrees of freedom, all seen in training: held-out fits are exact
    assert report["held_out"]["meshes"] == 4 * 5 and errors["max"] < 0.05
    assert report["held_out"]["error_mm_catalogue_expressions"]["max"] < 0.5
    for key in ("flow_id", "flow_ex"):
        stats = report[key]
        assert stats["dim_z"] >= 1 and "nll_held_out" in stats
        g = stats["gaussianity_train"]
        assert 0 <= g["before_flow"]["ks_mean"] <= 1 and 0 <= g["after_flow"]["ks_max"] <= 1
    assert report["summary"]["held_out_error_mm_mean"] == errors["mean"]


def test_build_model_and_model_report_commands(
    tensor_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "built"
    args = [
        "build-model", "model=tensor", f"model.tensor_path={tensor_file}", f"model.out={out}",
        "model.flow.epochs=5", "model.flow.hidden=8", "model.report_held_out=1",
    ]  # fmt: skip
    assert synth_main(args) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    model = FaceModel.load(out)
    assert (out / "report.json").is_file() and "held_out" not in json.loads((out / "report.json").read_text())
    assert torch.isfinite(model.sample(2, seed=0)["vertices"]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built"]  # Hydra left nothing in the cwd
    # model-report rewrites the report elsewhere
    assert synth_main(["model-report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["model_id"] == model.model_id
    # bad input: one line, exit code 2
    assert synth_main(["build-model", "model.variance_ex=7"]) == 2
    err = capsys.readouterr().err
    assert "variance_ex" in err and err.count("\n") == 1
