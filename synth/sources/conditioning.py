"""Age and sex conditioning in the identity flow's latent space (a linear-Gaussian readout, exact
conditioning).

The identity flow maps the training identities' codes to z ~ N(0, I_D). Their labels y = (age feature,
female indicator), the age feature being the WHO median head circumference at that age (`age_feature`),
are read out linearly, y = B z + c + e with e ~ N(0, S) (ridge least squares over the training
identities; S the residual covariance). Under that joint Gaussian, z given y* is

    z | y* ~ N(K (y* - c), I - K B),    K = B^T (B B^T + S)^-1    (D x 2),

drawn as z = z0 + K (y* - c - B z0 - e0) with z0 ~ N(0, I) and e0 ~ N(0, S) (Matheron's rule, exact for
the linear-Gaussian model). Why this and not a conditional flow: the label is nearly linear in z (age
drives head size, the first identity direction), conditioning stays inside the trained flow's own
Gaussian (no retraining, every conditioned draw is a draw of the unconditioned model reweighted), and its
accuracy is measurable: `fit_readout` reports the leave-one-group-out error of the readout, which is the
error of a conditioned sample's label.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Readout:
    """y = B z + c + e: weights (2, D), intercept (2,), residual covariance (2, 2) of e; label order
    (age feature, female indicator); error: held-out RMSE of each label (leave-one-group-out), in label
    units."""

    weights: np.ndarray
    intercept: np.ndarray
    residual_cov: np.ndarray
    error: np.ndarray

    def condition(
        self, y: np.ndarray, z0: np.ndarray, e0: np.ndarray, labels: tuple[int, ...] = (0, 1)
    ) -> np.ndarray:
        """Latents given labels: y (n, k) targets of the label columns `labels` (k of them), z0 (n, D) ~
        N(0, I), e0 (n, k) ~ N(0, I) -> z (n, D). Unconditioned labels stay free (their marginal)."""
        sel = list(labels)
        b, s, c = self.weights[sel], self.residual_cov[np.ix_(sel, sel)], self.intercept[sel]
        gain = b.T @ np.linalg.inv(b @ b.T + s)  # (D, k)
        noise = e0 @ np.linalg.cholesky(s).T  # (n, k) ~ N(0, S)
        return z0 + (y - c - z0 @ b.T - noise) @ gain.T

    def predict(self, z: np.ndarray) -> np.ndarray:
        """The readout's labels of latents z (n, D) -> (n, 2) (age feature, female indicator)."""
        return z @ self.weights.T + self.intercept


def _ridge(z: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y ~ B z + c with a ridge on B: z (n, D), y (n, 2) -> (B (2, D), c (2,))."""
    zm, ym = z.mean(axis=0), y.mean(axis=0)
    zc, yc = z - zm, y - ym
    b = np.linalg.solve(zc.T @ zc + ridge * np.eye(z.shape[1]), zc.T @ yc).T  # (2, D)
    return b, ym - b @ zm


def fit_readout(z: np.ndarray, y: np.ndarray, groups: np.ndarray, ridge: float = 1.0) -> Readout:
    """Fit the readout on training latents z (n, D) and labels y (n, 2); groups (n,) tie rows that are one
    identity (its mirrored and symmetrised variants) so the held-out error leaves whole identities out."""
    unique = np.unique(groups)
    if unique.size < 3:
        raise ValueError(f"conditioning needs at least 3 identities with labels, got {unique.size}")
    residuals = np.empty_like(y)
    for g in unique:  # leave one identity (and its variants) out
        held = groups == g
        b, c = _ridge(z[~held], y[~held], ridge)
        residuals[held] = y[held] - (z[held] @ b.T + c)
    b, c = _ridge(z, y, ridge)
    fitted = y - (z @ b.T + c)
    cov = np.cov(fitted.T) + 1e-6 * np.eye(y.shape[1])
    return Readout(b, c, cov, np.sqrt((residuals**2).mean(axis=0)))


def age_feature(age_months: np.ndarray) -> np.ndarray:
    """The readout's age label: the WHO median head circumference at that age (sexes averaged), in dm.
    Head size grows fast after birth and slowly later; the identity latent is close to linear in head size,
    not in age, so a linear readout of this monotone transform fits the ages at both ends (0 and 36
    months) that a readout linear in age regresses towards the training mean. Ages past 36 months clamp."""
    from synth.labels.anthropometry import load_norms

    norms = load_norms()
    median = 0.5 * (norms.hc_mean["female"] + norms.hc_mean["male"]) / 100.0
    return np.interp(np.asarray(age_months, dtype=np.float64), norms.hc_age_months, median)


def age_from_feature(feature: np.ndarray) -> np.ndarray:
    """Inverse of `age_feature` (months), clamped to the WHO table's 0-36 months."""
    from synth.labels.anthropometry import load_norms

    norms = load_norms()
    median = 0.5 * (norms.hc_mean["female"] + norms.hc_mean["male"]) / 100.0
    return np.interp(np.asarray(feature, dtype=np.float64), median, norms.hc_age_months)


def training_labels(identity_ids: list[str], identities: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a model's training identities from its Anny provenance.

    identity_ids: the tensor's ids ("anny-0007", "anny-0007-mirror", "anny-0007-sym"); identities: the
    provenance's per-base-identity summaries (`IdentityParams.summary`: age_months, gender, ...).
    Returns (y (n, 2): `age_feature` of the age and female indicator (Anny gender >= 0.5), groups (n,) base
    index).
    """
    groups = np.array([int(i.split("-")[1]) for i in identity_ids], dtype=np.int64)
    age = age_feature(np.array([identities[g]["age_months"] for g in groups]))
    female = np.array([float(identities[g]["gender"] >= 0.5) for g in groups])
    return np.stack([age, female], axis=1), groups


_READOUTS: dict[str, Readout | None] = {}


def model_readout(model: Any) -> Readout | None:
    """The age / sex readout of a built `FaceModel`'s identity latent, fitted on its training identities
    (their latents through the flow, their labels from the Anny provenance); None for a model without
    labelled identities (e.g. a user's own tensor). Cached per model id."""
    if model.model_id in _READOUTS:
        return _READOUTS[model.model_id]
    identities = model.info.get("source", {}).get("identities")
    readout = None
    if identities and all(i.startswith("anny-") for i in model.identity_ids):
        import torch

        w_id = model.identity_coefficients
        with torch.no_grad():
            z_id, _ = model.to_latent(w_id, model.neutral_w_ex.expand(len(w_id), -1))
        y, groups = training_labels(list(model.identity_ids), identities)
        readout = fit_readout(z_id.double().cpu().numpy(), y, groups)
    _READOUTS[model.model_id] = readout
    return readout
