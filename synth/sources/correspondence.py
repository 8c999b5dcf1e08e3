"""Barycentric correspondence between two meshes of different topology (BabyFlow eq. 1-2).

A mapping M from a source mesh (M vertices, e.g. an adult FaceWarehouse / FLAME / remeshed Anny head) to
a target topology (N vertices, e.g. the Anny infant head) is a sparse (N, M) matrix with 3 barycentric
weights per row: target vertex i is a point of one source triangle, so any per-vertex field of the source
(positions, expression deformations) is carried over as `M @ field` (the paper writes Y_FW . M with
vertices as columns; we keep vertices as rows).

Building M (`compute_mapping`):
1. similarity Procrustes (rotation, translation, isotropic scale) of the source landmarks onto the
   target landmarks (`trimesh.registration.procrustes`);
2. optionally a thin-plate-spline warp that takes the aligned source landmarks exactly onto the target
   ones (`scipy.interpolate.RBFInterpolator`), a light stand-in for the paper's non-rigid fitting
   (template adaptation + coherent point drift): it absorbs proportion differences (an adult's longer
   lower face, an infant's larger cranium) before projecting;
3. optionally rigid+scale ICP of the aligned source vertices onto the target surface
   (`trimesh.registration.icp`);
4. nearest-triangle projection of every target vertex onto the aligned source surface, by default
   onto the nearest triangle facing the same way (candidates from a KD-tree of triangle centroids,
   `trimesh.triangles.closest_point`), else the plain closest point (`trimesh.proximity.closest_point`,
   rtree accelerated); barycentric coordinates (`trimesh.triangles.points_to_barycentric`) clipped to
   the triangle and renormalised.
"""

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import trimesh
from scipy.interpolate import RBFInterpolator
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Correspondence:
    """A barycentric mapping from a source topology onto a target topology.

    matrix: (N_target, M_source) CSR, 3 weights in [0, 1] per row summing to 1.
    transform: (4, 4) similarity taking source coordinates into the target frame (Procrustes [+ ICP]).
    distance: (N_target,) distance of each target vertex to the aligned (and warped) source surface, in
        the target's units: large values flag target parts the source does not cover.
    """

    matrix: sp.csr_matrix
    transform: np.ndarray
    distance: np.ndarray

    @property
    def scale(self) -> float:
        """Isotropic scale of `transform` (target units per source unit)."""
        return float(np.cbrt(np.linalg.det(self.transform[:3, :3])))

    def map(self, values: np.ndarray) -> np.ndarray:
        """Carry per-vertex values of the source onto the target: (..., M, D) -> (..., N, D).

        Only the weights are applied: positions come out in the source's frame; deformations keep the
        source's units and orientation (rotate them with `transform` when the frames differ).
        """
        values = np.asarray(values)
        m = self.matrix.shape[1]
        if values.ndim < 2 or values.shape[-2] != m:
            raise ValueError(f"values must be (..., {m}, D) on the source topology, got {values.shape}")
        lead = values.shape[:-2]
        flat = np.moveaxis(values.reshape(-1, m, values.shape[-1]), 1, 0).reshape(m, -1)  # (M, B*D)
        out = np.asarray(self.matrix @ flat)  # (N, B*D)
        n = self.matrix.shape[0]
        return np.moveaxis(out.reshape(n, -1, values.shape[-1]), 0, 1).reshape(*lead, n, values.shape[-1])


