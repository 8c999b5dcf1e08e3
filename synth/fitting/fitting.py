"""Fitting latents to observations: 3D meshes (BabyFlow eq. 20-22), 2D keypoints (LiP-Flow eq. 10-12),
and expression neutralisation (fit, swap in the neutral expression, decode).

The math is written against `FitModel`, a small bundle of callables (decode, the z <-> w maps of each
factor, their NLL), so the same code fits the flow model, its without-flow ablation and synthetic models
in tests. `fit_model_from_face_model` builds one from a loaded `FaceModel`.

Optimiser: L-BFGS with a strong-Wolfe line search. The energies are smooth, deterministic (full batch,
no noise) and low-dimensional (tens to a few hundred latents per sample), which is the case quasi-Newton
methods are made for; Adam needs hundreds of steps and a tuned learning rate to reach the same optimum.
A batch of B meshes is one problem whose energy is the sum of B independent ones, so one L-BFGS run
solves all of them; the line search is shared, which costs a few extra iterations, not accuracy.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from synth.atomic import atomic_write_bytes
from synth.errors import SynthError
from synth.facemodel.bilinear import bilinear_decode
from synth.facemodel.model import FaceModel
from synth.fitting.metrics import MM_PER_M, per_vertex_error
from synth.render.camera import Cameras

log = logging.getLogger(__name__)


class Prior(Enum):
    """The latent prior of a fit.

    flow: the normalizing flow's NLL of w; the fit runs over z (w = f^-1(z)).
    gaussian: a multivariate Gaussian on w from the training codes (BabyFlow eq. 22, no flow); fit over w.
    none: no prior (maximum likelihood of the observations only); fit over w.
    """

    flow = "flow"
    gaussian = "gaussian"
    none = "none"


class Alignment(Enum):
    """How a target mesh is brought into the model frame before fitting."""

    similarity = "similarity"  # rotation, translation and isotropic scale (Umeyama)
    rigid = "rigid"  # rotation and translation
    none = "none"  # the target is already in the model frame


@dataclass
class FitOptions:
    """Weights and schedule of a fit (BabyFlow eq. 20: E = gamma1 E_data + gamma2 E_prior).

    E_data is the mean squared vertex error in mm^2 (3D) or the mean squared keypoint error in px^2 (2D);
    E_prior is the prior's negative log-likelihood per latent dimension (nats), so both are O(1) and the
    weights transfer between models of different sizes.
    """

    gamma1: float = 0.99
    gamma2: float = 0.01
    prior: Prior = Prior.flow
    alignment: Alignment = Alignment.similarity
    outer_iters: int = 2  # alternations identity <-> expression (BabyFlow 4.5)
    inner_iters: int = 10  # L-BFGS iterations per block and alternation
    # Then both factors jointly: alternation alone stalls in the bilinear scale ambiguity
    # (w_id * a, w_ex / a), where joint quasi-Newton steps move along it (tests/fitting/test_fitting.py).
    final_joint_iters: int = 100
    # Flow prior only: start from a Gaussian-prior fit (same schedule). In whitened w the energy is nearly
    # quadratic and converges in a few iterations; through the inverse flow it converges slowly from the
    # mean (default model, 4 held-out meshes: 0.60 mm -> 0.42 mm with 5x the iterations; docs/fitting.md).
    warm_start: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.prior, str):
            self.prior = Prior(self.prior)
        if isinstance(self.alignment, str):
            self.alignment = Alignment(self.alignment)
        if self.gamma1 < 0 or self.gamma2 < 0 or abs(self.gamma1 + self.gamma2 - 1.0) > 1e-6:
            raise ValueError(
                f"fit.gamma1={self.gamma1} and fit.gamma2={self.gamma2} must be >= 0 and sum to 1 "
                "(BabyFlow eq. 20)"
            )
        for key in ("outer_iters", "inner_iters"):
            if getattr(self, key) < 1:
                raise ValueError(f"fit.{key}={getattr(self, key)} must be >= 1")
        if self.final_joint_iters < 0:
            raise ValueError(f"fit.final_joint_iters={self.final_joint_iters} must be >= 0")


@dataclass(frozen=True)
class LatentFactor:
    """One factor (identity or expression) of a latent model.

    to_w: z (B, D) -> w (B, K), the inverse flow (and PCA back-projection, if the flow runs in PCA space).
    to_z: w (B, K) -> z (B, D).
    nll_w: w (B, K) -> (B,) negative log-density of w under the flow, in nats.
    w_train: (n, K) the training codes; their mean and covariance give the Gaussian prior.
    w_init: (K,) where fits start: the mean identity, or the neutral expression.
    """

    to_w: Callable[[Tensor], Tensor]
    to_z: Callable[[Tensor], Tensor]
    nll_w: Callable[[Tensor], Tensor]
    w_train: Tensor
    w_init: Tensor
    gaussian: GaussianPrior = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gaussian", GaussianPrior.from_samples(self.w_train))

    @property
    def z_dim(self) -> int:
        return int(self.to_z(self.w_init[None]).shape[-1])

    @property
    def w_dim(self) -> int:
        return int(self.w_init.shape[-1])


@dataclass(frozen=True)
class FitModel:
    """What fitting needs of a face model.

    decode: (w_id (B, K_id), w_ex (B, K_ex)) -> vertices (B, N, 3), metres.
    mean_shape: (N, 3) the Procrustes target (BabyFlow: the bilinear mean mu_x).
    """

    decode: Callable[[Tensor, Tensor], Tensor]
    identity: LatentFactor
    expression: LatentFactor
    mean_shape: Tensor


def fit_model_from_face_model(model: FaceModel) -> FitModel:
    """The `FitModel` view of a loaded `FaceModel`: its decoder and flows, the training identities'
    coefficients (Gaussian prior, mean-identity start) and the catalogue expressions' (neutral start)."""

    def factor(flow, w_train: Tensor, w_init: Tensor) -> LatentFactor:
        return LatentFactor(
            to_w=flow.to_w, to_z=flow.to_z, nll_w=lambda w: -flow.log_prob(w), w_train=w_train, w_init=w_init
        )

    def decode(w_id: Tensor, w_ex: Tensor) -> Tensor:
        # Unblocked: `FaceModel.decode` pads every batch to whole row blocks for batch-independent bytes,
        # which a fit does not need and would pay for at every one of its hundreds of evaluations.
        return bilinear_decode(model.core, model.mean, w_id, w_ex)

    return FitModel(
        decode=decode,
        identity=factor(model.flow_id, model.identity_coefficients, model.identity_coefficients.mean(0)),
        expression=factor(model.flow_ex, model.expression_coefficients, model.neutral_w_ex),
        mean_shape=model.mean_shape,
    )


