"""Age and sex of a model's identities: the readout (estimates, held-out error) and the identity
conditional the build fits (held against the WHO head-circumference norms)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from synth.facemodel import FaceModel
from synth.labels.anthropometry import load_norms
from synth.sources.anny_anthropometry import measure_meshes
from synth.sources.conditioning import ANCHOR_AGES, SEX_ORDER, fit_readout


def _population(n: int, d: int, noise: float, rng: np.random.Generator):
    z = rng.standard_normal((n, d))
    b = rng.standard_normal((2, d))
    y = z @ b.T + np.array([1.0, 0.5]) + noise * rng.standard_normal((n, 2))
    return z, y, b


def test_readout_recovers_a_linear_label_and_reports_its_held_out_error() -> None:
    rng = np.random.default_rng(0)
    z, y, b = _population(300, 6, 0.1, rng)
    readout = fit_readout(z, y, np.arange(300), ridge=1e-3)
    np.testing.assert_allclose(readout.weights, b, atol=0.05)
    np.testing.assert_allclose(readout.error, 0.1, rtol=0.2)  # the noise level, on held-out rows


def test_too_few_identities_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 identities"):
        fit_readout(np.zeros((4, 2)), np.zeros((4, 2)), np.array([0, 0, 1, 1]))


def test_the_built_conditional_places_head_size_at_the_who_median(tiny_model_dir: Path) -> None:
    """The tiny model (7 identity dimensions, 8 fresh identities per anchor and sex): each anchor's mean
    identity, decoded, has the head circumference of its age and sex (within 2 WHO SD: 8 identities and a
    7-dimensional identity space), growing with age, boys' larger than girls'."""
    model = FaceModel.load(tiny_model_dir)
    cond = model.identity_conditional
    np.testing.assert_array_equal(cond.anchor_ages, ANCHOR_AGES)
    assert cond.female_share[0] == 0.5 and cond.age_grid[0] == 0.0 and cond.age_grid[-1] == 36.0
    norms = load_norms()
    hc = {}
    for s, sex in enumerate(SEX_ORDER):
        w = model.flow_id.unwhiten(torch.from_numpy(cond.means[s]))
        with torch.no_grad():
            heads = model.decode(w.float(), model.neutral_w_ex.expand(len(w), -1)).double().numpy()
        hc[sex] = measure_meshes(heads, cond.anchor_ages, np.array([sex] * len(w))).head_circumference
        mean, sd = norms.head_circumference(cond.anchor_ages, np.array([sex] * len(w)))
        assert np.all(np.abs((hc[sex] - mean) / sd) < 2.0), (sex, hc[sex], mean)
        assert np.all(np.diff(hc[sex]) > 0)
    assert np.all(hc["male"] > hc["female"])
