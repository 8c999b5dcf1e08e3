"""FaceModel: sampling (deterministic, batch-size independent, truncation), decode / encode, interpolation,
save / load (bit-identical, refuses bad directories)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from synth.errors import SynthError
from synth.facemodel import FaceModel
from synth.facemodel.model import truncate
from tests._facemodels import synthetic_model, synthetic_tensor


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return synthetic_model()


@pytest.fixture(scope="module")
def saved(model: FaceModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.save(tmp_path_factory.mktemp("model") / "m")


def test_sample_shapes_and_dict(model: FaceModel) -> None:
    out = model.sample(5, seed=0)
    assert set(out) == {"z_id", "z_ex", "w_id", "w_ex", "vertices"}
    assert out["z_id"].shape == (5, model.dim_z_id) and out["z_ex"].shape == (5, model.dim_z_ex)
    assert out["w_id"].shape == (5, model.rank_id) and out["w_ex"].shape == (5, model.rank_ex)
    assert out["vertices"].shape == (5, model.n_vertices, 3) and out["vertices"].dtype == torch.float32
    assert torch.equal(out["vertices"], model.decode(out["w_id"], out["w_ex"]))
    assert model.faces.dtype == torch.int64 and model.faces.shape[1] == 3


def test_sample_is_deterministic_and_batch_size_independent(model: FaceModel) -> None:
    big = model.sample(70, seed=11)
    again = model.sample(70, seed=11)
    assert all(torch.equal(big[k], again[k]) for k in big)
    for indices in ([0], [69], [5, 3, 64], list(range(20, 40))):
        part = model.sample_indices(indices, seed=11)
        assert all(torch.equal(part[k], big[k][indices]) for k in big), indices
    assert not torch.equal(model.sample(3, seed=12)["z_id"], big["z_id"][:3])


def test_temperature_and_truncation(model: FaceModel) -> None:
    base = model.sample(200, seed=1)
    hot = model.sample(200, seed=1, temperature=2.0)
    assert torch.allclose(hot["z_id"], 2 * base["z_id"])
    rho = 0.5
    cut = model.sample(200, seed=1, temperature=2.0, truncation=rho)
    for key, dim in (("z_id", model.dim_z_id), ("z_ex", model.dim_z_ex)):
        beta = np.sqrt(chi2.ppf(rho, dim))
        norms = cut[key].norm(dim=1)
        assert norms.max() <= beta * (1 + 1e-5)
        inside = hot[key].norm(dim=1) <= beta
        assert torch.equal(cut[key][inside], hot[key][inside])  # only points outside are projected
        outside = ~inside
        assert torch.allclose(norms[outside], torch.full_like(norms[outside], beta), rtol=1e-5)
        cos = torch.nn.functional.cosine_similarity(cut[key][outside], hot[key][outside], dim=1)
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)  # projected along the ray (eq. 24)
    with pytest.raises(SynthError, match="truncation"):
        truncate(torch.zeros(1, 3), 1.0)


def test_far_latents_are_reported(model: FaceModel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="synth.facemodel.model"):
        model.from_latent(torch.zeros(3, model.dim_z_id), torch.zeros(3, model.dim_z_ex))
        assert not caplog.records  # the mode of both flows is inside the training range
        model.from_latent(torch.zeros(3, model.dim_z_id), torch.full((3, model.dim_z_ex), 1e4))
    assert len(caplog.records) == 1
    assert "3 of 3 expression codes lie beyond 10x the largest training code" in caplog.text


def test_latents_roundtrip_and_log_prob(model: FaceModel) -> None:
    out = model.sample(16, seed=2)
    z_id, z_ex = model.to_latent(out["w_id"], out["w_ex"])
    assert (z_id - out["z_id"]).abs().max() < 1e-5 and (z_ex - out["z_ex"]).abs().max() < 1e-5
    lp_id, lp_ex = model.log_prob(out["w_id"], out["w_ex"])
    assert lp_id.shape == (16,) and torch.isfinite(lp_id).all() and torch.isfinite(lp_ex).all()
    # a far-out code is less likely than the samples
    far_id, far_ex = model.from_latent(
        torch.full((1, model.dim_z_id), 6.0), torch.full((1, model.dim_z_ex), 6.0)
    )
    lp_far_id, lp_far_ex = model.log_prob(far_id, far_ex)
    assert lp_far_id < lp_id.min() and lp_far_ex < lp_ex.min()


def test_neutral_and_catalogue_coefficients(model: FaceModel) -> None:
    tensor = synthetic_tensor()
    k = model.identity_ids.index("id-004")
    mesh = model.decode(model.identity_coefficients[k : k + 1], model.neutral_w_ex[None])
    assert (mesh[0] - torch.from_numpy(tensor.vertices[k, 0])).abs().max() < 1e-6
    assert torch.equal(model.expression_w_ex("expr_2"), model.expression_coefficients[2])
    with pytest.raises(SynthError, match="unknown expression"):
        model.expression_w_ex("grumpy")


def test_encode_decode_roundtrip(model: FaceModel) -> None:
    out = model.sample(6, seed=3)
    w_id, w_ex = model.encode(out["vertices"])
    err_mm = (model.decode(w_id, w_ex) - out["vertices"]).norm(dim=-1).max() * 1000
    assert err_mm < 0.05
    with pytest.raises(SynthError, match="topology"):
        model.encode(torch.zeros(1, 7, 3))


@pytest.mark.parametrize("mode", ["expression", "identity", "joint"])
def test_interpolate(model: FaceModel, mode: str) -> None:
    pts = model.sample(2, seed=4)
    a, b = ({k: v[i] for k, v in pts.items()} for i in (0, 1))
    out = model.interpolate(a, b, [0.0, 0.25, 1.0], mode)
    assert out["vertices"].shape == (3, model.n_vertices, 3)
    assert torch.allclose(out["vertices"][0], a["vertices"], atol=1e-6)
    moved = {"expression": ("z_ex",), "identity": ("z_id",), "joint": ("z_id", "z_ex")}[mode]
    for key in ("z_id", "z_ex"):
        end = b[key] if key in moved else a[key]
        assert torch.allclose(out[key][-1], end, atol=1e-6)
        assert torch.allclose(out[key][1], 0.75 * a[key] + 0.25 * end, atol=1e-6)  # eq. 23
    with pytest.raises(SynthError, match="interpolation mode"):
        model.interpolate(a, b, [0.5], "sideways")


def test_saved_model_reloads_and_decodes_bit_identically(model: FaceModel, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "bilinear.safetensors",
        "flow_ex.safetensors",
        "flow_id.safetensors",
        "model.json",
    ]
    loaded = FaceModel.load(saved)
    assert loaded.model_id == model.model_id
    assert loaded.topology_hash == model.topology_hash
    a, b = model.sample(9, seed=5), loaded.sample(9, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.expression_names == model.expression_names and loaded.au_names == model.au_names
    meta = json.loads((saved / "model.json").read_text())
    assert meta["rank_id"] == model.rank_id and meta["model_id"] == model.model_id


def _broken_copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_dir", "does not exist"),
        ("no_json", "no model.json"),
        ("missing_file", "is missing"),
        ("altered_bytes", "sha256"),
        ("old_version", "format_version"),
        ("pickle_file", "non-safetensors"),
        ("wrong_dims", "disagree"),
        ("listed_pickle", "lists"),
    ],
)
def test_load_refuses_bad_directories(saved: Path, tmp_path: Path, breakage: str, message: str) -> None:
    target = _broken_copy(saved, tmp_path)
    meta = json.loads((target / "model.json").read_text())
    if breakage == "missing_dir":
        shutil.rmtree(target)
    elif breakage == "no_json":
        (target / "model.json").unlink()
    elif breakage == "missing_file":
        (target / "flow_ex.safetensors").unlink()
    elif breakage == "altered_bytes":
        data = bytearray((target / "bilinear.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (target / "bilinear.safetensors").write_bytes(bytes(data))
    elif breakage == "pickle_file":
        (target / "extra.pt").write_bytes(b"\x80\x04N.")
    else:
        if breakage == "old_version":
            meta["format_version"] = 0
        elif breakage == "wrong_dims":
            meta["rank_id"] += 1
        elif breakage == "listed_pickle":
            meta["files"]["weights.pkl"] = "0" * 64
        (target / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SynthError, match=message):
        FaceModel.load(target)


def test_tiny_model_fixture_loads_and_samples(tiny_model_dir: Path) -> None:
    model = FaceModel.load(tiny_model_dir)
    out = model.sample(4, seed=0)
    assert out["vertices"].shape == (4, model.n_vertices, 3)
    assert "neutral" in model.expression_names and len(model.au_names) == 46
    # infant head size: a few cm to ~20 cm across, finite
    extent = out["vertices"].amax(1) - out["vertices"].amin(1)
    assert torch.isfinite(out["vertices"]).all() and (extent > 0.03).all() and (extent < 0.3).all()
    report = json.loads((tiny_model_dir / "report.json").read_text())
    assert report["model_id"] == model.model_id and report["held_out"]["meshes"] > 0
    assert (tiny_model_dir / "report_kde.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_model_training_meshes_reencode_within_five_hundredths_of_a_mm(tiny_model_dir: Path) -> None:
    """The tiny model is full rank: meshes of its (Anny) training tensor are in the model exactly."""
    from synth.build.build import source_tensor
    from synth.build.config import config_from_spec

    model = FaceModel.load(tiny_model_dir)
    tensor = source_tensor(config_from_spec(model.info["build"]), progress=False)
    verts = torch.from_numpy(tensor.vertices[::3].reshape(-1, tensor.n_vertices, 3))  # base identities
    w_id, w_ex = model.encode(verts)
    assert (model.decode(w_id, w_ex) - verts).norm(dim=-1).max() * 1000 < 0.05
