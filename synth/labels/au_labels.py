"""AU intensities of any mesh: its deformation from its identity's neutral, explained by per-AU bases.

For one mesh x of an identity with neutral x0 and per-AU deformation bases B_a (the identity's mesh under
AU a at nominal intensity, minus x0), the intensities are

    c = argmin_{c >= 0} || (x - x0) - sum_a c_a B_a ||^2,   then clipped to [0, 1]      (NNLS)

solved exactly per mesh by `scipy.optimize.nnls` on the A x A normal equations (A = 46), so the vertex
count never enters the solver: G = B^T B, b = B^T (x - x0), and ||B c - d||^2 = ||R c - y||^2 + const with
G = R^T R, y = R^-T b (R from the eigen-decomposition of G, so a rank-deficient G is fine).

Parallel bases. Some AUs move the same facial actions in the same direction at different amplitudes (on
Anny: AU43 close eye, AU42 slit and AU41 lid droop are all `eyeBlink`, at weights 1, 0.5, 0.3), so their
intensities are not identifiable from geometry. Bases whose cosine exceeds `parallel_cos` form a group;
the group enters the NNLS once (its longest basis), and the fitted amplitude is then given to the member
that explains it at the largest intensity <= 1 (the weakest AU that reaches the amplitude: half-closed
eyes are "slit" at 1, not "close eye" at 0.5); above every member's reach, the strongest member at 1.

For samples of a `FaceModel` the bases are cheap: the model is bilinear, so for x = C x2 w_id x3 w_ex + mu
the deformation from the identity's neutral is A (w_ex - w_n) and the basis of AU a is A (w_a - w_n),
with A = C x2 w_id (3N, E) and w_a the coefficients of the catalogue's single-AU expression of a; only
the E x E Gram K = A^T A is needed (`ModelAuLabeller`).
"""

import logging

import numpy as np
import scipy.linalg
import torch
from scipy.optimize import nnls
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

# Exactly parallel up to round-off: AU27 (jawOpen + 0.2 mouthStretch) vs AU26 (0.5 jawOpen) is 0.9993 on
# Anny and must stay two bases.
PARALLEL_COS = 0.99999
# Bases shorter than this fraction of the longest one (per mesh) do not move the surface: intensity 0.
_NULL_BASIS = 1e-6


def nnls_from_gram(gram: np.ndarray, rhs: np.ndarray, parallel_cos: float = PARALLEL_COS) -> np.ndarray:
    """Non-negative least squares from normal equations, parallel bases grouped (see module docstring).

    gram: (n, A, A) float64 Gram matrices B^T B; rhs: (n, A) B^T d. Returns (n, A) float64 intensities
    >= 0, not clipped.
    """
    gram = np.asarray(gram, dtype=np.float64)
    rhs = np.asarray(rhs, dtype=np.float64)
    out = np.zeros(rhs.shape, dtype=np.float64)
    for i in range(gram.shape[0]):
        out[i] = _nnls_one(gram[i], rhs[i], parallel_cos)
    return out


def _nnls_one(g: np.ndarray, b: np.ndarray, parallel_cos: float) -> np.ndarray:
    n_au = g.shape[0]
    norm = np.sqrt(np.clip(np.diag(g), 0.0, None))  # (A,) length of each basis
    alive = norm > _NULL_BASIS * max(norm.max(), 1e-300)
    cos = g / np.maximum(np.outer(norm, norm), 1e-300)
    # Connected components of the "near-parallel" graph; the longest basis represents its group.
    linked = (cos > parallel_cos) & alive[:, None] & alive[None, :]
    _, label = connected_components(linked, directed=False)
    groups: dict[int, list[int]] = {}
    for a in np.flatnonzero(alive):
        groups.setdefault(int(label[a]), []).append(int(a))
    reps = np.array([max(members, key=lambda m: norm[m]) for members in groups.values()], dtype=np.int64)
    result = np.zeros(n_au)
    if reps.size == 0:
        return result
    coef = _nnls_small(g[np.ix_(reps, reps)], b[reps])
    for rep, members, c in zip(reps, groups.values(), coef, strict=True):
        amplitude = c * norm[rep]  # length of the fitted deformation along the group's direction
        if amplitude <= 0.0:
            continue
        reach = amplitude / norm[members]  # intensity of each member producing that amplitude
        within = np.flatnonzero(reach <= 1.0 + 1e-9)
        pick = members[within[np.argmax(reach[within])]] if within.size else rep
        result[pick] = amplitude / norm[pick]
    return result


