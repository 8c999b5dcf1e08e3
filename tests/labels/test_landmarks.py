import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from synth.labels.landmarks import (
    CENTRAL_LANDMARKS,
    LANDMARK_NAMES,
    LandmarkDefinition,
    derive_anny_head_landmarks,
    landmarks,
    load_anny_head_landmarks,
    model_landmarks,
)
from tests._anny_head import anny_head, template


def test_shipped_definition_names_and_central_set() -> None:
    d = load_anny_head_landmarks()
    assert d.names == LANDMARK_NAMES and len(d.names) == 23
    assert len(CENTRAL_LANDMARKS) == 19 and not {"tR", "tL", "oiR", "oiL"} & set(CENTRAL_LANDMARKS)
    assert all(note for note in d.notes)
    np.testing.assert_allclose(d.weights.sum(1), 1.0)


def test_shipped_file_is_reproduced_by_the_derivation() -> None:
    shipped = load_anny_head_landmarks()
    derived = derive_anny_head_landmarks(anny_head())
    verts, faces = template()  # Anny's own triangles on this machine: any split of the quads is accepted
    shipped.check_topology(faces, len(verts))
    assert derived.connectivity == shipped.connectivity and derived.n_vertices == shipped.n_vertices == 4538
    np.testing.assert_array_equal(derived.vertex_ids, shipped.vertex_ids)
    np.testing.assert_allclose(derived.weights, shipped.weights, atol=1e-9)


def test_template_landmarks_are_anatomically_ordered_and_symmetric() -> None:
    verts, _ = template()
    d = load_anny_head_landmarks()
    p = {name: xyz for name, xyz in zip(d.names, landmarks(verts, d), strict=True)}
    # vertical order on the midline profile (z up)
    assert p["n"][2] > p["prn"][2] > p["sn"][2] > p["ls"][2] > p["li"][2] > p["sl"][2] > p["pg"][2]
    # the nose tip is the most anterior landmark (face looks towards -y); the ears are the most posterior
    assert min(p, key=lambda k: p[k][1]) == "prn"
    assert {max(p, key=lambda k: p[k][1])} <= {"tR", "tL", "oiR", "oiL"}
    for mid in ("n", "prn", "sn", "ls", "li", "sl", "pg"):
        assert abs(p[mid][0]) < 1e-9
    for left in ("exL", "enL", "aL", "acL", "chL", "cphL", "tL", "oiL"):
        right = left[:-1] + "R"
        assert p[left][0] > 0 > p[right][0]  # subject's left is +x
        np.testing.assert_allclose(p[left] * [-1, 1, 1], p[right], atol=1e-3)
    assert abs(p["exL"][0]) > abs(p["enL"][0]) and abs(p["chL"][0]) > abs(p["cphL"][0])
    # plausible adult template distances (metres): intercanthal, mouth width, nasion-chin height
    assert 0.025 < p["enL"][0] - p["enR"][0] < 0.05
    assert 0.035 < p["chL"][0] - p["chR"][0] < 0.07
    assert 0.08 < p["n"][2] - p["pg"][2] < 0.14


def test_topology_mismatch_is_refused() -> None:
    verts, faces = template()
    d = load_anny_head_landmarks()
    with pytest.raises(ValueError, match="connectivity"):
        d.check_topology(faces, len(verts) + 1)  # another vertex count
    other = faces.copy()
    other[[0, 1]] = other[[2, 3]]  # a quad replaced by a copy of its neighbour
    with pytest.raises(ValueError, match="connectivity"):
        d.check_topology(other, len(verts))


def test_json_round_trip(tmp_path) -> None:
    d = load_anny_head_landmarks()
    d.save(tmp_path / "l.json")
    back = LandmarkDefinition.load(tmp_path / "l.json")
    assert back.names == d.names and back.notes == d.notes
    np.testing.assert_array_equal(back.vertex_ids, d.vertex_ids)
    np.testing.assert_allclose(back.weights, d.weights)


def test_matrix_matches_gather() -> None:
    verts, _ = template()
    d = load_anny_head_landmarks()
    np.testing.assert_allclose(d.matrix() @ verts, landmarks(verts, d), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    rotvec=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
    shift=st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3),
)
def test_landmarks_move_rigidly(rotvec, shift) -> None:
    verts, _ = template()
    d = load_anny_head_landmarks()
    r = Rotation.from_rotvec(rotvec).as_matrix()
    moved = verts @ r.T + np.asarray(shift)
    expected = landmarks(verts, d) @ r.T + np.asarray(shift)
    np.testing.assert_allclose(landmarks(moved, d), expected, atol=1e-9)
    batch = torch.as_tensor(np.stack([verts, moved]), dtype=torch.float32)
    out = landmarks(batch, d)
    assert out.shape == (2, 23, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out[1].numpy(), expected, atol=1e-5)


def test_model_landmarks_of_a_face_model() -> None:
    from synth.build.build import model_from_tensor
    from synth.errors import SynthError
    from synth.facemodel.tensor import FaceTensor
    from tests._facemodels import synthetic_config, synthetic_model

    verts, faces = template()
    rng = np.random.default_rng(0)
    tensor = FaceTensor(
        vertices=(verts + rng.normal(size=(3, 2, *verts.shape)) * 1e-3).astype(np.float32),
        faces=faces,
        expression_names=["neutral", "smile"],
        au_names=["AU12"],
        expression_aus=np.array([[0.0], [1.0]], np.float32),
        identity_ids=["a", "b", "c"],
    )
    model = model_from_tensor(tensor, synthetic_config(epochs=1))
    meshes = model.decode(model.identity_coefficients[:2], model.expression_coefficients[[0, 1]])
    out = model_landmarks(model, meshes)
    assert out.shape == (2, 23, 3)
    expected = landmarks(meshes.numpy(), load_anny_head_landmarks())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    with pytest.raises(SynthError, match="connectivity"):
        small = synthetic_model(epochs=1)
        model_landmarks(
            small, small.decode(small.identity_coefficients[:1], small.expression_coefficients[:1])
        )
