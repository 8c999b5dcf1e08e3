import numpy as np
import pytest

from synth.analysis.au_evaluation import (
    anny_au_set,
    evaluate_au_labelling,
    precision_recall_f1,
    random_mixtures,
)
from synth.labels.au_detector import AuDetector, MeshAuDetector, build_patches
from synth.labels.expressions import load_catalogue
from synth.labels.landmarks import load_anny_head_landmarks
from synth.sources.anny_source import AnnyPriorConfig, sample_identities
from tests._anny_head import template


@pytest.fixture(scope="module")
def patches():
    verts, faces = template()
    return build_patches(verts, faces, load_anny_head_landmarks(), patch_size=80, tau=50)


def test_precision_recall_f1_golden() -> None:
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], bool)
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]], bool)
    table = precision_recall_f1(truth, pred)
    np.testing.assert_allclose(table[0], [0.5, 0.5, 0.5, 2])
    np.testing.assert_allclose(table[1], [2 / 3, 1.0, 0.8, 2])
    assert np.isnan(table[2, :2]).all() and np.isnan(table[2, 2]) and table[2, 3] == 0


def test_random_mixtures_are_sparse_and_in_range() -> None:
    mix = random_mixtures(np.random.default_rng(1), 200, 46, 4, 0.3)
    active = (mix > 0).sum(1)
    assert active.min() == 1 and active.max() == 4
    assert mix[mix > 0].min() >= 0.3 and mix.max() <= 1.0


def test_detector_trains_and_beats_chance_on_a_tiny_set(patches) -> None:
    prior = AnnyPriorConfig()
    train = anny_au_set(sample_identities(prior, 0, 3), n_mixtures=10, seed=0)
    test = anny_au_set(sample_identities(prior, 0, 1, start=500_000), n_mixtures=10, seed=1)
    cat = load_catalogue()
    ev = evaluate_au_labelling(train, test, patches, list(cat.au_names), detector=AuDetector())
    svm = ev.tables["svm", "catalogue"]
    truth = test.aus[:, ~test.mixture].reshape(-1, 46) > 0
    # chance: a coin flip at each AU's prevalence has expected F1 = prevalence
    chance = np.nanmean(truth.mean(0)[truth.any(0)])
    assert np.nanmean(svm[:, 2]) > 2 * chance
    # NNLS with the identity's own bases is near-perfect on the catalogue (up to unidentifiable AUs)
    assert np.nanmean(ev.tables["nnls", "catalogue"][:, 2]) > 0.8
    assert ev.intensity_mae.shape == (46,) and np.nanmean(ev.intensity_mae) < 0.15


def test_au_evaluate_command_writes_the_report_and_saves_the_detector(tmp_path) -> None:
    from synth.cli import main

    out = tmp_path / "au.md"
    args = ["au", "evaluate", "--train", "1", "--test", "1", "--mixtures", "2", "--patch-size", "60"]
    assert main([*args, "--out", str(out), "--save", str(tmp_path / "det")]) == 0
    text = out.read_text()
    assert "### Catalogue expressions" in text and "### Random mixtures" in text and "| AU12_L |" in text
    detector = MeshAuDetector.load(tmp_path / "det")
    verts, _ = template()
    assert detector.predict(verts[None]).shape == (1, 46) and len(detector.au_names) == 46
    assert main(["au", "evaluate", "--threshold", "2", "--out", str(out)]) == 2