@dataclass(frozen=True)
class GaussianPrior:
    """A multivariate Gaussian on w: mean (K,), eigenvectors (K, K), eigenvalues (K,) of the covariance.

    Eigenvalues are floored at 1e-6 of the largest, so directions the training codes never use (the
    centred codes have rank n - 1) are strongly penalised instead of making the covariance singular.
    """

    mean: Tensor
    eigvecs: Tensor
    eigvals: Tensor

    @staticmethod
    def from_samples(w: Tensor) -> GaussianPrior:
        w = w.to(torch.float64)
        mean = w.mean(0)
        cov = torch.cov(w.T).reshape(w.shape[1], w.shape[1])  # (K, K); reshape covers K == 1
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(1e-6 * eigvals.max().clamp_min(1e-30))
        return GaussianPrior(mean.float(), eigvecs.float(), eigvals.float())

    def mahalanobis_sq(self, w: Tensor) -> Tensor:
        """w: (B, K) -> (B,) squared Mahalanobis distance to the mean."""
        coeff = (w - self.mean.to(w)) @ self.eigvecs.to(w)  # (B, K) in the eigenbasis
        return (coeff.square() / self.eigvals.to(w)).sum(-1)


# ----------------------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Similarity:
    """x -> scale * x @ rotation^T + translation.

    rotation (B, 3, 3), scale (B,), translation (B, 3) metres.
    """

    rotation: Tensor
    scale: Tensor
    translation: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """x: (B, N, 3) -> (B, N, 3)."""
        return self.scale[:, None, None] * x @ self.rotation.transpose(1, 2) + self.translation[:, None]

    def invert(self, y: Tensor) -> Tensor:
        """y: (B, N, 3) -> x with apply(x) == y."""
        return (y - self.translation[:, None]) @ self.rotation / self.scale[:, None, None]

    @staticmethod
    def identity(
        batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Similarity:
        eye = torch.eye(3, device=device, dtype=dtype).expand(batch, 3, 3).clone()
        return Similarity(
            eye,
            torch.ones(batch, device=device, dtype=dtype),
            torch.zeros(batch, 3, device=device, dtype=dtype),
        )


def procrustes(source: Tensor, target: Tensor, scale: bool = True) -> Similarity:
    """The similarity (or rigid) transform that best maps `source` onto `target` in least squares.

    source: (B, N, 3); target: (N, 3) or (B, N, 3). Umeyama (1991), batched; hand-written because the
    scipy / sklearn versions are unbatched numpy and the fit runs on torch devices. Solved in float64 so
    near-degenerate (flat) point sets keep a proper rotation.
    """
    dtype = source.dtype
    src = source.to(torch.float64)
    tgt = target.to(torch.float64).expand_as(src)
    mu_s, mu_t = src.mean(1), tgt.mean(1)  # (B, 3)
    xs, xt = src - mu_s[:, None], tgt - mu_t[:, None]  # (B, N, 3)
    cov = xt.transpose(1, 2) @ xs / src.shape[1]  # (B, 3, 3) cross-covariance target x source
    u, sig, vh = torch.linalg.svd(cov)
    d = torch.ones_like(sig)
    d[:, 2] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))  # reflection guard
    rot = u @ torch.diag_embed(d) @ vh  # (B, 3, 3)
    if scale:
        var_s = xs.square().sum((1, 2)) / src.shape[1]  # (B,)
        s = (sig * d).sum(-1) / var_s
    else:
        s = torch.ones_like(mu_s[:, 0])
    trans = mu_t - s[:, None] * (mu_s[:, None] @ rot.transpose(1, 2))[:, 0]
    return Similarity(rot.to(dtype), s.to(dtype), trans.to(dtype))


