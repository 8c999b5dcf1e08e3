"""The linear baseline: a PCA shape model of the same infants without expression modelling (BabyFM-like).

BabyFM is a PCA model of infant scans, each taken with whatever expression the infant had. Our analogue
takes the model's training tensor and keeps one mesh per identity: with `TrainingMeshes.random` a seeded
random expression per identity (uncontrolled expressions, as in BabyFM's scans), with `neutral` the
neutral one. It is fitted exactly like the bilinear model (`synth.fitting.fitting.fit_posed`: pose +
latents by L-BFGS) with the Gaussian prior of its PCA coefficients (BabyFlow eq. 22).
"""

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from synth.facemodel.tensor import FaceTensor
from synth.fitting.fitting import FitOptions, LatentFactor, Prior, fit_posed


class TrainingMeshes(Enum):
    """Which mesh of each identity the baseline learns from."""

    random = "random"  # one seeded random expression per identity (BabyFM's uncontrolled scans)
    neutral = "neutral"  # the neutral expression only


@dataclass(frozen=True)
class PcaShapeModel:
    """x = mean + b @ components: mean (N, 3) metres, components (k, N, 3), variances (k,) of b,
    coefficients (n, k) of the training meshes."""

    mean: Tensor
    components: Tensor
    variances: Tensor
    coefficients: Tensor

    @staticmethod
    def fit(meshes: np.ndarray, variance: float = 0.99) -> "PcaShapeModel":
        """PCA (sklearn) of meshes (n, N, 3) keeping `variance` of the variance (at most n - 1 modes)."""
        from sklearn.decomposition import PCA  # only here: keeps sklearn out of every CLI's config import

        n, n_vert, _ = meshes.shape
        flat = meshes.reshape(n, -1).astype(np.float64)
        pca = PCA(n_components=min(n - 1, flat.shape[1])).fit(flat)
        k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), variance - 1e-12)) + 1
        k = max(1, min(k, pca.n_components_))
        comps = pca.components_[:k]  # (k, 3N) orthonormal rows
        coeffs = (flat - pca.mean_) @ comps.T  # (n, k)
        return PcaShapeModel(
            mean=torch.tensor(pca.mean_.reshape(n_vert, 3), dtype=torch.float32),
            components=torch.tensor(comps.reshape(k, n_vert, 3), dtype=torch.float32),
            variances=torch.tensor(pca.explained_variance_[:k], dtype=torch.float32),
            coefficients=torch.tensor(coeffs, dtype=torch.float32),
        )

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def decode(self, b: Tensor) -> Tensor:
        """b (B, k) -> vertices (B, N, 3) metres."""
        return self.mean.to(b) + torch.einsum("bk,knc->bnc", b, self.components.to(b))

    def factor(self) -> LatentFactor:
        """The coefficients as a fitting factor: a diagonal Gaussian (z = b / sd), starting at the mean."""
        sd = self.variances.sqrt()
        log_norm = sd.log().sum() + 0.5 * self.n_components * math.log(2 * math.pi)
        return LatentFactor(
            to_w=lambda z: z * sd.to(z),
            to_z=lambda b: b / sd.to(b),
            nll_w=lambda b: 0.5 * (b / sd.to(b)).square().sum(-1) + log_norm,
            w_train=self.coefficients,
            w_init=torch.zeros(self.n_components),
        )


def training_meshes(tensor: FaceTensor, which: TrainingMeshes, generator: np.random.Generator) -> np.ndarray:
    """One mesh per identity of `tensor` -> (n_id, N, 3): the neutral, or a random expression each."""
    if which is TrainingMeshes.neutral:
        ex = np.full(tensor.n_identities, tensor.expression_names.index("neutral"))
    else:
        ex = generator.integers(0, tensor.n_expressions, size=tensor.n_identities)
    return tensor.vertices[np.arange(tensor.n_identities), ex]


def fit_pca(model: PcaShapeModel, vertices: Tensor, options: FitOptions) -> tuple[Tensor, Tensor]:
    """Fit the PCA model to meshes (B, N, 3) metres like the bilinear model (pose + coefficients, Gaussian
    prior whatever `options.prior` says: a PCA model has no flow). Returns (coefficients (B, k),
    reconstruction (B, N, 3) in the targets' frame)."""
    options = dataclasses.replace(options, prior=Prior.gaussian)
    _, ws, _, _, _, recon = fit_posed([model.factor()], model.decode, model.mean, vertices, options, [None])
    return ws[0], recon
