import fast_simplification
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.transform import Rotation

from synth.labels.landmarks import landmarks, load_anny_head_landmarks
from synth.sources.correspondence import (
    apply_transform,
    barycentric_projection,
    compute_mapping,
    similarity_procrustes,
)
from tests._anny_head import template


def _check_rows(matrix: sp.csr_matrix) -> None:
    assert np.all(np.diff(matrix.indptr) <= 3) and matrix.data.min() >= 0.0 and matrix.data.max() <= 1.0
    np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-12)


def test_coincident_meshes_give_the_identity() -> None:
    verts, faces = template()
    lmk = landmarks(verts, load_anny_head_landmarks())
    corr = compute_mapping(verts, faces, lmk, verts, faces, lmk)
    assert corr.matrix.shape == (len(verts), len(verts))
    _check_rows(corr.matrix)
    assert abs(corr.matrix - sp.eye(len(verts))).max() < 1e-9
    assert corr.distance.max() < 1e-9


def test_similarity_moved_source_is_realigned() -> None:
    verts, faces = template()
    d = load_anny_head_landmarks()
    rot = Rotation.from_rotvec([0.3, -0.2, 1.1]).as_matrix()
    moved = 1.7 * verts @ rot.T + [0.2, -1.0, 0.5]  # another frame and units
    corr = compute_mapping(moved, faces, landmarks(moved, d), verts, faces, landmarks(verts, d))
    assert corr.scale == pytest.approx(1 / 1.7, rel=1e-9)
    assert abs(corr.matrix - sp.eye(len(verts))).max() < 1e-9
    np.testing.assert_allclose(apply_transform(corr.transform, moved), verts, atol=1e-9)
    # deformations carried by M keep the source's frame: rotate them back with the transform
    field = np.random.default_rng(0).normal(size=(2, len(verts), 3))
    np.testing.assert_allclose(corr.map(field), field, atol=1e-9)


def test_procrustes_recovers_a_similarity() -> None:
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(23, 3))
    rot = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    matrix = similarity_procrustes(pts, 0.5 * pts @ rot.T + 2.0)
    np.testing.assert_allclose(matrix[:3, :3], 0.5 * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:3, 3], 2.0, atol=1e-9)


def test_cross_topology_mapping_of_a_decimated_source() -> None:
    verts, faces = template()
    d = load_anny_head_landmarks()
    lmk = landmarks(verts, d)
    src_v, src_f = fast_simplification.simplify(verts, faces, target_reduction=0.6)
    assert len(src_v) < 0.6 * len(verts)
    # landmarks of the decimated mesh: the closest points of the original landmarks on its surface
    fid, w, _ = barycentric_projection(lmk, src_v, src_f)
    src_lmk = np.einsum("lk,lkd->ld", w, src_v[src_f[fid]])
    corr = compute_mapping(src_v, src_f, src_lmk, verts, faces, lmk)
    assert corr.matrix.shape == (len(verts), len(src_v))
    _check_rows(corr.matrix)
    recon = corr.map(src_v)
    err = np.linalg.norm(recon - verts, axis=1)
    assert np.median(err) < 5e-4 and np.percentile(err, 95) < 3e-3  # metres
    # a linear field is interpolated exactly at the projected points
    a = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0], [0.0, 1.0, 1.0]])
    np.testing.assert_allclose(corr.map(src_v @ a.T), recon @ a.T, atol=1e-9)


def test_landmark_mismatch_is_refused() -> None:
    verts, faces = template()
    with pytest.raises(ValueError, match="same >= 3 landmarks"):
        compute_mapping(verts, faces, verts[:5], verts, faces, verts[:4])