# ----------------------------------------------------------------------------------------------------
# The optimisation engine
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    """Latent variables of one factor and how they become w and a prior energy.

    With the flow prior the variables are z. Otherwise they are whitened coordinates u of the training
    codes' Gaussian, w = mean + u @ (V sqrt(lambda))^T: the same w, but an O(1), isotropic scale for the
    quasi-Newton steps (raw w of an HOSVD model spans five orders of magnitude of sensitivity).
    """

    factor: LatentFactor
    prior: Prior

    def _basis(self, like: Tensor) -> tuple[Tensor, Tensor]:
        g = self.factor.gaussian
        scale = g.eigvals.clamp_min(1e-4 * g.eigvals.max()).sqrt()  # (K,) the floor keeps u -> w invertible
        return g.mean.to(like), (g.eigvecs * scale).to(like)  # (K,), (K, K)

    def init(self, batch: int, start_w: Tensor | None) -> Tensor:
        w0 = self.factor.w_init[None].expand(batch, -1) if start_w is None else start_w
        w0 = w0.detach().float()
        if self.prior is Prior.flow:
            return self.factor.to_z(w0).detach().clone()
        mean, basis = self._basis(w0)
        return torch.linalg.solve(basis, (w0 - mean).T).T.contiguous()  # (B, K)

    def w(self, x: Tensor) -> Tensor:
        if self.prior is Prior.flow:
            return self.factor.to_w(x)
        mean, basis = self._basis(x)
        return mean + x @ basis.T

    def energy(self, x: Tensor, w: Tensor) -> Tensor:
        """(B,) prior NLL per latent dimension."""
        if self.prior is Prior.flow:
            return self.factor.nll_w(w) / x.shape[-1]
        if self.prior is Prior.gaussian:
            return 0.5 * self.factor.gaussian.mahalanobis_sq(w) / w.shape[-1]
        return torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)


