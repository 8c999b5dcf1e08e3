"""Mesh connectivity that does not depend on how quads were split into triangles.

Quad meshes such as Anny's are triangulated by splitting each quad along one diagonal. Anny picks the
shorter diagonal in floating point, so near-square quads split one way on one CPU and the other way on
another (measured: 4 of 4507 Anny head quads differ between an Intel Xeon and an AMD EPYC). Anything keyed
to the exact triangles (a hash, a triangle id) then differs between machines. `connectivity_hash` keys a
topology by its polygons instead: it merges each pair of consecutive triangles that share an edge (how a
quad's two halves are emitted) back into one polygon, so every diagonal choice of the same quads gives the
same hash. The computation is integer-only.
"""

import hashlib

import numpy as np


def merge_quads(faces: np.ndarray) -> np.ndarray:
    """Polygons of a triangulated mesh: (P, 4) int64 sorted vertex ids, triangles padded with -1.

    faces: (F, 3) triangles. Scanning in order, triangle i and i + 1 become one quad when they share
    exactly two vertices (an edge); otherwise triangle i stands alone.
    """
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) triangles, got shape {faces.shape}")
    # shared[i]: how many vertices triangle i + 1 shares with triangle i
    shared = (faces[1:, :, None] == faces[:-1, None, :]).any(2).sum(1)  # (F - 1,)
    polygons = []
    i = 0
    while i < len(faces):
        if i + 1 < len(faces) and shared[i] == 2:
            polygons.append(np.union1d(faces[i], faces[i + 1]))  # the quad's 4 vertices, sorted
            i += 2
        else:
            polygons.append(np.append(np.sort(faces[i]), -1))
            i += 1
    return np.stack(polygons) if polygons else np.zeros((0, 4), dtype=np.int64)


def triangles_hash(faces: np.ndarray, n_vertices: int) -> str:
    """16 hex digits of a sha256 of the vertex count and the exact (F, 3) triangles (a model's
    `topology_hash`): changes with any triangle, its order or its split."""
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    return hashlib.sha256(f"{int(n_vertices)}:".encode() + faces.tobytes()).hexdigest()[:16]


def connectivity_hash(faces: np.ndarray, n_vertices: int) -> str:
    """16 hex digits of a sha256 of the vertex count and the merged polygons (`merge_quads`), in order.

    Equal for every triangulation of the same quad mesh; different when a polygon, its position or the
    vertex count changes.
    """
    polygons = np.ascontiguousarray(merge_quads(faces))
    return hashlib.sha256(f"{int(n_vertices)}:".encode() + polygons.tobytes()).hexdigest()[:16]