def _nnls_small(g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_{c >= 0} c^T g c - 2 b^T c for a (k, k) PSD g, via scipy's NNLS on a square root of g."""
    # scipy's LAPACK call: numpy's eigh is ~40x slower on such tiny matrices under thread contention.
    s, v = scipy.linalg.eigh(g)  # g = v diag(s) v^T
    keep = s > 1e-12 * max(s.max(), 1e-300)
    r = np.sqrt(s[keep])[:, None] * v[:, keep].T  # (k', k): g = r^T r on the kept subspace
    y = (v[:, keep].T @ b) / np.sqrt(s[keep])  # (k',): r^-T b
    coef, _ = nnls(r, y, maxiter=50 * g.shape[0])
    return coef


def au_intensities(
    vertices: np.ndarray | torch.Tensor,
    neutral: np.ndarray | torch.Tensor,
    bases: np.ndarray | torch.Tensor,
    parallel_cos: float = PARALLEL_COS,
) -> np.ndarray:
    """AU intensities of meshes from their identities' neutral meshes and per-AU deformation bases.

    vertices: (n, N, 3) meshes; neutral: (n, N, 3) (or (N, 3), shared) the same identities in the
    neutral expression; bases: (n, A, N, 3) (or (A, N, 3), shared) each identity's mesh under AU a at
    nominal intensity minus its neutral. Same units throughout (metres). Returns (n, A) float32 in [0, 1].
    """
    x = torch.as_tensor(vertices, dtype=torch.float64).cpu()
    x0 = torch.as_tensor(neutral, dtype=torch.float64).cpu()
    basis = torch.as_tensor(bases, dtype=torch.float64).cpu()
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"vertices must be (n, N, 3), got {tuple(x.shape)}")
    if x0.shape not in (x.shape, x.shape[1:]):
        raise ValueError(f"neutral must be {tuple(x.shape)} or {tuple(x.shape[1:])}, got {tuple(x0.shape)}")
    if basis.ndim not in (3, 4) or basis.shape[-2:] != x.shape[1:]:
        raise ValueError(
            f"bases must be (n, A, N, 3) or (A, N, 3) with N={x.shape[1]}, got {tuple(basis.shape)}"
        )
    d = (x - x0).flatten(-2)  # (n, 3N)
    flat = basis.flatten(-2)  # (n, A, 3N) or (A, 3N)
    if flat.ndim == 2:
        gram = (flat @ flat.T).expand(d.shape[0], -1, -1)  # (n, A, A)
        rhs = d @ flat.T  # (n, A)
    else:
        if flat.shape[0] != d.shape[0]:
            raise ValueError(f"bases cover {flat.shape[0]} meshes, vertices {d.shape[0]}")
        gram = flat @ flat.transpose(1, 2)  # (n, A, A)
        rhs = torch.einsum("nak,nk->na", flat, d)  # (n, A)
    coef = nnls_from_gram(gram.numpy(), rhs.numpy(), parallel_cos)
    return np.clip(coef, 0.0, 1.0).astype(np.float32)


def single_au_expressions(expression_aus: np.ndarray) -> np.ndarray:
    """(A,) int64: for each AU, the row of the expression whose AU set is exactly {that AU} at 1.

    expression_aus: (n_ex, A) nominal AU intensities of the catalogue expressions. Raises ValueError
    naming the AUs that have no single-AU expression (their bases could not be decoded).
    """
    aus = np.asarray(expression_aus)
    single = (np.count_nonzero(aus, axis=1) == 1) & np.isclose(aus.max(axis=1), 1.0)
    rows = np.full(aus.shape[1], -1, dtype=np.int64)
    for row in np.flatnonzero(single)[::-1]:  # first occurrence wins
        rows[int(np.argmax(aus[row]))] = row
    if (rows < 0).any():
        raise ValueError(f"no single-AU expression for AU columns {np.flatnonzero(rows < 0).tolist()}")
    return rows


