"""Fitting: alignment, 3D fits with known latents, neutralisation, 2D keypoint fits.

Tolerances: on exact synthetic models (the target is a decoded mesh) every fit must reproduce the mesh
to < 0.01 mm mean per-vertex error and the bilinear product w_id (x) w_ex to < 1 % relative error (w_id and
w_ex themselves are only defined up to the bilinear scale a * w_id, w_ex / a).
"""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synth.fitting.fitting import (
    Alignment,
    FitOptions,
    NeutraliseStage,
    Prior,
    Similarity,
    fit_keypoints,
    fit_meshes,
    fit_model_from_face_model,
    neutral_twin,
    neutralise,
    per_vertex_error,
    procrustes,
    rotation_matrix,
)
from synth.render.camera import Cameras, orbit_pose
from tests.fitting._fitmodels import synthetic_model


@pytest.fixture(scope="module")
def synth_model():
    return synthetic_model()[0]


def _truth(model, batch: int, seed: int, scale: float = 0.8):
    g = torch.Generator().manual_seed(seed)
    z_id = torch.randn(batch, model.identity.z_dim, generator=g) * scale
    z_ex = torch.randn(batch, model.expression.z_dim, generator=g) * scale
    w_id, w_ex = model.identity.to_w(z_id), model.expression.to_w(z_ex)
    return w_id, w_ex, model.decode(w_id, w_ex)


def _random_similarity(batch: int, seed: int) -> Similarity:
    g = torch.Generator().manual_seed(seed)
    rot = torch.tensor(Rotation.random(batch, random_state=seed).as_matrix(), dtype=torch.float32)
    return Similarity(rot, 0.7 + 0.6 * torch.rand(batch, generator=g), torch.randn(batch, 3, generator=g))


