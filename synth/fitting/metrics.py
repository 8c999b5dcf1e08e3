"""Shape metrics: per-vertex errors and their summaries, diversity and specificity (3DFaceCAM 4.3).

All inputs are meshes in metres; all outputs are millimetres.
"""

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

MM_PER_M = 1000.0


def per_vertex_error(pred: Tensor, target: Tensor) -> Tensor:
    """(B, N, 3), (B, N, 3) metres -> (B, N) Euclidean per-vertex error in millimetres."""
    return (pred - target).norm(dim=-1) * MM_PER_M


def mean_sd(per_mesh: Tensor | np.ndarray) -> dict[str, float]:
    """Mean and standard deviation (ddof=1, 0 for one mesh) over meshes of per-mesh values (B,)."""
    x = np.asarray(per_mesh, dtype=np.float64).reshape(-1)
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0, "n": int(x.size)}


def error_table(
    errors: Tensor, regions: Mapping[str, np.ndarray] | None = None
) -> dict[str, dict[str, float]]:
    """Per-vertex errors (B, N) mm -> {"all": mean_sd of each mesh's mean error, region: same over the
    region's vertices}, the BabyFlow 2.3 / Fig. 3 summary (mean +- sd over the test meshes)."""
    table = {"all": mean_sd(errors.mean(1))}
    for name, mask in (regions or {}).items():
        idx = torch.as_tensor(np.flatnonzero(mask), device=errors.device)
        table[name] = mean_sd(errors[:, idx].mean(1))
    return table


def mean_vertex_distance(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise mean per-vertex Euclidean distance: a (P, N, 3), b (Q, N, 3) metres -> (P, Q) mm."""
    return torch.stack([(a - bj).norm(dim=-1).mean(-1) for bj in b], 1) * MM_PER_M


def diversity(samples: Tensor, n_pairs: int, generator: torch.Generator) -> float:
    """3DFaceCAM diversity: the mean vertex distance (mm) over `n_pairs` random pairs of distinct samples.

    samples: (S, N, 3) metres, S >= 2. The pairs are drawn with `generator`.
    """
    s = samples.shape[0]
    if s < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {s}")
    i = torch.randint(0, s, (n_pairs,), generator=generator)
    j = (i + torch.randint(1, s, (n_pairs,), generator=generator)) % s  # j != i
    dists = [
        (samples[i[k : k + 1024]] - samples[j[k : k + 1024]]).norm(dim=-1).mean(-1)
        for k in range(0, n_pairs, 1024)
    ]
    return float(torch.cat(dists).mean()) * MM_PER_M


def specificity(samples: Tensor, training: Tensor, shortlist: int = 8) -> float:
    """Specificity (mm): the mean over samples of the mean vertex distance to the closest training mesh.

    samples: (S, N, 3), training: (T, N, 3) metres. 3DFaceCAM cites the usual definition (Davies et al.;
    distance to the nearest training member); the closest mesh is found among the `shortlist` nearest in
    Euclidean (Frobenius) distance, computed as one GEMM, then ranked by the mean vertex distance.
    """
    a = samples.flatten(1).double()  # (S, 3N)
    b = training.flatten(1).double()  # (T, 3N)
    d2 = a.square().sum(1)[:, None] + b.square().sum(1)[None] - 2 * a @ b.T  # (S, T)
    k = min(shortlist, b.shape[0])
    cand = d2.topk(k, dim=1, largest=False).indices  # (S, k)
    best = [(samples[s] - training[cand[s]]).norm(dim=-1).mean(-1).min() for s in range(samples.shape[0])]
    return float(torch.stack(best).mean()) * MM_PER_M