def identity_gram(core: torch.Tensor, w_id: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """K = A^T A (n, E, E) float64 for A = C x2 w_id (3N, E), each identity's expression-to-vertex map.

    core: (3N, I, E); w_id: (n, I). A is a batched matmul over the core's vertex rows (no copy of the
    core); K is summed in float32 (relative error ~1e-6, far below the labels' resolution) and returned in
    float64 for the NNLS.
    """
    out = []
    for block in torch.as_tensor(w_id).detach().cpu().to(core.dtype).split(chunk):
        a = torch.matmul(block[None], core).transpose(0, 1)  # (1, b, I) @ (3N, I, E) -> (b, 3N, E)
        out.append((a.transpose(1, 2) @ a).double())  # (b, E, E)
    return torch.cat(out)


class ModelAuLabeller:
    """Fast AU intensities of `FaceModel` samples from their coefficients (batched torch + small NNLS).

    Built once per model: keeps the core (3N, I, E), the neutral's w_n (E,) and the single-AU
    expressions' coefficients P = W_a - w_n (A, E). `__call__(w_id (n, I), w_ex (n, E)) -> (n, A)`.
    """

    def __init__(self, model, chunk: int = 8, parallel_cos: float = PARALLEL_COS) -> None:
        self.core = model.core.detach().cpu()  # (3N, I, E)
        aus = model.expression_aus.detach().cpu().numpy()
        rows = single_au_expressions(aus)
        w_all = model.expression_coefficients.detach().cpu().to(torch.float64)  # (n_ex, E)
        self.w_neutral = w_all[model.expression_names.index("neutral")]  # (E,)
        self.p = w_all[torch.as_tensor(rows)] - self.w_neutral  # (A, E)
        self.au_names = list(model.au_names)
        self.chunk = chunk
        self.parallel_cos = parallel_cos

    def gram(self, w_id: torch.Tensor) -> torch.Tensor:
        """K = A^T A (n, E, E) float64 for A = C x2 w_id (see `identity_gram`)."""
        return identity_gram(self.core, w_id, self.chunk)

    def __call__(self, w_id: torch.Tensor, w_ex: torch.Tensor) -> np.ndarray:
        """w_id (n, I), w_ex (n, E) -> (n, A) float32 AU intensities in [0, 1]."""
        return self.estimate(w_id, w_ex)[0]

    def estimate(self, w_id: torch.Tensor, w_ex: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(n, A) float32 AU intensities in [0, 1] and (n,) float32 relative residuals (`residual`)."""
        k = self.gram(w_id)  # (n, E, E)
        dw = torch.as_tensor(w_ex).detach().cpu().to(torch.float64) - self.w_neutral  # (n, E)
        kp = k @ self.p.T  # (n, E, A)
        gram = self.p @ kp  # (n, A, A) = P K P^T
        rhs = torch.einsum("ne,nea->na", dw, kp)  # (n, A) = P K dw
        coef = np.clip(nnls_from_gram(gram.numpy(), rhs.numpy(), self.parallel_cos), 0.0, 1.0)
        return coef.astype(np.float32), residual(k, dw, torch.from_numpy(coef) @ self.p)


def model_au_intensities(model, w_id: torch.Tensor, w_ex: torch.Tensor) -> np.ndarray:
    """AU intensities (n, A) float32 in [0, 1] of `FaceModel` samples (w_id (n, I), w_ex (n, E))."""
    return ModelAuLabeller(model)(w_id, w_ex)


class CatalogueAuLabeller:
    """AU intensities for models without a single-AU expression per AU (e.g. `model=tiny`).

    The same identity-specific least squares as `ModelAuLabeller`, over the model's own catalogue
    expressions: the sample's expression deformation A (w_ex - w_n) is explained by non-negative weights c
    of the expression deltas A (w_e - w_n), and the AU intensities are c @ the catalogue's AU table
    (expression_aus), clipped to [0, 1]. `__call__(w_id (n, I), w_ex (n, E)) -> (n, A)`.
    """

    def __init__(self, model, chunk: int = 8) -> None:
        names = list(model.expression_names)
        keep = [e for e, name in enumerate(names) if name != "neutral"]
        w_all = model.expression_coefficients.detach().cpu().to(torch.float64)  # (n_ex, E)
        self.core = model.core.detach().cpu()  # (3N, I, E)
        self.w_neutral = w_all[names.index("neutral")]  # (E,)
        self.p = w_all[keep] - self.w_neutral  # (M, E)
        self.aus = model.expression_aus.detach().cpu().to(torch.float64)[keep].numpy()  # (M, A)
        self.chunk = chunk

    def __call__(self, w_id: torch.Tensor, w_ex: torch.Tensor) -> np.ndarray:
        """w_id (n, I), w_ex (n, E) -> (n, A) float32 AU intensities in [0, 1]."""
        return self.estimate(w_id, w_ex)[0]

    def estimate(self, w_id: torch.Tensor, w_ex: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(n, A) float32 AU intensities in [0, 1] and (n,) float32 relative residuals (`residual`)."""
        k = identity_gram(self.core, w_id, self.chunk)  # (n, E, E)
        kp = k @ self.p.T  # (n, E, M)
        gram = self.p @ kp  # (n, M, M)
        dw = torch.as_tensor(w_ex).detach().cpu().to(torch.float64) - self.w_neutral  # (n, E)
        rhs = torch.einsum("ne,nem->nm", dw, kp)  # (n, M)
        coef = nnls_from_gram(gram.numpy(), rhs.numpy())  # (n, M)
        fitted = torch.from_numpy(coef) @ self.p  # (n, E)
        return np.clip(coef @ self.aus, 0.0, 1.0).astype(np.float32), residual(k, dw, fitted)


def residual(gram: torch.Tensor, dw: torch.Tensor, fitted: torch.Tensor) -> np.ndarray:
    """(n,) float32 relative residual ||A (dw - fitted)|| / ||A dw|| of the expression deformation.

    gram: (n, E, E) K = A^T A per identity; dw, fitted: (n, E) float64 expression coefficients minus the
    neutral's (the sample's, and the one the estimated intensities rebuild). 0 for a neutral face; 1 when
    the estimate explains nothing; the mesh-space norm without touching the vertices.
    """
    r = dw - fitted  # (n, E)
    num = torch.einsum("ne,nef,nf->n", r, gram, r).clamp_min(0.0)
    den = torch.einsum("ne,nef,nf->n", dw, gram, dw).clamp_min(0.0)
    out = torch.where(den > 0, (num / den.clamp_min(1e-300)).sqrt(), torch.zeros_like(den))
    return out.numpy().astype(np.float32)


def single_au_deltas(model) -> tuple[torch.Tensor, np.ndarray]:
    """The expression coefficients of one unit of each AU: ((A, E) float64 W_a - w_n, (A,) bool available).

    Row a is the catalogue's single-AU expression of AU a minus the neutral (zero, and available False,
    where the model has no such expression). A sample made from an AU vector c has w_ex = w_n + c @ rows:
    the mesh is the identity's neutral plus the weighted single-AU deformations (bilinear in w_ex).
    """
    aus = model.expression_aus.detach().cpu().numpy()
    single = (np.count_nonzero(aus, axis=1) == 1) & np.isclose(aus.max(axis=1), 1.0)
    w_all = model.expression_coefficients.detach().cpu().to(torch.float64)  # (n_ex, E)
    w_neutral = w_all[list(model.expression_names).index("neutral")]  # (E,)
    deltas = torch.zeros(aus.shape[1], w_all.shape[1], dtype=torch.float64)
    available = np.zeros(aus.shape[1], bool)
    for row in np.flatnonzero(single)[::-1]:  # first occurrence wins (as `single_au_expressions`)
        a = int(np.argmax(aus[row]))
        deltas[a] = w_all[row] - w_neutral
        available[a] = True
    return deltas, available


def au_labeller(model) -> ModelAuLabeller | CatalogueAuLabeller:
    """The labeller for a `FaceModel`: `ModelAuLabeller` when the model has a single-AU expression for
    every AU, else `CatalogueAuLabeller` (labels through the model's catalogue expressions)."""
    try:
        single_au_expressions(model.expression_aus.detach().cpu().numpy())
    except ValueError:
        log.info("the model lacks single-AU expressions for some AUs: AU labels via its catalogue")
        return CatalogueAuLabeller(model)
    return ModelAuLabeller(model)
