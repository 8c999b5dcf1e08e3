"""Small synthetic latent models with known ground truth, for the fitting and analysis tests.

A bilinear model built the BabyFlow way (HOSVD of a random identity x expression tensor with a
low-rank structure) and, per factor, an affine "flow" whitening the training codes. An affine flow has an
exact NLL and an exact inverse, so tests can state what a fit must recover.
"""

import math

import numpy as np
import torch

from synth.fitting.fitting import FitModel, LatentFactor


def affine_factor(w_train: torch.Tensor, w_init: torch.Tensor) -> LatentFactor:
    """A whitening affine flow z = L^-1 (w - mu) fitted to w_train (n, K); full rank K <= n - 1."""
    mu = w_train.mean(0)
    cov = torch.cov(w_train.T.double()) + 1e-10 * torch.eye(w_train.shape[1], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov).float()  # (K, K) lower
    inv = torch.linalg.inv(chol)
    logdet = torch.log(torch.diagonal(chol)).sum()
    dim = w_train.shape[1]

    def to_z(w: torch.Tensor) -> torch.Tensor:
        return (w - mu) @ inv.T

    def to_w(z: torch.Tensor) -> torch.Tensor:
        return z @ chol.T + mu

    def nll_w(w: torch.Tensor) -> torch.Tensor:
        z = to_z(w)
        return 0.5 * z.square().sum(-1) + logdet + 0.5 * dim * math.log(2 * math.pi)

    return LatentFactor(to_w=to_w, to_z=to_z, nll_w=nll_w, w_train=w_train, w_init=w_init)


def synthetic_model(
    n_vertices: int = 80, n_id: int = 24, n_ex: int = 8, rank_id: int = 5, rank_ex: int = 4, seed: int = 0
) -> tuple[FitModel, dict[str, torch.Tensor]]:
    """A bilinear model from a seeded random tensor, HOSVD-truncated to (rank_id, rank_ex).

    Returns the FitModel and {"tensor": (n_id, n_ex, N, 3) training meshes, "core": (3N, I, E),
    "mean": (3N,), "faces": (F, 3)}. Expression 0 is neutral; scale: a ~10 cm head with mm-cm variation.
    """
    rng = np.random.default_rng(seed)
    template = rng.normal(size=(n_vertices, 3)) * 0.05  # (N, 3) metres
    id_basis = rng.normal(size=(rank_id, n_vertices, 3)) * 0.004
    ex_basis = rng.normal(size=(rank_ex, n_vertices, 3)) * 0.003
    a = rng.normal(size=(n_id, rank_id))  # identity coefficients
    b = np.concatenate([np.zeros((1, rank_ex)), rng.normal(size=(n_ex - 1, rank_ex))])  # neutral first
    inter = rng.normal(size=(rank_id, rank_ex, n_vertices, 3)) * 0.0008  # identity-dependent expressions
    tensor = (
        template
        + np.einsum("ir,rnc->inc", a, id_basis)[:, None]
        + np.einsum("es,snc->enc", b, ex_basis)[None]
        + np.einsum("ir,es,rsnc->ienc", a, b, inter)
    )  # (n_id, n_ex, N, 3)
    mean = tensor.mean((0, 1)).reshape(-1)  # (3N,)
    data = (tensor.reshape(n_id, n_ex, -1) - mean).transpose(2, 0, 1)  # (3N, n_id, n_ex)
    # HOSVD (BabyFlow eq. 8-9): factor bases from the SVD of each mode's unfolding, C = T x2 U_id^T x3 U_ex^T.
    u_id = np.linalg.svd(data.transpose(1, 0, 2).reshape(n_id, -1), full_matrices=False)[0][:, : rank_id + 1]
    u_ex = np.linalg.svd(data.transpose(2, 0, 1).reshape(n_ex, -1), full_matrices=False)[0][:, : rank_ex + 1]
    c = np.einsum("kie,ia,eb->kab", data, u_id, u_ex)  # (3N, I, E)
    c_t = torch.tensor(c, dtype=torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32)
    w_id = torch.tensor(u_id, dtype=torch.float32)
    w_ex = torch.tensor(u_ex, dtype=torch.float32)

    def decode(wi: torch.Tensor, we: torch.Tensor) -> torch.Tensor:
        return (torch.einsum("kie,bi,be->bk", c_t, wi, we) + mean_t).unflatten(-1, (-1, 3))

    model = FitModel(
        decode=decode,
        identity=affine_factor(w_id, w_id.mean(0)),
        expression=affine_factor(w_ex, w_ex[0]),
        mean_shape=mean_t.reshape(-1, 3),
    )
    faces = torch.tensor(rng.integers(0, n_vertices, size=(2 * n_vertices, 3)))
    return model, {
        "tensor": torch.tensor(tensor, dtype=torch.float32),
        "core": c_t,
        "mean": mean_t,
        "faces": faces,
    }
