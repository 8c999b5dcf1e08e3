"""AU intensities: exact recovery of synthetic mixtures, parallel-basis groups, Anny's own AU bases,
and the fast labeller of bilinear-model samples."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from synth.facemodel.bilinear import hosvd
from synth.facemodel.tensor import FaceTensor
from synth.labels.au_labels import ModelAuLabeller, au_intensities, single_au_expressions
from synth.labels.expressions import load_catalogue
from tests._anny_head import anny_head

# Stated tolerances: exact (noise-free, linearly independent bases) and with 1% vertex noise.
EXACT_TOL = 1e-6
NOISY_TOL = 0.05


def _mixtures(rng: np.random.Generator, n: int, n_au: int, active: int) -> np.ndarray:
    c = np.zeros((n, n_au))
    for row in c:
        on = rng.choice(n_au, size=active, replace=False)
        row[on] = rng.uniform(0.1, 1.0, size=active)
    return c


def test_recovers_random_mixtures_of_independent_bases() -> None:
    rng = np.random.default_rng(0)
    n, n_au, n_vert = 12, 46, 300
    bases = rng.normal(size=(n, n_au, n_vert, 3)) * 1e-3  # per-identity bases, metres
    neutral = rng.normal(size=(n, n_vert, 3)) * 0.05
    c = _mixtures(rng, n, n_au, active=5)
    verts = neutral + np.einsum("na,navd->nvd", c, bases)
    est = au_intensities(verts, neutral, bases)
    assert est.shape == (n, n_au) and est.dtype == np.float32
    np.testing.assert_allclose(est, c, atol=EXACT_TOL)
    # neutral meshes get zero intensities; over-driven AUs are clipped to 1
    np.testing.assert_array_equal(au_intensities(neutral, neutral, bases), 0.0)
    over = neutral + 2.5 * bases[:, 3]
    assert np.allclose(au_intensities(over, neutral, bases)[:, 3], 1.0)


def test_noisy_mixtures_within_tolerance_and_torch_inputs() -> None:
    rng = np.random.default_rng(1)
    n, n_au, n_vert = 8, 46, 500
    bases = rng.normal(size=(n_au, n_vert, 3)) * 1e-3  # shared bases
    neutral = rng.normal(size=(n_vert, 3)) * 0.05
    c = _mixtures(rng, n, n_au, active=4)
    deform = np.einsum("na,avd->nvd", c, bases)
    noise = rng.normal(size=deform.shape) * 0.01 * np.abs(deform).mean()
    est = au_intensities(
        torch.as_tensor(neutral + deform + noise), torch.as_tensor(neutral), torch.as_tensor(bases)
    )
    np.testing.assert_allclose(est, c, atol=NOISY_TOL)


def test_parallel_bases_go_to_the_weakest_au_that_reaches_the_amplitude() -> None:
    rng = np.random.default_rng(2)
    u = rng.normal(size=(200, 3))
    other = rng.normal(size=(200, 3))
    bases = np.stack([u, 0.5 * u, 0.3 * u, other])  # like AU43 / AU42 / AU41 (eyeBlink 1, 0.5, 0.3)
    neutral = np.zeros((200, 3))
    cases = {
        0.3: [0, 0, 1, 0],
        0.5: [0, 1, 0, 0],
        0.4: [0, 0.8, 0, 0],
        0.8: [0.8, 0, 0, 0],
        1.5: [1, 0, 0, 0],
    }
    verts = np.stack([neutral + a * u + 0.25 * other for a in cases])
    est = au_intensities(verts, neutral, bases)
    expected = np.array([[*row[:3], 0.25] for row in cases.values()])
    np.testing.assert_allclose(est, expected, atol=1e-6)


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="bases must be"):
        au_intensities(np.zeros((2, 10, 3)), np.zeros((2, 10, 3)), np.zeros((2, 4, 11, 3)))
    with pytest.raises(ValueError, match="neutral must be"):
        au_intensities(np.zeros((2, 10, 3)), np.zeros((3, 10, 3)), np.zeros((4, 10, 3)))


def _anny_au_bases() -> np.ndarray:
    """(46, N, 3) Anny's AU deformation bases: facial-action blendshapes weighted by the AU table."""
    model = anny_head()
    cat = load_catalogue()
    labels = list(model.blendshape_labels)
    rows = [labels.index(f"facial_action:{name}") for name in cat.action_names]
    actions = model.blendshapes[rows].numpy()  # (52, N, 3)
    return np.einsum("ak,kvd->avd", cat.au_to_actions, actions)


