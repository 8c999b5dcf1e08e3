"""synth's Anny head triangulation does not depend on the CPU's rounding (issue: AMD vs Intel faces)."""

from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.facemodel.topology import connectivity_hash, merge_quads, triangles_hash
from synth.labels.landmarks import load_anny_head_landmarks
from synth.sources.anny_source import head_faces, shipped_head_faces
from tests._anny_head import anny_head, template

GOLDEN = Path(__file__).parents[1] / "golden"
N_VERTICES = 4538


def quads_of(faces: np.ndarray) -> np.ndarray:
    """(Q, 4) quads a, b, c, d in Anny's order from its triangle pairs: [a,b,c],[c,d,a] or [a,b,d],[d,b,c]."""
    t1, t2 = faces[0::2], faces[1::2]
    first = (t1[:, 2] == t2[:, 0]) & (t2[:, 2] == t1[:, 0])
    return np.where(
        first[:, None],
        np.stack([t1[:, 0], t1[:, 1], t1[:, 2], t2[:, 1]], 1),
        np.stack([t1[:, 0], t1[:, 1], t2[:, 2], t1[:, 2]], 1),
    )


def split(quads: np.ndarray, diagonal_ac: np.ndarray) -> np.ndarray:
    """Anny's two splits of each quad: along a-c ([a,b,c],[c,d,a]) or b-d ([a,b,d],[d,b,c])."""
    a, b, c, d = quads.T
    t1 = np.where(diagonal_ac[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    t2 = np.where(diagonal_ac[:, None], np.stack([c, d, a], 1), np.stack([d, b, c], 1))
    return np.stack([t1, t2], 1).reshape(-1, 3)


def test_shipped_faces_are_the_intel_triangulation_and_split_the_amd_quads() -> None:
    shipped = shipped_head_faces()
    amd = np.load(GOLDEN / "anny_head_faces_amd_epyc.npz")["faces"].astype(np.int64)
    assert shipped.shape == amd.shape == (9014, 3)
    # the split the shipped landmark file and the models built so far were made on (Intel Xeon)
    assert triangles_hash(shipped, N_VERTICES) != triangles_hash(amd, N_VERTICES)
    assert (shipped != amd).any(1).sum() == 8  # 4 quads split the other way
    assert connectivity_hash(shipped, N_VERTICES) == connectivity_hash(amd, N_VERTICES)
    assert connectivity_hash(shipped, N_VERTICES) == load_anny_head_landmarks().connectivity
    np.testing.assert_array_equal(head_faces(amd, N_VERTICES), shipped)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_any_split_of_the_quads_has_the_same_connectivity(seed: int) -> None:
    shipped = shipped_head_faces()
    quads = quads_of(shipped)
    flips = np.random.default_rng(seed).random(len(quads)) < 0.5
    other = split(quads, flips)
    assert merge_quads(other).shape == (len(quads), 4)
    assert connectivity_hash(other, N_VERTICES) == connectivity_hash(shipped, N_VERTICES)
    np.testing.assert_array_equal(head_faces(other, N_VERTICES), shipped)


def test_a_template_perturbed_by_one_ulp_gives_the_same_faces() -> None:
    """Anny's shorter-diagonal rule on a template moved by one ulp splits tied quads another way; synth's
    faces, the landmarks' topology check and the model topology stay the same."""
    from anny.utils.mesh_utils import triangulate_faces

    verts, faces = template()
    quads = quads_of(faces).tolist()
    base = torch.as_tensor(verts)
    changed = 0
    for seed in range(3):
        direction = np.where(np.random.default_rng(seed).random(verts.shape) < 0.5, -np.inf, np.inf)
        moved = torch.as_tensor(np.nextafter(verts, direction))  # every coordinate one ulp up or down
        tri = np.asarray(triangulate_faces(moved, quads), dtype=np.int64)
        changed += int((tri != np.asarray(triangulate_faces(base, quads))).any())
        np.testing.assert_array_equal(head_faces(tri, len(verts)), shipped_head_faces())
        load_anny_head_landmarks().check_topology(tri, len(verts))
    assert changed, "one ulp should flip at least one of the ~40 tied quads (else the test shows nothing)"


def test_anny_source_uses_the_shipped_faces() -> None:
    from synth.sources.anny_source import anny_topology

    anny_head()  # warm Anny's cache through the tests' shared model
    np.testing.assert_array_equal(anny_topology().faces, shipped_head_faces())


def test_merge_quads_keeps_lone_triangles() -> None:
    faces = np.array([[0, 1, 2], [2, 3, 0], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(merge_quads(faces), [[0, 1, 2, 3], [4, 5, 6, -1], [7, 8, 9, -1]])
    assert connectivity_hash(faces, 10) != connectivity_hash(faces, 11)
