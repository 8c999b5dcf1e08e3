"""Latent analyses, metrics, regions, and the `synth fit` / `synth analyze` commands end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from synth.analysis.analysis import (
    critical_beta,
    gaussian_hyperellipsoid_samples,
    parallel_analysis,
    reconstruction_experiment,
    reconstruction_markdown,
    training_tensor,
)
from synth.facemodel.tensor import FaceTensor
from synth.fitting.baseline import TrainingMeshes
from synth.fitting.fitting import FitOptions
from synth.fitting.metrics import diversity, error_table, mean_vertex_distance, specificity
from synth.labels.landmarks import landmarks, load_anny_head_landmarks
from synth.labels.regions import REGIONS, face_regions

FAST = FitOptions(outer_iters=1, inner_iters=5, final_joint_iters=40)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from synth.facemodel.model import FaceModel

    return FaceModel.load(tiny_model_dir)


def test_critical_beta_golden() -> None:
    # BabyFlow 4.5 quotes beta_id = 6.01 (dof 26) and beta_ex = 4.07 (dof 7) at rho = 0.99; the chi-square
    # quantiles give these instead (the paper's values do not match its own formula).
    assert critical_beta(0.99, 26) == pytest.approx(6.7557, abs=1e-3)
    assert critical_beta(0.99, 7) == pytest.approx(4.2985, abs=1e-3)


def test_hyperellipsoid_samples_lie_on_the_shell() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(500, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, 0.01]) + 1.0
    out = gaussian_hyperellipsoid_samples(codes, 3, 0.99, 100, g)
    mean = codes.double().mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov(codes.double().T))
    top = evecs[:, -3:]
    d = ((out.double() - mean) @ top) / evals[-3:].sqrt()
    torch.testing.assert_close(
        d.norm(dim=1), torch.full((100,), np.sqrt(chi2.ppf(0.99, 3)), dtype=torch.float64)
    )
    resid = (out.double() - mean) - ((out.double() - mean) @ top) @ top.T  # nothing outside the subspace
    assert resid.abs().max() < 1e-4


def test_parallel_analysis_finds_the_planted_components() -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(40, 3)) @ (rng.normal(size=(3, 3000)) * 3.0)  # 3 strong components
    data = signal + rng.normal(size=(40, 3000))

    def chunks():
        yield from np.array_split(data, 4, axis=1)

    out = parallel_analysis(chunks, draws=10, quantile=0.95, generator=np.random.default_rng(1))
    assert out["significant"] == 3
    noise_only = parallel_analysis(
        lambda: iter([rng.normal(size=(40, 3000))]), 10, 0.95, np.random.default_rng(2)
    )
    assert noise_only["significant"] == 0


def test_diversity_and_specificity_golden() -> None:
    base = torch.zeros(2, 5, 3)
    base[1] += torch.tensor([0.003, 0.004, 0.0])  # 5 mm apart
    assert diversity(base, 100, torch.Generator().manual_seed(0)) == pytest.approx(5.0, rel=1e-5)
    training = torch.randn(20, 5, 3, generator=torch.Generator().manual_seed(1)) * 0.01
    assert specificity(training[:4], training) == pytest.approx(0.0, abs=1e-6)
    moved = training[:4] + torch.tensor([0.001, 0.0, 0.0])
    expected = mean_vertex_distance(moved, training).min(1).values.mean().item()
    assert specificity(moved, training) == pytest.approx(expected, rel=1e-6)
    assert expected <= 1.0 + 1e-6


def test_error_table_per_region() -> None:
    errors = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])
    table = error_table(errors, {"a": np.array([True, True, False, False])})
    assert table["all"]["mean"] == pytest.approx(3.5) and table["all"]["sd"] == pytest.approx(np.sqrt(2.0))
    assert table["a"]["mean"] == pytest.approx(2.5)


def test_regions_partition_the_topology_around_their_landmarks(tiny) -> None:
    definition = load_anny_head_landmarks()
    regions = face_regions(tiny.mean_shape.numpy(), definition)
    assert list(regions) == list(REGIONS)
    total = sum(m.astype(int) for m in regions.values())
    assert (total == 1).all()
    ids = definition.vertex_ids
    for name, region in (
        ("ls", "mouth"),
        ("chL", "mouth"),
        ("exR", "eyes"),
        ("enL", "eyes"),
        ("prn", "nose"),
    ):
        assert regions[region][ids[definition.index(name)]].all(), (name, region)
    for name in ("tL", "oiR", "n"):  # ears are "rest"; the nasion is nose, not eyes
        assert not regions["eyes"][ids[definition.index(name)]].any(), name
    assert regions["rest"][ids[definition.index("tL")]].all()
    # the face regions are small parts of the head
    assert all(0.02 < regions[r].mean() < 0.3 for r in ("mouth", "eyes", "nose"))
    assert landmarks(tiny.mean_shape.numpy(), definition).shape == (23, 3)


def test_reconstruction_experiment_on_tiny_model_samples(tiny) -> None:
    """Held-out meshes the bilinear model represents exactly: BabyFlow fits them far better than the PCA
    baseline, and neutralises them back to the identity's neutral."""
    gen = torch.Generator().manual_seed(0)
    z_id = torch.randn(2, tiny.dim_z_id, generator=gen) * 0.7
    w_id = tiny.flow_id.to_w(z_id)
    exs = [tiny.expression_names.index(n) for n in ("neutral", "happy", "jaw_drop")]
    verts = torch.stack(
        [tiny.decode(w_id, tiny.expression_coefficients[e][None].expand(2, -1)) for e in exs], 1
    )
    held = FaceTensor(
        vertices=verts.numpy(),
        faces=tiny.faces.numpy(),
        expression_names=["neutral", "happy", "jaw_drop"],
        au_names=tiny.au_names,
        expression_aus=tiny.expression_aus[exs].numpy(),
        identity_ids=["h0", "h1"],
    )
    regions = face_regions(tiny.mean_shape.numpy(), load_anny_head_landmarks())
    result = reconstruction_experiment(
        tiny, held, FAST, regions, TrainingMeshes.random, 0.99, seed=0, batch_size=8
    )
    models = result["models"]
    flow = models["bilinear + flow prior (BabyFlow)"]["all"]["mean"]
    pca = next(v for k, v in models.items() if k.startswith("PCA"))["all"]["mean"]
    assert flow < 0.1 and pca > 2 * flow
    neut = result["neutralisation"]
    assert neut["neutralised_vs_true_neutral_mm"]["all"]["mean"] < 0.2
    assert neut["expressive_vs_true_neutral_mm"]["all"]["mean"] > 0.5
    assert "| model | all | mouth | eyes | nose | rest |" in reconstruction_markdown(result)
    assert training_tensor(tiny).vertices.shape == (
        len(tiny.identity_ids),
        len(tiny.expression_names),
        4538,
        3,
    )


