"""RealNVP normalizing flows over the bilinear coefficients (BabyFlow section 4.4, eq. 10-19).

One `LatentFlow` per factor: w (K,) -> PCA to the components explaining `pca_variance` of the training
variance, whitened -> u (D,) -> RealNVP f -> z (D,) ~ N(0, I). The coupling flow is zuko's `RealNVP`
(affine coupling layers, `MonotonicAffineTransform`, alternating checkered partitions): it has exact
inverses and log-determinants, so nothing here is hand-written except the training loss.

Densities are over the D PCA coordinates of w (an orthonormal projection): the part of w outside the
PCA subspace is ignored by `to_z` / `log_prob`, and `to_w` returns points of the subspace.
"""

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import zuko
from torch import Tensor, nn
from tqdm.auto import tqdm

from synth.facemodel.config import FlowConfig
from synth.facemodel.threads import row_blocks, single_thread

log = logging.getLogger(__name__)

DEGENERATE = 1e-4  # relative variance below which a PCA component is not kept


def fit_pca(w: Tensor, variance: float) -> tuple[Tensor, Tensor, Tensor]:
    """PCA of training coefficients w (n, K) keeping `variance` of the variance (at least 1 component).

    Components with less than `DEGENERATE` of the largest variance are dropped whatever `variance` says:
    a HOSVD factor's rows have orthonormal columns, so after centring all directions have equal variance
    except the one every training code shares (~1e-6 of the others on the default model, 0 for the
    expressions), and whitening that one would divide by ~0 (held-out NLL 2e10).
    Returns mean (K,), basis (D, K) with orthonormal rows, std (D,) the components' standard deviations.
    """
    w64 = w.double()
    mean = w64.mean(0)
    _, s, vh = torch.linalg.svd(w64 - mean, full_matrices=False)  # s: (min(n, K),), vh: (., K)
    var = s.square() / max(w.shape[0] - 1, 1)
    frac = var.cumsum(0) / var.sum()
    dim = int(torch.searchsorted(frac, torch.tensor(variance - 1e-12, dtype=frac.dtype)).item()) + 1
    dim = max(1, min(dim, int((var > var[0] * DEGENERATE).sum())))
    return mean.float(), vh[:dim].float(), var[:dim].sqrt().float()


