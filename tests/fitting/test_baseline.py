"""The PCA baseline: exact on its own span, fitted like the bilinear model, BabyFM-like training meshes."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synth.facemodel.tensor import FaceTensor
from synth.fitting.baseline import PcaShapeModel, TrainingMeshes, fit_pca, training_meshes
from synth.fitting.fitting import FitOptions, Similarity
from synth.fitting.metrics import per_vertex_error


def _meshes(n: int = 30, n_vert: int = 60, rank: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    template = rng.normal(size=(n_vert, 3)) * 0.05
    basis = rng.normal(size=(rank, n_vert, 3)) * 0.003 * np.arange(rank, 0, -1)[:, None, None]
    return (template + np.einsum("nr,rvc->nvc", rng.normal(size=(n, rank)), basis)).astype(np.float32)


def test_pca_model_reproduces_its_training_meshes_and_keeps_the_asked_variance() -> None:
    meshes = _meshes()
    pca = PcaShapeModel.fit(meshes, variance=1.0)
    assert pca.n_components == 4  # rank of the data, not n - 1
    recon = pca.decode(pca.coefficients)
    assert per_vertex_error(recon, torch.from_numpy(meshes)).max() < 1e-3  # mm
    torch.testing.assert_close(
        torch.einsum("kvc,lvc->kl", pca.components, pca.components), torch.eye(4), atol=1e-5, rtol=0
    )
    assert PcaShapeModel.fit(meshes, variance=0.5).n_components < 4
    np.testing.assert_allclose(pca.coefficients.var(0, unbiased=True), pca.variances, rtol=1e-4)


def test_pca_fit_recovers_a_moved_mesh_of_its_span() -> None:
    meshes = _meshes()
    pca = PcaShapeModel.fit(meshes[:-2], variance=1.0)
    rot = torch.tensor(
        Rotation.from_rotvec([[0.2, -0.4, 0.1], [0.0, 1.0, 0.3]]).as_matrix(), dtype=torch.float32
    )
    sim = Similarity(rot, torch.tensor([1.1, 0.9]), torch.tensor([[0.01, 0.0, -0.02], [0.0, 0.3, 0.0]]))
    target = sim.apply(torch.from_numpy(meshes[-2:]))
    coeffs, recon = fit_pca(pca, target, FitOptions(gamma1=0.999, gamma2=0.001))
    assert coeffs.shape == (2, pca.n_components)
    assert per_vertex_error(recon, target).mean(1).max() < 0.01  # mm


def test_training_meshes_one_per_identity() -> None:
    verts = np.arange(3 * 4 * 2 * 3, dtype=np.float32).reshape(3, 4, 2, 3)
    tensor = FaceTensor(
        vertices=verts,
        faces=np.zeros((0, 3), dtype=np.int64),
        expression_names=["happy", "neutral", "sad", "surprise"],
        au_names=[],
        expression_aus=np.zeros((4, 0), dtype=np.float32),
        identity_ids=["a", "b", "c"],
    )
    np.testing.assert_array_equal(
        training_meshes(tensor, TrainingMeshes.neutral, np.random.default_rng(0)), verts[:, 1]
    )
    a = training_meshes(tensor, TrainingMeshes.random, np.random.default_rng(3))
    b = training_meshes(tensor, TrainingMeshes.random, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 2, 3)
    for i in range(3):  # each row is one of that identity's meshes
        assert any(np.array_equal(a[i], verts[i, e]) for e in range(4))


@pytest.mark.parametrize("variance", [0.0, 1.5])
def test_fit_config_rejects_bad_baseline_variance(variance: float) -> None:
    from synth.fitting.config import FitConfig, FitTask

    with pytest.raises(ValueError, match="baseline_variance"):
        FitConfig(task=FitTask.keypoints, baseline_variance=variance)