def _synth(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from synth.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_synth_fit_files_and_synth_analyze_end_to_end(tiny, tiny_model_dir, tmp_path: Path) -> None:
    sample = tiny.sample(2, seed=3)["vertices"].numpy()
    np.save(tmp_path / "a.npy", sample[0])
    import trimesh

    trimesh.Trimesh(sample[1], tiny.faces.numpy(), process=False).export(tmp_path / "b.ply")
    res = _synth(
        "fit", f"model.path={tiny_model_dir}", "inputs=[a.npy,b.ply]", "out=out",
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    record = json.loads((out / "fit.json").read_text())
    assert all(v["mean_mm"] < 0.05 for v in record["errors_mm"].values())
    assert np.load(out / "a.errors.npy").shape == (4538,)
    assert set(np.load(out / "b.latents.npz")) >= {"z_id", "z_ex", "w_id", "w_ex", "rotation"}
    assert trimesh.load(out / "b.neutral.ply", process=False).vertices.shape == (4538, 3)

    res = _synth(
        "analyze", f"model.path={tiny_model_dir}", "out=an", "n_samples=12", "n_pairs=200", "n_train=30",
        "pa_draws=4", "figure_pairs=3", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "an" / "analysis.json").read_text())["result"]
    assert result["parallel_analysis"]["identity"]["significant"] >= 1
    assert set(result["sampling"]["models"]) == {"with_nf", "without_nf"}
    assert (tmp_path / "an" / "pairs.png").stat().st_size > 1000 and (tmp_path / "an" / "kde.png").is_file()
    assert "DIV" in (tmp_path / "an" / "analysis.md").read_text()


def test_synth_fit_bad_input_is_one_line(tiny_model_dir, tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((10, 3), dtype=np.float32))
    res = _synth("fit", f"model.path={tiny_model_dir}", "inputs=[bad.npy]", "out=o", cwd=tmp_path)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "bad.npy" in errors[0] and "(4538, 3)" in errors[0]
    assert not (tmp_path / "o" / "fit.json").exists()


def test_fit_and_analyze_configs_compose_and_validate() -> None:
    from synth.cli._hydra import compose_config
    from synth.errors import SynthError
    from synth.fitting.config import FitTask
    from synth.fitting.fitting import Alignment, Prior

    fit = compose_config("fit", ["model=tiny", "inputs=[a.ply]", "fit.prior=gaussian", "fit.alignment=rigid"])
    assert (
        fit.task is FitTask.files and fit.fit.prior is Prior.gaussian and fit.fit.alignment is Alignment.rigid
    )
    assert compose_config("fit", ["task=keypoints"]).model.n_identities == 95  # the default model
    analyze = compose_config("analyze", ["model=tiny", "rho=0.95"])
    assert analyze.rho == 0.95 and analyze.model.n_identities == 4
    with pytest.raises(SynthError, match="inputs"):
        compose_config("fit", [])
    with pytest.raises(SynthError, match="gamma1"):
        compose_config("fit", ["task=keypoints", "fit.gamma1=0.5"])
    with pytest.raises(SynthError, match="rho"):
        compose_config("analyze", ["rho=1.5"])