def similarity_procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) similarity (no reflection) minimising ||s R source + t - target||: source, target (L, 3)."""
    matrix, _, _ = trimesh.registration.procrustes(
        np.asarray(source, dtype=np.float64),
        np.asarray(target, dtype=np.float64),
        reflection=False,
        scale=True,
    )
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) homogeneous transform to points (..., 3)."""
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def barycentric_projection(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest point of a triangle mesh to each query point, as barycentric coordinates.

    points: (P, 3); vertices: (M, 3), faces: (F, 3). Returns face ids (P,) int64, weights (P, 3) float64
    (>= 0, rows sum to 1, over the face's vertices in order) and distances (P,).
    """
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False)
    closest, distance, face_ids = trimesh.proximity.closest_point(mesh, np.asarray(points, dtype=np.float64))
    weights = trimesh.triangles.points_to_barycentric(mesh.triangles[face_ids], closest)
    # The closest point lies on the triangle; clip round-off (and degenerate triangles) back onto it.
    weights = np.clip(np.nan_to_num(weights, nan=1.0 / 3.0), 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return face_ids.astype(np.int64), weights, distance


def normal_compatible_projection(
    points: np.ndarray,
    normals: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    min_cos: float = 0.3,
    candidates: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like `barycentric_projection`, but each point goes to the closest source triangle whose normal
    agrees with the point's own normal (cosine >= min_cos), among the `candidates` triangles with the
    nearest centroids; points with no compatible candidate fall back to the plain closest point.

    Plain closest points snap across thin gaps (an upper-lip vertex onto the lower lip, an eyelid onto
    the eyeball); the normal test keeps them on the matching side, as non-rigid registration does.
    points, normals: (P, 3) (unit normals); vertices (M, 3), faces (F, 3).
    Returns as `barycentric_projection`.
    """
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False)
    tri = mesh.triangles  # (F, 3, 3)
    k = min(candidates, len(tri))
    _, near = cKDTree(tri.mean(axis=1)).query(points, k=k)  # (P, k) nearest triangle centroids
    # The plain closest triangle is always a candidate (big triangles have far centroids).
    _, _, plain = trimesh.proximity.closest_point(mesh, points)
    cand = np.concatenate([near.reshape(len(points), k), plain[:, None]], axis=1)  # (P, k + 1)
    closest = trimesh.triangles.closest_point(tri[cand.ravel()], np.repeat(points, k + 1, axis=0))
    closest = closest.reshape(len(points), k + 1, 3)
    dist = np.linalg.norm(closest - points[:, None], axis=-1)  # (P, k + 1)
    agree = np.einsum("pkd,pd->pk", mesh.face_normals[cand], normals)  # normal cosines
    # A point lying on the surface (coincident meshes) keeps its own triangle whatever the normals say.
    on_surface = dist <= 1e-9 * np.linalg.norm(np.ptp(mesh.vertices, axis=0))
    compatible = (agree >= min_cos) | on_surface
    # No compatible candidate: the plain closest point (last column).
    best = np.where(compatible.any(axis=1), np.where(compatible, dist, np.inf).argmin(axis=1), k)
    rows = np.arange(len(points))
    face_ids, chosen, distance = cand[rows, best], closest[rows, best], dist[rows, best]
    weights = trimesh.triangles.points_to_barycentric(tri[face_ids], chosen)
    weights = np.clip(np.nan_to_num(weights, nan=1.0 / 3.0), 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return face_ids.astype(np.int64), weights, distance


def barycentric_matrix(
    face_ids: np.ndarray, weights: np.ndarray, faces: np.ndarray, n_source: int
) -> sp.csr_matrix:
    """(P, n_source) CSR with row p = weights[p] over the vertices of source face face_ids[p]."""
    rows = np.repeat(np.arange(len(face_ids)), 3)
    cols = np.asarray(faces, dtype=np.int64)[face_ids].ravel()
    matrix = sp.csr_matrix((weights.ravel(), (rows, cols)), shape=(len(face_ids), n_source))
    matrix.sum_duplicates()
    return matrix


def compute_mapping(
    source_vertices: np.ndarray,
    source_faces: np.ndarray,
    source_landmarks: np.ndarray,
    target_vertices: np.ndarray,
    target_faces: np.ndarray,
    target_landmarks: np.ndarray,
    warp: bool = True,
    icp_iterations: int = 0,
    normal_min_cos: float | None = 0.3,
) -> Correspondence:
    """Barycentric mapping M (N_target, M_source) of `target` vertices onto the `source` surface.

    source_vertices (M, 3), source_faces (F_s, 3), source_landmarks (L, 3) and the target's (N, 3),
    (F_t, 3), (L, 3): the same L anatomical landmarks on both (e.g. the 23 of
    `synth.labels.landmarks`), each in its own frame and units. warp: thin-plate-spline warp of the
    source onto the target landmarks before projecting; icp_iterations: rigid+scale ICP steps after the
    landmark alignment (0 = none); normal_min_cos: project each target vertex onto the closest
    source triangle facing the same way (`normal_compatible_projection`), None for plain closest points.
    """
    src = np.asarray(source_vertices, dtype=np.float64)
    tgt = np.asarray(target_vertices, dtype=np.float64)
    src_lmk = np.asarray(source_landmarks, dtype=np.float64)
    tgt_lmk = np.asarray(target_landmarks, dtype=np.float64)
    if src_lmk.shape != tgt_lmk.shape or src_lmk.ndim != 2 or src_lmk.shape[0] < 3:
        raise ValueError(
            f"need the same >= 3 landmarks on both meshes, got {src_lmk.shape} and {tgt_lmk.shape}"
        )
    transform = similarity_procrustes(src_lmk, tgt_lmk)
    aligned = apply_transform(transform, src)
    if icp_iterations > 0:
        target_mesh = trimesh.Trimesh(tgt, np.asarray(target_faces), process=False)
        step, _, cost = trimesh.registration.icp(
            aligned, target_mesh, max_iterations=icp_iterations, reflection=False, scale=True
        )
        log.info("ICP refinement: mean squared distance %.3g", cost)
        transform = step @ transform
        aligned = apply_transform(transform, src)
    if warp:
        lmk = apply_transform(transform, src_lmk)
        field = RBFInterpolator(lmk, tgt_lmk - lmk, kernel="thin_plate_spline", smoothing=0.0)
        aligned = aligned + field(aligned)
    if normal_min_cos is None:
        face_ids, weights, distance = barycentric_projection(tgt, aligned, source_faces)
    else:
        normals = trimesh.Trimesh(tgt, np.asarray(target_faces), process=False).vertex_normals
        face_ids, weights, distance = normal_compatible_projection(
            tgt, normals, aligned, source_faces, normal_min_cos
        )
    matrix = barycentric_matrix(face_ids, weights, source_faces, len(src))
    return Correspondence(matrix=matrix, transform=transform, distance=distance)
