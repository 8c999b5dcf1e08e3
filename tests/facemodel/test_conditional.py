"""IdentityConditional: Gaussians per age anchor and sex, piecewise linear in age; the source's age law;
saved with the model (round trip, model id)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.errors import SynthError
from synth.facemodel import FaceModel
from synth.facemodel.conditional import IdentityConditional
from tests._facemodels import synthetic_model


def conditional(d: int = 3, seed: int = 0) -> IdentityConditional:
    """Anchors 0 / 12 / 36 months; girls' means at +age/12 on axis 0, boys' 1 higher on axis 1; a linear cdf
    (uniform ages), 40 % girls."""
    rng = np.random.default_rng(seed)
    ages = np.array([0.0, 12.0, 36.0])
    means = np.zeros((2, 3, d))
    means[:, :, 0] = ages / 12.0
    means[1, :, 1] = 1.0
    factors = np.tril(rng.normal(size=(2, 3, d, d))) + 2.0 * np.eye(d)
    grid = np.linspace(0.0, 36.0, 145)
    return IdentityConditional(ages, means, factors, grid, grid / 36.0, np.array([0.4]))


def test_at_an_anchor_the_draw_is_its_gaussian_and_between_anchors_the_blend() -> None:
    c = conditional()
    e = np.random.default_rng(1).standard_normal((4, 3))
    female = np.array([True, False, True, False])
    at = c.sample_u(np.full(4, 12.0), female, e)
    s = np.where(female, 0, 1)
    expected = c.means[s, 1] + np.einsum("nij,nj->ni", c.factors[s, 1], e)
    np.testing.assert_allclose(at, expected, rtol=0, atol=1e-12)
    mid = c.sample_u(np.full(4, 24.0), female, e)  # halfway between 12 and 36
    hi = c.means[s, 2] + np.einsum("nij,nj->ni", c.factors[s, 2], e)
    np.testing.assert_allclose(mid, 0.5 * (expected + hi), rtol=0, atol=1e-12)
    # the mean moves with age and sex as built: girls' axis 0 = age / 12, boys 1 higher on axis 1
    many = c.sample_u(
        np.full(20000, 6.0), np.zeros(20000, bool), np.random.default_rng(2).standard_normal((20000, 3))
    )
    np.testing.assert_allclose(many.mean(axis=0), [0.5, 1.0, 0.0], atol=0.05)
    # ages beyond the anchors clamp to the end anchors
    np.testing.assert_array_equal(
        c.sample_u(np.full(4, 50.0), female, e), c.sample_u(np.full(4, 36.0), female, e)
    )


@settings(max_examples=30, deadline=None)
@given(age=st.floats(0.0, 36.0), t=st.floats(0.0, 1.0), female=st.booleans())
def test_the_draw_is_affine_in_the_noise(age: float, t: float, female: bool) -> None:
    """So an identity set (same noise) stays one identity and an interpolation (a line in the noise) stays
    a line."""
    c = conditional()
    a, b = np.random.default_rng(3).standard_normal((2, 1, 3))
    ages, sexes = np.array([age]), np.array([female])
    line = c.sample_u(ages, sexes, (1 - t) * a + t * b)
    ends = (1 - t) * c.sample_u(ages, sexes, a) + t * c.sample_u(ages, sexes, b)
    np.testing.assert_allclose(line, ends, rtol=0, atol=1e-9)


def test_ages_are_drawn_from_the_tabulated_law_within_the_asked_range() -> None:
    c = conditional()
    u = (np.arange(1000) + 0.5) / 1000
    np.testing.assert_allclose(c.draw_age(u), 36.0 * u, atol=1e-9)  # linear cdf: uniform ages
    inside = c.draw_age(u, 6.0, 9.0)
    assert inside.min() >= 6.0 and inside.max() <= 9.0
    np.testing.assert_allclose(np.median(inside), 7.5, atol=0.01)


def test_bad_arrays_are_refused() -> None:
    c = conditional()
    with pytest.raises(ValueError, match="increasing"):
        IdentityConditional(c.anchor_ages[::-1], c.means, c.factors, c.age_grid, c.age_cdf, c.female_share)
    with pytest.raises(ValueError, match="need"):
        IdentityConditional(c.anchor_ages, c.means[:, :2], c.factors, c.age_grid, c.age_cdf, c.female_share)
    with pytest.raises(ValueError, match="lacks arrays"):
        IdentityConditional.from_arrays({"means": c.means})


def test_a_model_saves_and_loads_its_conditional(tmp_path) -> None:
    model = synthetic_model()
    bare_id = model.model_id
    model = synthetic_model()
    model.identity_conditional = conditional(d=model.dim_z_id)
    assert model.model_id != bare_id  # the conditional is part of the model
    loaded = FaceModel.load(model.save(tmp_path / "m"))
    assert loaded.model_id == model.model_id
    for name, value in model.identity_conditional.arrays().items():
        np.testing.assert_array_equal(loaded.identity_conditional.arrays()[name], value)
    # the conditioned latent is the flow of the conditional's draw
    e = np.random.default_rng(4).standard_normal((3, model.dim_z_id))
    z = loaded.conditioned_z_id(np.array([0.0, 12.0, 30.0]), np.array([True, False, True]), e)
    u = torch.from_numpy(
        loaded.identity_conditional.sample_u(np.array([0.0, 12.0, 30.0]), [True, False, True], e)
    )
    np.testing.assert_allclose(z, loaded.flow_id.flow().transform(u).numpy(), rtol=0, atol=1e-12)
    # a model without one says what to do
    with pytest.raises(SynthError, match="rebuild"):
        synthetic_model().conditioned_z_id(np.zeros(1), np.ones(1, bool), np.zeros((1, model.dim_z_id)))
    with pytest.raises(SynthError, match="dimension"):
        bad = synthetic_model()
        FaceModel(**{**_parts(bad), "identity_conditional": conditional(d=model.dim_z_id + 1)})


def _parts(model: FaceModel) -> dict:
    return {
        name: getattr(model, name)
        for name in (
            "core", "mean", "faces", "identity_coefficients", "expression_coefficients", "expression_aus",
            "energy_id", "energy_ex", "flow_id", "flow_ex", "expression_names", "au_names", "identity_ids",
            "info",
        )
    }  # fmt: skip