class LatentFlow(nn.Module):
    """w (B, K) <-> z (B, D): whitened PCA followed by a RealNVP of `layers` affine coupling layers.

    pca_mean: (K,), pca_basis: (D, K) orthonormal rows, pca_std: (D,) all in coefficient units.
    """

    def __init__(
        self,
        pca_mean: Tensor,
        pca_basis: Tensor,
        pca_std: Tensor,
        layers: int,
        hidden: int,
        hidden_layers: int,
    ) -> None:
        super().__init__()
        self.register_buffer("pca_mean", pca_mean.float().clone())
        # contiguous whatever the caller's strides (an SVD's transposed view): a GEMM's rounding depends on
        # its operands' layout, and a saved and reloaded flow must give the bytes of the one just trained
        self.register_buffer(
            "pca_basis", pca_basis.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        )
        self.register_buffer("pca_std", pca_std.float().clone())
        self.layers, self.hidden, self.hidden_layers = layers, hidden, hidden_layers
        self.flow = zuko.flows.RealNVP(
            self.dim_z, transforms=layers, hidden_features=(hidden,) * hidden_layers
        )

    @property
    def dim_w(self) -> int:
        return self.pca_basis.shape[1]

    @property
    def dim_z(self) -> int:
        return self.pca_basis.shape[0]

    def architecture(self) -> dict[str, int]:
        """What `from_architecture` needs to rebuild this module before loading its state."""
        return {
            "dim_w": self.dim_w,
            "dim_z": self.dim_z,
            "layers": self.layers,
            "hidden": self.hidden,
            "hidden_layers": self.hidden_layers,
        }

    @classmethod
    def from_architecture(cls, arch: dict[str, int]) -> "LatentFlow":
        """An untrained flow with placeholder PCA buffers, to `load_state_dict` into."""
        dim_w, dim_z = arch["dim_w"], arch["dim_z"]
        return cls(
            torch.zeros(dim_w), torch.zeros(dim_z, dim_w), torch.ones(dim_z),
            arch["layers"], arch["hidden"], arch["hidden_layers"],
        )  # fmt: skip

    def whiten(self, w: Tensor) -> Tensor:
        """w (B, K) -> u (B, D) whitened PCA coordinates (in float64 exactly the inverse of `unwhiten`)."""
        coords = (w - self.pca_mean) @ self.pca_basis.T  # (B, D)
        if coords.dtype == torch.float64:
            # The basis is stored in float32, orthonormal only to ~5e-8: the plain projection would leave
            # whiten(unwhiten(u)) off by ~2e-7, which the trained expression flow amplifies to ~1e-5 in z.
            # Least-squares coordinates (B B^T)^-1 B w undo `unwhiten` to round-off. Training runs in
            # float32, where the two agree to rounding; it keeps the projection so builds stay bit-stable.
            gram = self.pca_basis @ self.pca_basis.T  # (D, D)
            coords = torch.linalg.solve(gram, coords.T).T
        return coords / self.pca_std

    def unwhiten(self, u: Tensor) -> Tensor:
        """u (B, D) -> w (B, K) in the PCA subspace."""
        return (u * self.pca_std) @ self.pca_basis + self.pca_mean

    # The maps compute in the module's dtype (FaceModel keeps its flows in float64: through six affine
    # couplings float32 round-off reached 1.6e-5 in z -> w -> z) and return the input's dtype.
    def to_z(self, w: Tensor, block: bool = False) -> Tensor:
        """w (B, K) -> z (B, D), f of eq. 10."""
        with single_thread():
            transform = self.flow().transform  # built once per call, not per block
            return _blocked(lambda x: transform(self.whiten(x)), w.to(self.pca_mean.dtype), block).to(w.dtype)

    def u_to_z(self, u: Tensor, block: bool = False) -> Tensor:
        """Whitened PCA coordinates u (B, D) -> z (B, D), the flow alone."""
        with single_thread():
            transform = self.flow().transform
            return _blocked(transform, u.to(self.pca_mean.dtype), block).to(u.dtype)

    def to_w(self, z: Tensor, block: bool = False) -> Tensor:
        """z (B, D) -> w (B, K), the exact inverse f^-1 (eq. 15)."""
        with single_thread():
            inverse = self.flow().transform.inv
            return _blocked(lambda x: self.unwhiten(inverse(x)), z.to(self.pca_mean.dtype), block).to(z.dtype)

    def log_prob(self, w: Tensor) -> Tensor:
        """log p_W(w) (B,) of the PCA coordinates of w (eq. 10), whitening Jacobian included."""
        with single_thread():
            u = self.whiten(w.to(self.pca_mean.dtype))
            return (self.flow().log_prob(u) - self.pca_std.log().sum()).to(w.dtype)

    def nll_u(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample NLL of whitened u (B, D) (eq. 12) and z = f(u) (B, D), differentiable in u."""
        dist = self.flow()
        z, ladj = dist.transform.call_and_ladj(u)
        return -(dist.base.log_prob(z) + ladj), z


def _blocked(fn: Callable[[Tensor], Tensor], x: Tensor, block: bool) -> Tensor:
    """fn over x (B, D): in `threads.row_blocks` when `block` (each row's bytes independent of B), else
    all at once."""
    if not block:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in row_blocks(x)])[: x.shape[0]]


def _init_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded initialisation (no global RNG): zuko's own U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for hidden
    layers, and zero for the rest (each coupling network's output layer; the element-wise affine maps zuko
    uses when D = 1) so that training starts from the identity map."""
    for param in module.parameters():
        nn.init.zeros_(param)
    for mlp in (m for m in module.modules() if isinstance(m, zuko.nn.MLP)):
        linears = [m for m in mlp.modules() if isinstance(m, zuko.nn.Linear | nn.Linear)]
        for lin in linears[:-1]:
            bound = 1.0 / math.sqrt(lin.weight.shape[-1])
            nn.init.uniform_(lin.weight, -bound, bound, generator=generator)
            nn.init.uniform_(lin.bias, -bound, bound, generator=generator)


def jacobian_frobenius(z: Tensor, u: Tensor, generator: torch.Generator, probes: int = 1) -> Tensor:
    """Per-sample estimate of ||J_f(u)||_F (eq. 18), differentiable: z = f(u) (B, D) with u requiring grad.

    Hutchinson: for v ~ N(0, I), E |v^T J|^2 = ||J||_F^2, so the mean over `probes` vector-Jacobian
    products is an unbiased estimate of ||J||_F^2 at one backward pass each (the exact norm costs D);
    its square root (slightly biased low) is the penalty of eq. 19.
    """
    total = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
    for _ in range(probes):
        v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
        (vjp,) = torch.autograd.grad(z, u, grad_outputs=v, create_graph=True)  # (B, D)
        total = total + vjp.square().sum(-1)
    return (total / probes + 1e-12).sqrt()


def train_flow(
    w_train: Tensor,
    config: FlowConfig,
    generator: torch.Generator,
    progress: bool = False,
    name: str = "flow",
    groups: Sequence[int] | None = None,
) -> tuple[LatentFlow, dict[str, Any]]:
    """Fit one factor's flow to its training coefficients w_train (n, K) on CPU, deterministically.

    Loss per minibatch (eq. 19): mean NLL of the dequantised whitened coefficients + lambda_jac x mean
    Hutchinson ||J_f||_F. Dequantisation (paper 4.4): w~ = w + eps, eps ~ sqrt(sigma_w) U(0, 1) with
    sigma_w the variance per coordinate, i.e. U(0, 1) x dequant_scale in whitened coordinates; the noise
    is centred (U(0, 1) - 1/2) because the uncentred draw would shift the learned density by half a
    standard deviation in every coordinate and every sample would inherit that shift.

    Early stopping: a few hundred codes in tens of dimensions are easy to memorise (on the default model
    the identity flow's held-out NLL rose from the Gaussian's level to +600 nats while its training NLL
    fell). With `config.validation` > 0 a share of the `groups` (rows of one group, e.g. an identity and
    its mirrored / symmetrised variants, are never split) is held out, the flow is trained on the rest
    for `config.epochs` while the held-out NLL is evaluated every `EVAL_EVERY` epochs, and the final flow
    is trained on all rows for the best number of epochs (0 keeps the whitened-Gaussian identity map).

    Returns the flow (eval mode) and {"train_nll": mean NLL of the clean training codes, "dim_z": D,
    "epochs": epochs of the final fit, "validation": {...} when used}.
    """
    with single_thread():
        mean, basis, std = fit_pca(w_train, config.pca_variance)
        w_train = w_train.float()
        stats: dict[str, Any] = {}
        epochs = config.epochs
        split = _split(groups if groups is not None else range(len(w_train)), config.validation, generator)
        if split is not None:
            fit_rows, val_rows = split
            _, curve = _fit(
                mean, basis, std, w_train[fit_rows], config, config.epochs, generator, progress,
                f"{name} (validation run)", w_train[val_rows],
            )  # fmt: skip
            epochs, best = min(curve, key=lambda point: point[1])
            stats["validation"] = {
                "rows": len(val_rows),
                "best_epoch": epochs,
                "best_nll": best,
                "curve": curve,
            }
        flow, _ = _fit(mean, basis, std, w_train, config, epochs, generator, progress, name, None)
        with torch.no_grad():
            train_nll = float(-flow.log_prob(w_train).mean())
        log.info(
            "%s: D=%d of K=%d, %d epochs, train NLL %.3f", name, flow.dim_z, flow.dim_w, epochs, train_nll
        )
        return flow, {"train_nll": train_nll, "dim_z": flow.dim_z, "epochs": epochs, **stats}


EVAL_EVERY = 10


def _split(groups: Sequence[int], share: float, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
    """Row indices (fit, validation) holding out about `share` of the groups; None when impossible."""
    keys = sorted(set(groups))
    n_val = min(len(keys) - 1, max(1, round(share * len(keys))))
    if share <= 0 or n_val < 1:
        return None
    order = torch.randperm(len(keys), generator=generator)
    val_keys = {keys[int(i)] for i in order[:n_val]}
    val = torch.tensor([i for i, g in enumerate(groups) if g in val_keys])
    fit = torch.tensor([i for i, g in enumerate(groups) if g not in val_keys])
    return fit, val


def _fit(
    mean: Tensor,
    basis: Tensor,
    std: Tensor,
    w: Tensor,
    config: FlowConfig,
    epochs: int,
    generator: torch.Generator,
    progress: bool,
    name: str,
    w_val: Tensor | None,
) -> tuple[LatentFlow, list[tuple[int, float]]]:
    """Train a fresh flow on w (n, K) for `epochs`; with w_val, the curve [(epoch, held-out NLL)]."""
    flow = LatentFlow(mean, basis, std, config.layers, config.hidden, config.hidden_layers)
    _init_parameters(flow, generator)
    u_all = flow.whiten(w).detach()  # (n, D)
    n = u_all.shape[0]
    batch = min(config.batch_size, n)
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    curve: list[tuple[int, float]] = []

    def evaluate(epoch: int) -> None:
        if w_val is not None and epoch % EVAL_EVERY == 0:
            with torch.no_grad():
                curve.append((epoch, float(-flow.log_prob(w_val).mean())))

    evaluate(0)
    desc = f"training {name} (D={flow.dim_z})"
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for epoch in bar:
        perm = torch.randperm(n, generator=generator)
        for idx in perm.split(batch):
            noise = torch.rand(len(idx), flow.dim_z, generator=generator) - 0.5
            u = (u_all[idx] + config.dequant_scale * noise).requires_grad_(True)
            nll, z = flow.nll_u(u)
            loss = nll.mean()
            if config.lambda_jac > 0:
                loss = loss + config.lambda_jac * jacobian_frobenius(z, u, generator).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bar.set_postfix(loss=float(loss.detach()), refresh=False)
        evaluate(epoch + 1)
    flow.eval()
    flow.requires_grad_(False)
    return flow, curve