def test_anny_au_mixtures_are_explained_and_identifiable_aus_recovered() -> None:
    """Random mixtures of Anny AUs at random intensities. Anny's 46 AU bases span fewer dimensions (37
    with the catalogue of 2026-11: e.g. AU43/AU42/AU41 are all eyeBlink), so only AUs whose basis is
    independent of all the others have a unique intensity: those are recovered exactly, and every
    mixture's deformation is fully explained."""
    bases = _anny_au_bases()
    flat = bases.reshape(46, -1)
    gram = flat @ flat.T
    tol = 1e-10 * np.abs(gram).max()
    rank = np.linalg.matrix_rank(gram, tol=tol, hermitian=True)
    assert rank < 46

    def rank_without(a: int) -> int:
        return np.linalg.matrix_rank(np.delete(np.delete(gram, a, 0), a, 1), tol=tol, hermitian=True)

    determined = [a for a in range(46) if rank_without(a) < rank]
    assert len(determined) >= 20
    rng = np.random.default_rng(3)
    c = _mixtures(rng, 20, 46, active=5) * 0.6
    template = anny_head().template_vertices.numpy()
    deform = np.einsum("na,avd->nvd", c, bases)
    est = au_intensities(template + deform, template, bases)
    np.testing.assert_allclose(est[:, determined], c[:, determined], atol=1e-4)
    residual = deform - np.einsum("na,avd->nvd", est.astype(np.float64), bases)
    assert np.linalg.norm(residual) < 1e-4 * np.linalg.norm(deform)


def _toy_model(n_id: int = 4):
    """A bilinear model (HOSVD of a synthetic tensor) whose expressions are linear in the AUs."""
    cat = load_catalogue()
    rng = np.random.default_rng(4)
    n_vert = 120
    ident = rng.normal(size=(n_id, n_vert, 3)) * 0.05
    scale = rng.uniform(0.6, 1.2, size=n_id)  # identity-dependent AU amplitude
    au_bases = rng.normal(size=(46, n_vert, 3)) * 2e-3
    verts = ident[:, None] + scale[:, None, None, None] * np.einsum(
        "ea,avd->evd", cat.expression_aus, au_bases
    )
    tensor = FaceTensor(
        vertices=verts.astype(np.float32),
        faces=np.zeros((0, 3), np.int64),
        expression_names=list(cat.expression_names),
        au_names=list(cat.au_names),
        expression_aus=cat.expression_aus,
        identity_ids=[f"id{i}" for i in range(n_id)],
    )
    h = hosvd(tensor, 1.0, 1.0)
    model = SimpleNamespace(
        core=h.core,
        expression_coefficients=h.w_ex,
        expression_aus=torch.tensor(cat.expression_aus),
        expression_names=list(cat.expression_names),
        au_names=list(cat.au_names),
    )
    return model, h, cat


def test_single_au_expressions_of_the_catalogue() -> None:
    cat = load_catalogue()
    rows = single_au_expressions(cat.expression_aus)
    assert sorted(rows.tolist()) == list(range(1, 47))  # Table B1 rows 2..47
    with pytest.raises(ValueError, match="no single-AU"):
        single_au_expressions(cat.expression_aus[:40])


def test_model_labeller_recovers_catalogue_and_coefficient_mixtures() -> None:
    model, h, cat = _toy_model()
    label = ModelAuLabeller(model)
    # every training identity in every catalogue expression: the nominal AU sets
    n_id = h.w_id.shape[0]
    w_id = h.w_id.repeat_interleave(76, 0)
    w_ex = h.w_ex.repeat(n_id, 1)
    est = label(w_id, w_ex)
    np.testing.assert_allclose(est, np.tile(cat.expression_aus, (n_id, 1)), atol=1e-3)
    # random AU mixtures expressed in coefficient space, on unseen identities (mixtures of training ones)
    rng = np.random.default_rng(5)
    c = _mixtures(rng, 10, 46, active=3)
    rows = single_au_expressions(cat.expression_aus)
    w_n = h.w_ex[0].double()
    w_mix = w_n + torch.as_tensor(c) @ (h.w_ex[rows].double() - w_n)
    w_new = torch.as_tensor(rng.dirichlet(np.ones(n_id), size=10)) @ h.w_id.double()
    np.testing.assert_allclose(label(w_new.float(), w_mix.float()), c, atol=1e-3)
