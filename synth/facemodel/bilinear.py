"""The bilinear identity x expression model (BabyFlow eq. 8-9): HOSVD, decode, least-squares encode.

A face is x = C x2 w_id x3 w_ex + mu (3N,): C (3N, I, E) is the HOSVD core projected back onto the
vertex mode (the vertex mode is never truncated), mu the mean of all training meshes, w_id (I,) and
w_ex (E,) the identity and expression coefficients. The training identities' and expressions'
coefficients are the rows of the mode factors U_id (n_id, I) and U_ex (n_ex, E).

Everything here is a pure function over tensors; `synth.facemodel.model.FaceModel` holds the buffers.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from synth.facemodel.tensor import FaceTensor
from synth.facemodel.threads import BLOCK, pinned_kernels, row_blocks, single_thread

# Singular values below this fraction of the largest one are numerical zeros (e.g. the symmetrised
# identities are exact averages of an identity and its mirror, so they add no rank).
_NULL_TOL = 1e-6


@dataclass(frozen=True)
class Hosvd:
    """A truncated HOSVD of the mean-centred tensor.

    core: (3N, I, E) float32, metres per unit coefficient.
    mean: (3N,) float32, metres; the mean of all training meshes.
    w_id: (n_id, I) float32, rows of the identity-mode factor (each training identity's coefficients).
    w_ex: (n_ex, E) float32, rows of the expression-mode factor (each catalogue expression's coefficients).
    energy_id: (n_id,) float64, squared mode-2 singular values of the full decomposition (all of them).
    energy_ex: (n_ex,) float64, squared mode-3 singular values of the full decomposition.
    """

    core: Tensor
    mean: Tensor
    w_id: Tensor
    w_ex: Tensor
    energy_id: np.ndarray
    energy_ex: np.ndarray

    @property
    def rank_id(self) -> int:
        return self.core.shape[1]

    @property
    def rank_ex(self) -> int:
        return self.core.shape[2]

    def kept(self) -> dict[str, float | int]:
        """What truncation kept: ranks, full ranks and explained-variance fractions per mode."""
        return {
            "rank_id": self.rank_id,
            "rank_ex": self.rank_ex,
            "full_rank_id": int(self.energy_id.size),
            "full_rank_ex": int(self.energy_ex.size),
            "variance_id": float(self.energy_id[: self.rank_id].sum() / self.energy_id.sum()),
            "variance_ex": float(self.energy_ex[: self.rank_ex].sum() / self.energy_ex.sum()),
        }


def rank_for_variance(energy: np.ndarray, variance: float, common: int | None = None) -> int:
    """The smallest rank explaining at least `variance` of the energy, numerical zeros excluded.

    energy: (K,) squared singular values in decreasing order; variance in (0, 1]; common: the index of the
    mode's common component (`common_component`), whose energy is left out of the fraction and which is
    always kept.
    """
    varying = energy.astype(np.float64).copy()
    if common is not None:
        varying[common] = 0.0
    frac = np.cumsum(varying) / max(varying.sum(), np.finfo(np.float64).tiny)
    rank = int(np.searchsorted(frac, variance - 1e-12) + 1)
    numerical = int((np.sqrt(energy / energy[0]) > _NULL_TOL).sum())
    return max(1, (common or 0) + 1, min(rank, numerical, energy.size))


def common_component(u: np.ndarray) -> int | None:
    """The column of a mode factor U (n, K) that is constant over the mode (|cos| with the ones vector >
    0.99), or None. In a tensor centred only by its grand mean, each mode has one: the other mode's average
    (for the expression mode, every identity's mean face; 96 % of its energy on the default model). It is
    not variation along the mode, so `rank_for_variance` leaves it out of the fraction: otherwise the
    spread of identities decides how many expressions are kept (13 of 76 instead of 27 at 99.9 % on the
    default model, with compound expressions no longer non-negative mixes of single AUs)."""
    cos = np.abs(u.sum(axis=0)) / np.sqrt(u.shape[0])
    k = int(np.argmax(cos))
    return k if cos[k] > 0.99 else None


def _mode_factor(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and squared singular values of a mode unfolding from its Gram matrix.

    gram: (n, n) float64 = X X^T of the (n, M) unfolding X. Returns U (n, n) with columns in decreasing
    energy, each column's largest-magnitude entry made positive (a deterministic sign), and energy (n,).
    """
    energy, u = np.linalg.eigh(gram)
    energy, u = np.clip(energy[::-1], 0.0, None), u[:, ::-1]
    sign = np.sign(u[np.abs(u).argmax(0), np.arange(u.shape[1])])
    return u * np.where(sign == 0, 1.0, sign), energy


def hosvd(tensor: FaceTensor, variance_id: float, variance_ex: float) -> Hosvd:
    """HOSVD of T (3N x n_id x n_ex, mean-centred) on the identity and expression modes (eq. 8-9).

    The vertex mode is not truncated: C = S x1 U_verts = T x2 U_id^T x3 U_ex^T. U_id and U_ex are the left
    singular vectors of the mode-2 / mode-3 unfoldings, computed from their small Gram matrices, which are
    accumulated in float64 over slices of T. TensorLy's `partial_tucker` (its reference implementation
    of the same decomposition, checked against this one in the tests) unfolds and SVDs the full tensor:
    on the default 1.2 GB tensor it peaked at 8.8 GB RSS, over the 8 GiB budget; this streamed version
    never holds more than the input plus two core-sized arrays. The squared singular values give the
    explained variance per mode, which picks the ranks before the core is formed (each mode's common
    component, the other mode's average, kept and left out of the fraction: `common_component`).
    """
    n_id, n_ex, n_vert, _ = tensor.vertices.shape
    verts = tensor.vertices.reshape(n_id, n_ex, 3 * n_vert)  # a view: (n_id, n_ex, 3N)
    mean = np.zeros(3 * n_vert)
    for i in range(n_id):
        mean += verts[i].sum(0, dtype=np.float64)
    mean /= n_id * n_ex  # (3N,) float64

    gram_id = np.zeros((n_id, n_id))
    step = max(1, 2**24 // max(1, n_id * 3 * n_vert))  # expressions per slice: ~128 MB of float64
    for e in range(0, n_ex, step):
        block = (verts[:, e : e + step] - mean).reshape(n_id, -1)  # (n_id, step*3N) float64
        gram_id += block @ block.T
    gram_ex = np.zeros((n_ex, n_ex))
    for i in range(n_id):
        d = verts[i] - mean  # (n_ex, 3N) float64
        gram_ex += d @ d.T
    u_id, energy_id = _mode_factor(gram_id)
    u_ex, energy_ex = _mode_factor(gram_ex)
    r_id = rank_for_variance(energy_id, variance_id, common_component(u_id))
    r_ex = rank_for_variance(energy_ex, variance_ex, common_component(u_ex))
    u_id, u_ex = u_id[:, :r_id], u_ex[:, :r_ex]

    # core: Z[i] = U_ex^T (T_i - mu) (r_ex, 3N) per identity, then C[k] = U_id^T Z[:, :, k], sliced over k
    z = np.empty((n_id, r_ex, 3 * n_vert), dtype=np.float32)
    for i in range(n_id):
        z[i] = u_ex.T @ (verts[i] - mean)
    core = np.empty((3 * n_vert, r_id, r_ex), dtype=np.float32)
    u_id32 = u_id.astype(np.float32)
    for k in range(0, 3 * n_vert, 4096):
        core[k : k + 4096] = np.einsum("ia,ibk->kab", u_id32, z[:, :, k : k + 4096], optimize=True)
    del z
    return Hosvd(
        core=torch.from_numpy(core),
        mean=torch.from_numpy(mean.astype(np.float32)),
        w_id=torch.from_numpy(np.ascontiguousarray(u_id, dtype=np.float32)),
        w_ex=torch.from_numpy(np.ascontiguousarray(u_ex, dtype=np.float32)),
        energy_id=energy_id,
        energy_ex=energy_ex,
    )


def pack_core(core: Tensor) -> Tensor | None:
    """The flattened core (3N, I*E) packed by MKL for GEMMs of exactly `BLOCK` rows, or None where that path
    does not apply (not float32 on the CPU, or a PyTorch without MKL).

    MKL's packed GEMM (cblas_sgemm_pack / _compute) lays the 3N x I*E matrix out once in its kernels' order
    instead of on every call: at 64- or 128-row blocks on a 2-core AVX-512 Xeon it is 1.3x faster, and its
    bytes do not depend on the thread count (the plain GEMM's do). PyTorch exposes it only as the two
    private ops its compiler uses for frozen linear layers, hence the guard and the plain fallback.
    """
    if core.device.type != "cpu" or core.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return None
    try:
        return torch.ops.mkl._mkl_reorder_linear_weight(core.flatten(1).contiguous(), BLOCK)
    except (AttributeError, RuntimeError):  # a build without the op
        return None


def bilinear_decode(
    core: Tensor,
    mean: Tensor,
    w_id: Tensor,
    w_ex: Tensor,
    block: bool = False,
    packed: Tensor | None = None,
) -> Tensor:
    """core: (3N, I, E), mean: (3N,), w_id: (B, I), w_ex: (B, E) -> vertices (B, N, 3) in metres.

    The contraction is one GEMM of the outer products (B, I*E) with the flattened core (3N, I*E): it reads
    the core once per batch instead of once per mesh. With `block`, rows go through the GEMM calls of
    `threads.row_blocks`, so each mesh's bytes do not depend on the batch it came in.

    Without a gradient, on the CPU in float32, the GEMMs are NumPy's (OpenBLAS's Sandy Bridge kernels,
    AVX without FMA) on the pinned code path: every AVX2 CPU runs them, Intel or AMD, about 1.8x faster
    than MKL's reproducible SSE2 branch, and a row's bytes do not depend on the rows beside it. Off that
    path `packed` (`pack_core(core)`, MKL's packed GEMM for `BLOCK`-row calls) is used when given.
    """
    outer = (w_id[:, :, None] * w_ex[:, None, :]).flatten(1)  # (B, I*E)
    flat = core.flatten(1)  # (3N, I*E)
    if not block:
        return (outer @ flat.T + mean).unflatten(-1, (-1, 3))  # (B, N, 3)
    inference = core.device.type == "cpu" and not (torch.is_grad_enabled() and outer.requires_grad)
    if inference and core.dtype == torch.float32 and pinned_kernels():
        flat_t, mean_np = flat.detach().numpy().T, mean.detach().numpy()  # (I*E, 3N) view, (3N,)

        def gemm(rows: Tensor) -> Tensor:
            out = np.matmul(rows.detach().numpy(), flat_t)  # (rows, 3N)
            out += mean_np
            return torch.from_numpy(out)
    elif inference and packed is not None:

        def gemm(rows: Tensor) -> Tensor:
            return torch.ops.mkl._mkl_linear(rows, packed, flat, mean, BLOCK)
    else:

        def gemm(rows: Tensor) -> Tensor:
            return torch.addmm(mean, rows, flat.T)

    n = outer.shape[0]
    blocks = row_blocks(outer)  # row slices of a contiguous (B', I*E): contiguous themselves
    workers = min(torch.get_num_threads(), len(blocks))
    # A multi-threaded GEMM rounds differently with another thread count (MKL's and OpenBLAS's alike,
    # measured: 1 vs 2 threads), so each block's GEMM runs on one thread (OpenBLAS: pinned to one thread)
    # and the blocks run side by side on the caller's threads.
    with single_thread():
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(gemm, blocks))
        else:
            parts = [gemm(rows) for rows in blocks]
    return torch.cat(parts)[:n].unflatten(-1, (-1, 3))  # (B, N, 3)


def _accumulate(a: Tensor, d: Tensor, ata: Tensor | None, atb: Tensor | None) -> tuple[Tensor, Tensor]:
    """Add the normal equations of a (B, M, K) float32 design and (B, M) targets to (ata, atb) in float64."""
    a = a.double()
    ata_k = a.transpose(1, 2) @ a  # (B, K, K)
    atb_k = (a.transpose(1, 2) @ d.double()[..., None])[..., 0]  # (B, K)
    return (ata_k, atb_k) if ata is None or atb is None else (ata + ata_k, atb + atb_k)


def _solve(ata: Tensor, atb: Tensor) -> Tensor:
    """x (B, K) float32 from normal equations ata (B, K, K), atb (B, K).

    The normal equations are summed in float64, which keeps them accurate for the well-conditioned
    orthogonal factors here, and need K x K memory instead of a (K*3N, K) system per identity; pinv
    guards rank-deficient designs (e.g. a zero expression coefficient).
    """
    return (torch.linalg.pinv(ata, hermitian=True) @ atb[..., None])[..., 0].float()


def fit_identity(core: Tensor, mean: Tensor, w_ex: Tensor, vertices: Tensor) -> Tensor:
    """Least-squares identity coefficients of meshes with known expression coefficients.

    core: (3N, I, E), mean: (3N,), w_ex: (B, E), vertices: (B, N, 3); or w_ex (B, K, E) and vertices
    (B, K, N, 3) for K meshes of each identity sharing one w_id -> w_id (B, I) float32.
    """
    if w_ex.ndim == 2:
        w_ex, vertices = w_ex[:, None], vertices[:, None]
    ata = atb = None
    for k in range(w_ex.shape[1]):
        a = torch.einsum("kie,be->bki", core, w_ex[:, k].to(core))  # (B, 3N, I)
        d = vertices[:, k].flatten(1).to(core) - mean  # (B, 3N)
        ata, atb = _accumulate(a, d, ata, atb)
    return _solve(ata, atb)


def fit_expression(core: Tensor, mean: Tensor, w_id: Tensor, vertices: Tensor) -> Tensor:
    """Least-squares expression coefficients of meshes with known identity coefficients.

    core: (3N, I, E), mean: (3N,), w_id: (B, I), vertices: (B, N, 3) -> w_ex (B, E) float32.
    """
    a = torch.einsum("kie,bi->bke", core, w_id.to(core))  # (B, 3N, E)
    d = vertices.flatten(1).to(core) - mean  # (B, 3N)
    return _solve(*_accumulate(a, d, None, None))


def encode(
    core: Tensor,
    mean: Tensor,
    vertices: Tensor,
    w_id_reference: Tensor,
    w_ex_reference: Tensor,
    iterations: int = 50,
    tol: float = 1e-10,
) -> tuple[Tensor, Tensor]:
    """Coefficients of meshes in the model's topology and frame by alternating least squares.

    core: (3N, I, E), mean: (3N,), vertices: (B, N, 3) metres, w_id_reference: (n_id, I) and
    w_ex_reference: (n_ex, E) the training rows. Returns w_id (B, I), w_ex (B, E) float32. No rigid
    alignment is done: the meshes must already be in the model frame.

    ALS on a bilinear form can stall far from the optimum when started badly (from neutral, a training
    mesh in a strong expression stalls at cm errors), so it runs from two starts and keeps, per mesh, the
    better fit: (a) the catalogue expression whose least-squares identity fit leaves the smallest residual
    (a mesh of the training tensor is then fitted exactly), (b) the catalogue expression whose face on the
    mean identity is nearest (better for codes between the catalogue's). Each run stops when no mesh's
    squared residual changes by more than `tol` of its energy.

    x - mu = C x2 w_id x3 w_ex fixes (w_id, w_ex) only up to (a w_id, w_ex / a); the scale is chosen so that
    both factors have the same norm relative to their training rows' RMS norm, and the sign so that w_ex
    points towards its most similar catalogue expression.
    """
    w_id_reference, w_ex_reference = w_id_reference.to(core), w_ex_reference.to(core)
    d = vertices.flatten(1).to(core) - mean  # (B, 3N)
    mean_id = w_id_reference.mean(0, keepdim=True).expand(len(w_ex_reference), -1)  # (n_ex, I)
    faces = bilinear_decode(core, mean, mean_id, w_ex_reference).flatten(1) - mean  # (n_ex, 3N)
    starts = (_best_catalogue_start(core, d, w_ex_reference), w_ex_reference[torch.cdist(d, faces).argmin(1)])
    w_id, w_ex, err = _als(core, mean, vertices, d, starts[0], iterations, tol)
    w_id_b, w_ex_b, err_b = _als(core, mean, vertices, d, starts[1], iterations, tol)
    better = err_b < err
    w_id = torch.where(better[:, None], w_id_b, w_id)
    w_ex = torch.where(better[:, None], w_ex_b, w_ex)
    return _canonical_scale(w_id, w_ex, w_id_reference, w_ex_reference)


def _als(
    core: Tensor, mean: Tensor, vertices: Tensor, d: Tensor, w_ex: Tensor, iterations: int, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Alternating least squares from w_ex (B, E): returns w_id (B, I), w_ex (B, E), squared residual (B,)."""
    energy = d.double().square().sum(1).clamp_min(1e-30)  # (B,)
    prev = torch.full_like(energy, float("inf"))
    for _ in range(max(1, iterations)):
        w_id = fit_identity(core, mean, w_ex, vertices)
        w_ex = fit_expression(core, mean, w_id, vertices)
        err = (bilinear_decode(core, mean, w_id, w_ex).flatten(1) - mean - d).double().square().sum(1)
        if bool(((prev - err).abs() <= tol * energy).all()):
            break
        prev = err
    return w_id, w_ex, err


def _best_catalogue_start(core: Tensor, d: Tensor, w_ex_reference: Tensor) -> Tensor:
    """For centred meshes d (B, 3N): the catalogue row (B, E) whose least-squares identity fit leaves the
    smallest residual, one catalogue expression at a time (memory: one (3N, I) design)."""
    best = torch.full((d.shape[0],), float("inf"), dtype=torch.float64, device=d.device)
    w_ex = w_ex_reference[:1].expand(d.shape[0], -1).clone()
    d64 = d.double()
    for row in w_ex_reference:
        a = (core @ row).double()  # (3N, I)
        x = torch.linalg.lstsq(a, d64.T).solution.T  # (B, I)
        resid = (d64 - x @ a.T).square().sum(1)  # (B,)
        better = resid < best
        best = torch.where(better, resid, best)
        w_ex[better] = row
    return w_ex


def _canonical_scale(w_id: Tensor, w_ex: Tensor, ref_id: Tensor, ref_ex: Tensor) -> tuple[Tensor, Tensor]:
    """Rescale to (w_id a, w_ex / a), which decodes to the same meshes, with the canonical a of `encode`."""
    rms_id = ref_id.square().sum(1).mean().sqrt()
    rms_ex = ref_ex.square().sum(1).mean().sqrt()
    id_norm = w_id.norm(dim=1).clamp_min(1e-30)  # (B,)
    ex_norm = w_ex.norm(dim=1).clamp_min(1e-30)
    cos = (w_ex @ ref_ex.T) / (ex_norm[:, None] * ref_ex.norm(dim=1).clamp_min(1e-30))  # (B, n_ex)
    sign = torch.gather(cos, 1, cos.abs().argmax(1, keepdim=True))[:, 0].sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    scale = sign * torch.sqrt(ex_norm * rms_id / (id_norm * rms_ex))  # (B,)
    return w_id * scale[:, None], w_ex / scale[:, None]