def _lbfgs(params: Sequence[Tensor], energy: Callable[[], Tensor], iters: int) -> None:
    """Minimise sum(energy()) over `params` in place with L-BFGS (strong Wolfe)."""
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=iters,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = energy().sum()
        loss.backward()
        return loss

    opt.step(closure)


@dataclass
class LatentFit:
    """Result of fitting a batch.

    z_id (B, D_id), z_ex (B, D_ex), w_id (B, K_id), w_ex (B, K_ex): the fitted latents (z from to_z of w
    when the fit ran in w space). vertices: (B, N, 3) the reconstruction in the target's own frame.
    energy: (B,) final E; data_term: (B,) final E_data (mm^2 or px^2).
    """

    z_id: Tensor
    z_ex: Tensor
    w_id: Tensor
    w_ex: Tensor
    vertices: Tensor
    energy: Tensor
    data_term: Tensor
    transform: Similarity | None = None


def _fit(
    factors: Sequence[LatentFactor],
    decode: Callable[..., Tensor],
    data_energy: Callable[[Tensor], Tensor],
    batch: int,
    device: torch.device,
    options: FitOptions,
    start: Sequence[Tensor | None],
    extra: Sequence[Tensor] = (),
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """Alternating minimisation of gamma1 * data_energy(decode(*w)) + gamma2 * sum of the factors' priors.

    factors: the latent factors (identity, expression; one for a linear model); decode(*w) -> vertices
    (B, N, 3); data_energy: vertices -> (B,), it may depend on the `extra` leaf tensors (a pose), which
    are optimised in every block and updated in place; start: per factor None or (B, K) initial w.
    Returns the optimised variables (z or whitened w), the w, energy (B,) and data term (B,).
    """
    blocks = [_Block(f, options.prior) for f in factors]
    xs = [b.init(batch, s).to(device) for b, s in zip(blocks, start, strict=True)]

    def energies() -> tuple[Tensor, Tensor, list[Tensor]]:
        ws = [b.w(x) for b, x in zip(blocks, xs, strict=True)]
        e_data = data_energy(decode(*ws))
        e_prior = sum(b.energy(x, w) for b, x, w in zip(blocks, xs, ws, strict=True))
        return options.gamma1 * e_data + options.gamma2 * e_prior, e_data, ws

    def run(which: Sequence[int], iters: int) -> None:
        for i, x in enumerate(xs):
            x.requires_grad_(i in which)
        for x in extra:
            x.requires_grad_(True)
        _lbfgs([*(xs[i] for i in which), *extra], lambda: energies()[0], iters)

    if len(blocks) > 1:
        for _ in range(options.outer_iters):  # BabyFlow 4.5: alternate identity and expression
            for i in range(len(blocks)):
                run([i], options.inner_iters)
    joint = options.final_joint_iters if len(blocks) > 1 else options.final_joint_iters + options.inner_iters
    if joint:
        run(range(len(blocks)), joint)
    with torch.no_grad():
        e, e_data, ws = energies()
    for x in [*xs, *extra]:
        x.requires_grad_(False)
    return [x.detach() for x in xs], ws, e, e_data


def _z(factor: LatentFactor, prior: Prior, x: Tensor, w: Tensor) -> Tensor:
    """The flow latent of a fitted factor (the variable itself when the fit ran over z)."""
    if prior is Prior.flow:
        return x
    with torch.no_grad():
        return factor.to_z(w)


def fit_posed(
    factors: Sequence[LatentFactor],
    decode: Callable[..., Tensor],
    mean_shape: Tensor,
    vertices: Tensor,
    options: FitOptions,
    start: Sequence[Tensor | None],
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, Similarity, Tensor]:
    """Fit latents and a pose (model frame -> target frame) to meshes: the engine of `fit_meshes` and of
    the linear baseline. vertices: (B, N, 3) metres; mean_shape: (N, 3) the Procrustes reference.

    Returns variables, w per factor, energy (B,), data term (B,) in mm^2, pose, reconstruction (B, N, 3)
    in the target frame.
    """
    if vertices.ndim != 3 or vertices.shape[1:] != mean_shape.shape:
        raise ValueError(
            f"meshes must be (B, {mean_shape.shape[0]}, 3) in the model's topology, "
            f"got {tuple(vertices.shape)}"
        )
    device = vertices.device
    vertices = vertices.float()
    batch = vertices.shape[0]
    # Pose: model frame -> target frame, initialised by Procrustes of the model mean onto the target and
    # then refined with the latents (the mean-shape alignment alone is biased by the target's own shape).
    mean_shape = mean_shape.to(device)
    pose0 = procrustes(
        mean_shape[None].expand(batch, -1, -1), vertices, scale=options.alignment is Alignment.similarity
    )
    # Pose unknowns in millimetres of displacement at the mesh's radius, so they are O(1) like the latents.
    radius_mm = MM_PER_M * (mean_shape - mean_shape.mean(0)).norm(dim=-1).mean().item()
    rotvec = torch.zeros(batch, 3, device=device)  # rotation after pose0's, radians * radius_mm
    log_scale = torch.zeros(batch, device=device)  # log scale * radius_mm
    shift = torch.zeros(batch, 3, device=device)  # translation after pose0's, mm
    extra = {Alignment.similarity: [rotvec, log_scale, shift], Alignment.rigid: [rotvec, shift]}

    def pose() -> Similarity:
        if options.alignment is Alignment.none:
            return Similarity.identity(batch, device)
        return Similarity(
            pose0.rotation @ rotation_matrix(rotvec / radius_mm),
            pose0.scale * (log_scale / radius_mm).exp(),
            pose0.translation + shift / MM_PER_M,
        )

    def data_energy(pred: Tensor) -> Tensor:
        return (pose().apply(pred) - vertices).square().sum(-1).mean(-1) * MM_PER_M**2  # (B,) mm^2

    xs, ws, e, e_data = _fit(
        factors, decode, data_energy, batch, device, options, start, extra.get(options.alignment, ())
    )
    with torch.no_grad():
        fitted_pose = pose()
        recon = fitted_pose.apply(decode(*ws))
    return xs, ws, e, e_data, fitted_pose, recon


# ----------------------------------------------------------------------------------------------------
# 3D-3D fitting and neutralisation
# ----------------------------------------------------------------------------------------------------


def fit_meshes(
    model: FitModel,
    vertices: Tensor,
    options: FitOptions,
    start: tuple[Tensor | None, Tensor | None] = (None, None),
) -> LatentFit:
    """Fit the model to registered meshes (BabyFlow 4.5, eq. 20-22).

    vertices: (B, N, 3) metres, in the model's topology, any pose. A similarity (or rigid) pose from the
    model frame to each target starts at the Procrustes alignment of the model mean and is optimised with
    the latents; the reconstruction is returned in the target's frame, `transform` is that pose.
    start: optional (w_id, w_ex) initial codes, (B, K) each; default the mean identity and the neutral
    expression (with the flow prior and `warm_start`: the result of a Gaussian-prior fit from there).
    """
    if options.prior is Prior.flow and options.warm_start and start == (None, None):
        warm = fit_meshes(model, vertices, dataclasses.replace(options, prior=Prior.gaussian))
        start = (warm.w_id, warm.w_ex)
    factors = (model.identity, model.expression)
    xs, ws, e, e_data, pose, recon = fit_posed(
        factors, model.decode, model.mean_shape, vertices, options, start
    )
    z_id, z_ex = (_z(f, options.prior, x, w) for f, x, w in zip(factors, xs, ws, strict=True))
    return LatentFit(z_id, z_ex, ws[0].detach(), ws[1].detach(), recon, e, e_data, pose)


def rotation_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues: rotation vectors (B, 3) radians -> (B, 3, 3), smooth at 0 (sinc form)."""
    theta = (rotvec.square().sum(-1) + 1e-24).sqrt()[:, None, None]  # (B, 1, 1)
    zero = torch.zeros_like(rotvec[:, 0])
    x, y, z = rotvec.unbind(-1)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))  # (B, 3, 3) [v]x
    a = torch.sinc(theta / torch.pi)  # sin(t) / t
    b = 0.5 * torch.sinc(theta / (2 * torch.pi)).square()  # (1 - cos t) / t^2
    return torch.eye(3, device=rotvec.device, dtype=rotvec.dtype) + a * k + b * (k @ k)


def neutral_twin(model: FitModel, w_id: Tensor) -> Tensor:
    """The neutral-expression mesh of identities w_id (B, K_id) -> (B, N, 3), model frame.

    "The neutral of an identity" is the model's neutral expression coefficient (`FaceModel.neutral_w_ex`,
    here `model.expression.w_init`): `neutralise` below calls this, and the pipeline's `identity_sets`
    neutral twins decode the same coefficient in its batched geometry stage (synth/pipeline/samplers.py).
    """
    w_ex = model.expression.w_init.to(w_id)[None].expand(w_id.shape[0], -1)
    return model.decode(w_id, w_ex)


@dataclass
class Neutralised:
    """fit: the fit of the expressive input; vertices: (B, N, 3) the neutralised mesh in the input frame."""

    fit: LatentFit
    vertices: Tensor


def neutralise(model: FitModel, vertices: Tensor, options: FitOptions) -> Neutralised:
    """Fit expressive meshes (B, N, 3), set the expression to neutral, decode, map back to the input frame."""
    fit = fit_meshes(model, vertices, options)
    with torch.no_grad():
        neutral = fit.transform.apply(neutral_twin(model, fit.w_id))
    return Neutralised(fit, neutral)


class NeutraliseStage:
    """Batch stage: {"mesh": (B, N, 3)} -> adds "mesh_neutral" (B, N, 3), "w_id_fit", "w_ex_fit", "z_id_fit".

    A plain class over numpy batches (Ray Data `map_batches` style) so whole datasets are neutralised by
    the same code as `neutralise`.
    """

    def __init__(self, model: FitModel, options: FitOptions, device: str = "cpu") -> None:
        self.model, self.options, self.device = model, options, torch.device(device)

    def __call__(self, batch: dict) -> dict:
        verts = torch.as_tensor(np.asarray(batch["mesh"], dtype=np.float32), device=self.device)
        out = neutralise(self.model, verts, self.options)
        return {
            **batch,
            "mesh_neutral": out.vertices.cpu().numpy().astype(np.float32),
            "w_id_fit": out.fit.w_id.cpu().numpy(),
            "w_ex_fit": out.fit.w_ex.cpu().numpy(),
            "z_id_fit": out.fit.z_id.cpu().numpy(),
        }


# ----------------------------------------------------------------------------------------------------
# Fitting from 2D keypoints (LiP-Flow setting)
# ----------------------------------------------------------------------------------------------------


def fit_keypoints(
    model: FitModel,
    keypoints: Tensor,
    cameras: Cameras,
    landmarks: Callable[[Tensor], Tensor],
    options: FitOptions,
    weights: Tensor | None = None,
    start: tuple[Tensor | None, Tensor | None] = (None, None),
) -> LatentFit:
    """Recover (z_id, z_ex) from 2D keypoints of known cameras (LiP-Flow eq. 10-12 with our priors).

    keypoints: (B, L, 2) pixels; cameras: B cameras (OpenCV convention, `synth.render.camera`);
    landmarks: vertices (B, N, 3) -> (B, L, 3), differentiable; weights: optional (B, L) visibility in
    [0, 1]. The mesh is in the world frame of the cameras (no alignment: the pose is part of the camera).
    Initialised at `start` (optional (w_id, w_ex), (B, K) each, e.g. a keypoint encoder's prediction), else
    at the mean identity and neutral expression (and, with the flow prior and `warm_start`, refined from a
    Gaussian-prior fit).
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be (B, L, 2) pixels, got {tuple(keypoints.shape)}")
    wts = torch.ones(keypoints.shape[:2], device=keypoints.device) if weights is None else weights.float()

    def data_energy(pred: Tensor) -> Tensor:
        px = cameras.project(landmarks(pred))[..., :2]  # (B, L, 2)
        return ((px - keypoints).square().sum(-1) * wts).sum(-1) / wts.sum(-1).clamp_min(1.0)  # (B,) px^2

    if options.prior is Prior.flow and options.warm_start and start == (None, None):
        warm = fit_keypoints(
            model, keypoints, cameras, landmarks, dataclasses.replace(options, prior=Prior.gaussian), weights
        )
        start = (warm.w_id, warm.w_ex)
    factors = (model.identity, model.expression)
    xs, ws, e, e_data = _fit(
        factors, model.decode, data_energy, keypoints.shape[0], keypoints.device, options, start
    )
    z_id, z_ex = (_z(f, options.prior, x, w) for f, x, w in zip(factors, xs, ws, strict=True))
    with torch.no_grad():
        verts = model.decode(*ws)
    return LatentFit(z_id, z_ex, ws[0].detach(), ws[1].detach(), verts, e, e_data, None)


# ----------------------------------------------------------------------------------------------------
# Mesh files
# ----------------------------------------------------------------------------------------------------


def read_mesh_file(path: str | Path, n_vertices: int) -> np.ndarray:
    """Vertices (N, 3) float32 metres of a mesh file in the model's topology: .npy (N, 3), or .ply / .obj
    read by trimesh without processing (vertex order kept)."""
    path = Path(path)
    if not path.is_file():
        raise SynthError(f"inputs: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        verts = np.load(path, allow_pickle=False)
    elif suffix in (".ply", ".obj"):
        import trimesh

        mesh = trimesh.load(path, process=False, force="mesh")
        verts = np.asarray(mesh.vertices)
    else:
        raise SynthError(f"inputs: {path} has suffix {suffix!r}; give .npy (N, 3), .ply or .obj meshes")
    if verts.shape != (n_vertices, 3):
        raise SynthError(
            f"inputs: {path} has vertices {verts.shape}, the model's topology has ({n_vertices}, 3); "
            "fit meshes registered to the model topology"
        )
    if not np.isfinite(verts).all():
        raise SynthError(f"inputs: {path} has NaN or inf vertices")
    return verts.astype(np.float32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write vertices (N, 3) as .npy, or with faces (F, 3) as .ply / .obj (by suffix), atomically."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        atomic_write_bytes(path, _npy_bytes(np.asarray(vertices, dtype=np.float32)))
        return
    import trimesh

    data = trimesh.Trimesh(vertices, faces, process=False).export(file_type=path.suffix.lower()[1:])
    atomic_write_bytes(path, data if isinstance(data, bytes) else data.encode())


def write_fit(
    out_dir: str | Path,
    stem: str,
    suffix: str,
    fit: LatentFit,
    row: int,
    faces: np.ndarray,
    target: np.ndarray,
    neutral: np.ndarray | None,
) -> dict[str, float]:
    """Write one fitted mesh's outputs into out_dir: `<stem>.latents.npz` (z_id, z_ex, w_id, w_ex, pose
    rotation / scale / translation), `<stem>.recon<suffix>`, `<stem>.errors.npy` (per-vertex error, mm),
    and `<stem>.neutral<suffix>` when `neutral` is given. Returns the error summary (mm)."""
    out_dir = Path(out_dir)
    arrays = {
        "z_id": fit.z_id[row], "z_ex": fit.z_ex[row], "w_id": fit.w_id[row], "w_ex": fit.w_ex[row],
        "rotation": fit.transform.rotation[row], "scale": fit.transform.scale[row],
        "translation": fit.transform.translation[row],
    }  # fmt: skip
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in arrays.items()})
    atomic_write_bytes(out_dir / f"{stem}.latents.npz", buf.getvalue())
    recon = fit.vertices[row].detach().cpu().numpy()
    write_mesh(out_dir / f"{stem}.recon{suffix}", recon, faces)
    errors = per_vertex_error(torch.from_numpy(recon)[None], torch.from_numpy(target)[None])[0].numpy()
    atomic_write_bytes(out_dir / f"{stem}.errors.npy", _npy_bytes(errors.astype(np.float32)))
    if neutral is not None:
        write_mesh(out_dir / f"{stem}.neutral{suffix}", neutral, faces)
    return {"mean_mm": float(errors.mean()), "max_mm": float(errors.max())}
