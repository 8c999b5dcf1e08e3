"""`IdentityConditional`: the identity distribution given age and sex, a Gaussian per age anchor and sex in
the identity flow's whitened PCA coordinates u (`LatentFlow.whiten`), piecewise linear in age.

    u | (a, sex) = mean[s, k] + factor[s, k] e  interpolated between anchors k, k+1 around a,  e ~ N(0, I)

i.e. u = (1 - t) (mean[s, k] + factor[s, k] e) + t (mean[s, k+1] + factor[s, k+1] e), t = (a - a_k) /
(a_k+1 - a_k): a Gaussian whose mean and covariance factor move linearly with age. Why u and not the flow's
z: the neutral mesh is affine in u (u -> w is linear, the decoder bilinear), so the mean of the decoded
heads is the decoded mean and the anchors' measured means carry over exactly; a Gaussian in z passes through
the flow's non-linearity and its decoded mean drifts at the ends of the age range (measured: 36-month
heads 1 SD small). The sample's latent is then z = flow(u), exact and invertible.

The anchors are fitted by the build on fresh source identities drawn at each anchor age and sex
(`synth.sources.conditioning.fit_identity_conditional`). The model also keeps the source's age
distribution (`age_grid`, `age_cdf`) and female share, so a sampler asked for a sex only draws ages as the
source does. Pure numpy; deterministic.
"""

from dataclasses import dataclass

import numpy as np

ARRAY_NAMES = ("anchor_ages", "means", "factors", "age_grid", "age_cdf", "female_share")


@dataclass(frozen=True)
class IdentityConditional:
    """anchor_ages (K,) months, increasing; means (2, K, D) and factors (2, K, D, D) (lower-triangular
    Cholesky factors of the covariances) of u, sex index 0 = female, 1 = male; age_grid (M,) months and
    age_cdf (M,) the source's age distribution (cumulative, 0 .. 1); female_share (1,) its share of girls."""

    anchor_ages: np.ndarray
    means: np.ndarray
    factors: np.ndarray
    age_grid: np.ndarray
    age_cdf: np.ndarray
    female_share: np.ndarray

    def __post_init__(self) -> None:
        k, d = len(self.anchor_ages), self.means.shape[-1]
        if k < 2 or np.any(np.diff(self.anchor_ages) <= 0):
            raise ValueError(f"anchor ages must be 2 or more, increasing: {self.anchor_ages}")
        if self.means.shape != (2, k, d) or self.factors.shape != (2, k, d, d):
            raise ValueError(
                f"means {self.means.shape} / factors {self.factors.shape}: need (2, {k}, {d}[, {d}])"
            )
        if self.age_grid.shape != self.age_cdf.shape or np.any(np.diff(self.age_cdf) < 0):
            raise ValueError("age_grid and age_cdf must have one shape, the cdf non-decreasing")

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    @property
    def age_range(self) -> tuple[float, float]:
        return float(self.anchor_ages[0]), float(self.anchor_ages[-1])

    def sample_u(self, age_months: np.ndarray, female: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Whitened PCA coordinates u (n, D) of identities of ages age_months (n,) (clamped to the anchors'
        range) and sexes female (n,) bool, from standard normal draws e (n, D). Affine in e."""
        age = np.clip(np.asarray(age_months, np.float64), *self.age_range)
        k = np.clip(np.searchsorted(self.anchor_ages, age, side="right") - 1, 0, len(self.anchor_ages) - 2)
        t = ((age - self.anchor_ages[k]) / (self.anchor_ages[k + 1] - self.anchor_ages[k]))[:, None]
        s = np.where(np.asarray(female, bool), 0, 1)
        e = np.asarray(e, np.float64)
        lo = self.means[s, k] + np.einsum("nij,nj->ni", self.factors[s, k], e)
        hi = self.means[s, k + 1] + np.einsum("nij,nj->ni", self.factors[s, k + 1], e)
        return (1.0 - t) * lo + t * hi

    def draw_age(self, u: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
        """Ages (months) from uniforms u (n,) in [0, 1): the source's age distribution restricted to
        [low, high] (default its whole range), by inverting the tabulated cdf."""
        lo = self.age_range[0] if low is None else low
        hi = self.age_range[1] if high is None else high
        c_lo, c_hi = np.interp([lo, hi], self.age_grid, self.age_cdf)
        return np.interp(c_lo + np.asarray(u, np.float64) * (c_hi - c_lo), self.age_cdf, self.age_grid)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name (float64), for the model's files."""
        return {name: np.asarray(getattr(self, name), np.float64) for name in ARRAY_NAMES}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "IdentityConditional":
        missing = sorted(set(ARRAY_NAMES) - set(arrays))
        if missing:
            raise ValueError(f"identity conditional lacks arrays {missing}")
        return cls(**{name: np.asarray(arrays[name], np.float64) for name in ARRAY_NAMES})
