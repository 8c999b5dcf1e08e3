"""Age and sex of a model's identities: the identity conditional the build fits (sampling at a given age and
sex), and the linear readout that estimates both for identities drawn without them.

Conditional (`fit_identity_conditional`): at each age anchor (0, 3, 6, 12, 18, 24, 36 months, within the
source prior's range) and sex, `n` fresh identities of the calibrated source are drawn with that age and
sex, their neutral meshes projected onto the model's identity space (least squares: the neutral mesh is
affine in w_id) and into the identity flow's whitened PCA coordinates u; their mean and covariance are the
anchor's Gaussian (`synth.facemodel.conditional.IdentityConditional`). Why fresh identities and not the
training ones: 95 identities spread over 36 months leave a handful per age, so their mean at any one age is
+-0.3 SD off by chance (measured at 30-36 months: -0.4 to -0.5 SD on four measures), and a regression over
ages bends towards the middle at the ends; 200 identities per anchor and sex cost ~30 s of the build.

Readout (`fit_readout`, `model_readout`): the identity flow maps the training identities' codes to z ~ N(0,
I_D); their labels y = (age feature, female indicator), the age feature being the WHO median head
circumference at that age (`age_feature`), are read out linearly, y = B z + c + e (ridge least squares;
`Readout.error` the leave-one-identity-out RMSE). It labels identities sampled without an age or sex
(`age_sex_estimated`), with that held-out error.
"""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from synth.facemodel.conditional import IdentityConditional

log = logging.getLogger(__name__)

# Age anchors of the identity conditional (months): the calibration's anchors.
ANCHOR_AGES = (0.0, 3.0, 6.0, 12.0, 18.0, 24.0, 36.0)
SEX_ORDER = ("female", "male")  # IdentityConditional's sex index


@dataclass(frozen=True)
class Readout:
    """y = B z + c + e: weights (2, D), intercept (2,); label order (age feature, female indicator);
    error: held-out RMSE of each label (leave-one-group-out), in label units."""

    weights: np.ndarray
    intercept: np.ndarray
    error: np.ndarray

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
    return Readout(b, c, np.sqrt((residuals**2).mean(axis=0)))


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


def fit_identity_conditional(model: Any, prior: Any, n: int, seed: int) -> IdentityConditional:
    """The identity conditional of a built `FaceModel` on an Anny source with prior `prior`
    (`AnnyPriorConfig`): n fresh identities per age anchor and sex from stream `seed` (see module doc)."""
    import torch
    from scipy.stats import gamma as gamma_dist

    from synth.sources.anny_source import neutral_meshes, sample_identities

    lo, hi = prior.age_months_range
    anchors = np.array(sorted({lo, hi, *(a for a in ANCHOR_AGES if lo < a < hi)}))
    # neutral mesh = mean + w_id @ jac: affine in w_id (the decoder is bilinear, w_ex fixed at neutral)
    core = model.core.double().cpu()
    jac = torch.einsum("vie,e->iv", core, model.neutral_w_ex.double().cpu())  # (I, 3N)
    gram = jac @ jac.T  # (I, I)
    flow = model.flow_id.cpu()
    d = model.dim_z_id
    means, factors = np.empty((2, len(anchors), d)), np.empty((2, len(anchors), d, d))
    for s, sex in enumerate(SEX_ORDER):
        for k, age in enumerate(anchors.tolist()):
            params = sample_identities(
                prior, seed, n, start=(s * len(anchors) + k) * n, age_months=age, sex=sex
            )
            x = torch.from_numpy(neutral_meshes(params).reshape(n, -1)) - model.mean.double().cpu()
            w = torch.linalg.solve(gram, jac @ x.T).T  # (n, I) least squares
            with torch.no_grad():
                u = flow.whiten(w)  # (n, D) float64
            # torch, not numpy: its BLAS / LAPACK code path is the one synth.cpu pins
            centred = u - u.mean(dim=0)
            cov = centred.T @ centred / max(n - 1, 1)
            cov += 1e-10 * max(float(torch.trace(cov)) / d, 1e-12) * torch.eye(d, dtype=cov.dtype)  # n <= D
            means[s, k], factors[s, k] = u.mean(dim=0).numpy(), torch.linalg.cholesky(cov).numpy()
            log.info("identity conditional: %g months %s, %d identities", age, sex, n)
    grid = np.linspace(lo, hi, 4 * int(np.ceil(hi - lo)) + 1)
    shape, scale = prior._age_gamma()
    cdf = gamma_dist.cdf(grid, shape, scale=scale)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    g0, g1 = prior.gender_range
    female = float(np.clip((g1 - max(g0, 0.5)) / (g1 - g0), 0.0, 1.0))
    return IdentityConditional(anchors, means, factors, grid, cdf, np.array([female]))
