import numpy as np
import pytest

from synth.sources.conditioning import fit_readout


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
    np.testing.assert_allclose(np.sqrt(np.diag(readout.residual_cov)), 0.1, rtol=0.2)


def test_conditioned_latents_read_out_as_the_target_within_the_residual() -> None:
    rng = np.random.default_rng(1)
    z, y, _ = _population(400, 5, 0.05, rng)
    readout = fit_readout(z, y, np.repeat(np.arange(200), 2), ridge=1e-3)
    target = np.tile([2.0, 1.0], (2000, 1))
    out = readout.condition(target, rng.standard_normal((2000, 5)), rng.standard_normal((2000, 2)))
    read = out @ readout.weights.T + readout.intercept
    np.testing.assert_allclose(read.mean(axis=0), target[0], atol=0.01)
    assert np.all(read.std(axis=0) < 0.1)  # only the residual spread is left
    # directions the labels do not see keep the prior's unit variance
    null = np.linalg.svd(readout.weights)[2][2:]  # (D - 2, D) orthonormal complement
    np.testing.assert_allclose((out @ null.T).std(axis=0), 1.0, rtol=0.1)


def test_too_few_identities_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 identities"):
        fit_readout(np.zeros((4, 2)), np.zeros((4, 2)), np.array([0, 0, 1, 1]))
