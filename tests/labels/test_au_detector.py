import json

import numpy as np
import pytest

from synth.errors import SynthError
from synth.labels.au_detector import AuDetector, MeshAuDetector, build_patches, spectral_features
from synth.labels.landmarks import CENTRAL_LANDMARKS, load_anny_head_landmarks
from tests._anny_head import template


@pytest.fixture(scope="module")
def patches():
    verts, faces = template()
    return build_patches(verts, faces, load_anny_head_landmarks(), patch_size=80, tau=50)


def test_patches_are_laplacian_eigenbases(patches) -> None:
    assert patches.vertex_ids.shape == (19, 80) and patches.eigvecs.shape == (19, 80, 50)
    assert patches.names == CENTRAL_LANDMARKS
    assert all(len(set(row)) == 80 for row in patches.vertex_ids.tolist())
    assert np.all(np.diff(patches.eigvals, axis=1) >= -1e-9)  # ascending
    np.testing.assert_allclose(patches.eigvals[:, 0], 0.0, atol=1e-9)  # connected patches: constant mode
    gram = np.einsum("kpt,kps->kts", patches.eigvecs, patches.eigvecs)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(50), gram.shape), atol=1e-9)


def test_features_are_translation_free_and_linear(patches) -> None:
    verts, _ = template()
    rng = np.random.default_rng(0)
    a = verts + rng.normal(size=verts.shape) * 1e-3
    b = verts + rng.normal(size=verts.shape) * 1e-3
    fa, fb = spectral_features(np.stack([a, b]), patches)
    assert fa.shape == (patches.n_features,) == (19 * 50 * 3,)
    np.testing.assert_allclose(
        spectral_features((a + np.array([0.1, -2.0, 0.3]))[None], patches)[0], fa, atol=1e-5
    )
    np.testing.assert_allclose(
        spectral_features((0.5 * (a + b))[None], patches)[0], 0.5 * (fa + fb), atol=1e-5
    )


def test_linear_detector_primal_form_is_the_svm_decision() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    labels = np.stack([x[:, 0] + 0.3 * rng.normal(size=60) > 0, x[:, 1] > 0.5, np.zeros(60, bool)], 1)
    det = AuDetector().fit(x, labels)
    x_test = rng.normal(size=(25, 12))
    z, z_train = det.scaler.transform(x_test), det.scaler.transform(x)
    for a in (0, 1):  # the SVC's own decision on the precomputed linear kernel
        expected = det.models[a].decision_function(z @ z_train.T)
        np.testing.assert_allclose(z @ det.weights[a] + det.bias[a], expected, atol=1e-9)
    assert not det.predict(x_test)[:, 2].any()  # a single-class AU predicts its class


def test_saved_detector_reloads_and_predicts_identically(tmp_path, patches) -> None:
    verts, _ = template()
    rng = np.random.default_rng(1)
    meshes = verts + rng.normal(size=(40, *verts.shape)) * 1e-3
    labels = rng.random((40, 4)) > 0.5
    det = AuDetector().fit(spectral_features(meshes, patches), labels)
    trained = MeshAuDetector(patches, det, ("AU1", "AU2", "AU4", "AU6"), len(verts))
    trained.save(tmp_path / "det")
    loaded = MeshAuDetector.load(tmp_path / "det")
    assert loaded.au_names == trained.au_names and loaded.patches.names == patches.names
    test = verts + rng.normal(size=(10, *verts.shape)) * 1e-3
    np.testing.assert_array_equal(loaded.predict(test), trained.predict(test))
    with pytest.raises(SynthError, match="topology"):
        loaded.predict(test[:, :-1])
    # altered arrays, a foreign format and a non-linear detector are refused with one line
    meta = json.loads((tmp_path / "det" / "detector.json").read_text())
    (tmp_path / "det" / "detector.safetensors").write_bytes(b"x" * 64)
    with pytest.raises(SynthError, match="checksum"):
        MeshAuDetector.load(tmp_path / "det")
    (tmp_path / "det" / "detector.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(SynthError, match="not a synth AU detector"):
        MeshAuDetector.load(tmp_path / "det")
    with pytest.raises(SynthError, match="not a saved AU detector"):
        MeshAuDetector.load(tmp_path / "missing")
    rbf = AuDetector(kernel="rbf").fit(spectral_features(meshes, patches), labels)
    with pytest.raises(SynthError, match="linear"):
        MeshAuDetector(patches, rbf, trained.au_names, len(verts)).save(tmp_path / "rbf")