def _product_error(w_id, w_ex, f_id, f_ex) -> float:
    truth = torch.einsum("bi,be->bie", w_id, w_ex)
    fit = torch.einsum("bi,be->bie", f_id, f_ex)
    return ((fit - truth).norm(dim=(1, 2)) / truth.norm(dim=(1, 2))).max().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_procrustes_recovers_a_similarity(seed: int) -> None:
    x = torch.randn(4, 50, 3, generator=torch.Generator().manual_seed(seed))
    sim = _random_similarity(4, seed)
    y = sim.apply(x)
    found = procrustes(x, y)
    torch.testing.assert_close(found.rotation, sim.rotation, atol=1e-5, rtol=0)
    torch.testing.assert_close(found.scale, sim.scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(found.apply(x), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(sim.invert(y), x, atol=1e-5, rtol=0)
    rigid = procrustes(x, y, scale=False)
    torch.testing.assert_close(rigid.scale, torch.ones(4))
    assert torch.allclose(torch.linalg.det(rigid.rotation), torch.ones(4), atol=1e-5)


def test_rotation_matrix_matches_scipy_and_is_smooth_at_zero() -> None:
    v = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [2.0, 1.0, -1.5], [1e-9, 0.0, 0.0]])
    expected = torch.tensor(Rotation.from_rotvec(v.numpy()).as_matrix(), dtype=torch.float32)
    torch.testing.assert_close(rotation_matrix(v), expected, atol=1e-6, rtol=0)
    v0 = torch.zeros(1, 3, requires_grad=True)
    rotation_matrix(v0)[0, 1, 0].backward()  # d R_yx / d v_z = 1 at the identity
    torch.testing.assert_close(v0.grad, torch.tensor([[0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("prior", list(Prior))
def test_fit_recovers_known_latents_in_the_model_frame(synth_model, prior: Prior) -> None:
    w_id, w_ex, verts = _truth(synth_model, 4, seed=3)
    fit = fit_meshes(
        synth_model, verts, FitOptions(gamma1=0.999, gamma2=0.001, prior=prior, alignment=Alignment.none)
    )
    assert per_vertex_error(fit.vertices, verts).mean(1).max() < 0.01
    assert _product_error(w_id, w_ex, fit.w_id, fit.w_ex) < 0.01
    torch.testing.assert_close(fit.w_id, synth_model.identity.to_w(fit.z_id), atol=1e-4, rtol=0)


def test_fit_recovers_latents_and_pose_of_moved_meshes(synth_model) -> None:
    w_id, w_ex, verts = _truth(synth_model, 4, seed=4)
    sim = _random_similarity(4, seed=4)
    fit = fit_meshes(synth_model, sim.apply(verts), FitOptions(gamma1=0.999, gamma2=0.001))
    assert per_vertex_error(fit.vertices, sim.apply(verts)).mean(1).max() < 0.01
    assert _product_error(w_id, w_ex, fit.w_id, fit.w_ex) < 0.01
    torch.testing.assert_close(fit.transform.scale, sim.scale, atol=1e-4, rtol=0)
    torch.testing.assert_close(fit.transform.rotation, sim.rotation, atol=1e-4, rtol=0)


def test_neutralise_returns_the_true_neutral_in_the_input_frame(synth_model) -> None:
    w_id, _, verts = _truth(synth_model, 3, seed=5)
    sim = _random_similarity(3, seed=5)
    out = neutralise(synth_model, sim.apply(verts), FitOptions(gamma1=0.999, gamma2=0.001))
    truth = sim.apply(neutral_twin(synth_model, w_id))
    expression = per_vertex_error(sim.apply(verts), truth).mean()
    assert expression > 1.0  # the test means something: the expressions move vertices by > 1 mm
    assert per_vertex_error(out.vertices, truth).mean(1).max() < 0.02


def test_neutralise_stage_over_a_numpy_batch(synth_model) -> None:
    w_id, _, verts = _truth(synth_model, 1, seed=7)
    stage = NeutraliseStage(synth_model, FitOptions(gamma1=0.999, gamma2=0.001))
    batch = stage({"mesh": verts.numpy(), "key": np.array(["a"])})
    assert batch["mesh_neutral"].shape == tuple(verts.shape) and batch["mesh_neutral"].dtype == np.float32
    assert list(batch["key"]) == ["a"] and batch["w_id_fit"].shape == tuple(w_id.shape)
    truth = neutral_twin(synth_model, w_id)
    assert per_vertex_error(torch.from_numpy(batch["mesh_neutral"]), truth).max() < 0.05


def _cameras(batch: int) -> Cameras:
    """Cameras 0.5 m in front of the origin (looking along +y), yawed by 10 degrees each."""
    rs, ts = zip(
        *(orbit_pose(10.0 * i, 0.0, 0.0, 0.5, (0.0, 0.0), np.zeros(3)) for i in range(batch)), strict=True
    )
    k = torch.tensor([[600.0, 0, 256], [0, 600.0, 256], [0, 0, 1]], dtype=torch.float64)
    return Cameras(k.expand(batch, 3, 3), torch.tensor(np.stack(rs)), torch.tensor(np.stack(ts)), 512, 512)


@pytest.mark.parametrize("prior", list(Prior))
def test_keypoint_fit_recovers_the_mesh_from_dense_keypoints(synth_model, prior: Prior) -> None:
    _, _, verts = _truth(synth_model, 3, seed=6, scale=0.5)
    cameras = _cameras(3)
    ids = torch.arange(0, verts.shape[1], 2)

    def landmarks(v):
        return v[:, ids]

    kp = cameras.project(landmarks(verts))[..., :2]
    options = FitOptions(gamma1=0.999, gamma2=0.001, prior=prior)
    fit = fit_keypoints(synth_model, kp, cameras, landmarks, options)
    assert fit.data_term.max() < 1e-3  # px^2
    assert per_vertex_error(fit.vertices, verts).mean(1).max() < 0.05


def test_fit_options_validate() -> None:
    with pytest.raises(ValueError, match="gamma1"):
        FitOptions(gamma1=0.5, gamma2=0.2)
    with pytest.raises(ValueError, match="inner_iters"):
        FitOptions(inner_iters=0)
    assert FitOptions(prior="gaussian").prior is Prior.gaussian


def test_fit_the_tiny_model_to_its_own_samples(tiny_model_dir) -> None:
    from synth.facemodel.model import FaceModel

    model = FaceModel.load(tiny_model_dir)
    sample = model.sample(2, seed=11)
    fm = fit_model_from_face_model(model)
    out = neutralise(fm, sample["vertices"], FitOptions())
    assert per_vertex_error(out.fit.vertices, sample["vertices"]).mean(1).max() < 0.02
    truth = neutral_twin(fm, sample["w_id"])
    assert per_vertex_error(out.vertices, truth).mean(1).max() < 0.1
