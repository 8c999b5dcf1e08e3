"""The identity x expression tensor: the hand-over between model sources and the bilinear model.

Every source (Anny infants, expression transfer, a user's own `.npz`) produces a `FaceTensor`; the
bilinear model and the flows are built from it alone (BabyFlow eq. 8: T is 3N x n_id x n_ex).
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FaceTensor:
    """Registered meshes of every identity in every expression, sharing one topology.

    vertices: (n_id, n_ex, N, 3) float32, metres, in the common aligned frame.
    faces: (F, 3) int64 triangles into the N vertices.
    expression_names: n_ex names; index 0 is "neutral".
    au_names: the A action-unit label names (46 for the BabyFlow catalogue).
    expression_aus: (n_ex, A) float32 nominal AU intensities of each expression, in [0, 1].
    identity_ids: n_id identity names (e.g. "anny-0007", "anny-0007-mirror", "anny-0007-sym").
    source: JSON-able provenance (source kind, its config, versions).
    """

    vertices: np.ndarray
    faces: np.ndarray
    expression_names: list[str]
    au_names: list[str]
    expression_aus: np.ndarray
    identity_ids: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v, f = self.vertices, self.faces
        if v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"FaceTensor.vertices must be (n_id, n_ex, N, 3), got {v.shape}")
        n_id, n_ex, n_vert, _ = v.shape
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"FaceTensor.faces must be (F, 3), got {f.shape}")
        if f.size and (f.min() < 0 or f.max() >= n_vert):
            raise ValueError(f"FaceTensor.faces index outside [0, {n_vert})")
        if len(self.expression_names) != n_ex:
            raise ValueError(f"{len(self.expression_names)} expression names for {n_ex} expressions")
        if len(self.identity_ids) != n_id:
            raise ValueError(f"{len(self.identity_ids)} identity ids for {n_id} identities")
        if self.expression_aus.shape != (n_ex, len(self.au_names)):
            raise ValueError(
                f"expression_aus must be (n_ex, A) = ({n_ex}, {len(self.au_names)}), "
                f"got {self.expression_aus.shape}"
            )
        if not np.isfinite(v).all():
            raise ValueError("FaceTensor.vertices contains NaN or inf")

    def select_expressions(self, keep: list[int], source: dict[str, Any] | None = None) -> "FaceTensor":
        """The tensor restricted to the expressions `keep` (indices, in the given order).

        source: provenance of the result (default: this tensor's).
        """
        return FaceTensor(
            vertices=self.vertices[:, keep],
            faces=self.faces,
            expression_names=[self.expression_names[e] for e in keep],
            au_names=self.au_names,
            expression_aus=self.expression_aus[keep],
            identity_ids=self.identity_ids,
            source=self.source if source is None else source,
        )

    @property
    def n_identities(self) -> int:
        return self.vertices.shape[0]

    @property
    def n_expressions(self) -> int:
        return self.vertices.shape[1]

    @property
    def n_vertices(self) -> int:
        return self.vertices.shape[2]
