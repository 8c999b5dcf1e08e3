"""How well the two AU labelling methods do on held-out Anny infants (BabyFlow 4.2): the NNLS intensities
of `synth.labels.au_labels` (with each identity's own AU bases) and the spectral SVM detector of
`synth.labels.au_detector` (the mesh alone), scored per AU by precision / recall / F1 on the catalogue
expressions and on random AU mixtures. `synth au evaluate` writes the report.
"""

import logging
from dataclasses import dataclass

import numpy as np

from synth.labels.au_detector import AuDetector, SpectralPatches, spectral_features
from synth.labels.au_labels import au_intensities
from synth.labels.expressions import load_catalogue
from synth.seeding import Stage, numpy_rng

log = logging.getLogger(__name__)


def precision_recall_f1(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-AU precision, recall, F1 and support: truth, pred (n, A) bool -> (A, 4) float64.

    An undefined ratio (no prediction / no positive) is reported as NaN, not 0 or 1.
    """
    truth, pred = truth.astype(bool), pred.astype(bool)
    tp = (truth & pred).sum(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / pred.sum(0)
        recall = tp / truth.sum(0)
        f1 = 2 * tp / (pred.sum(0) + truth.sum(0))
    return np.stack([precision, recall, f1, truth.sum(0).astype(np.float64)], axis=1)


@dataclass(frozen=True)
class AuSet:
    """Meshes with known AUs for training / evaluating AU labelling.

    meshes: (n_id, n_ex, N, 3) float32; aus: (n_id, n_ex, A) float32 true intensities (0 = absent);
    mixture: (n_ex,) bool, False for the catalogue expressions, True for random mixtures;
    neutral: (n_id, N, 3) float64; bases: (n_id, A, N, 3) float32 per-AU deformation bases.
    """

    meshes: np.ndarray
    aus: np.ndarray
    mixture: np.ndarray
    neutral: np.ndarray
    bases: np.ndarray


def random_mixtures(rng: np.random.Generator, n: int, n_au: int, max_active: int, low: float) -> np.ndarray:
    """(n, A) AU vectors: 1..max_active random AUs each at intensity ~ Uniform(low, 1)."""
    out = np.zeros((n, n_au), dtype=np.float32)
    for row in out:
        on = rng.choice(n_au, size=int(rng.integers(1, max_active + 1)), replace=False)
        row[on] = rng.uniform(low, 1.0, size=on.size)
    return out


def anny_au_set(params, n_mixtures: int, seed: int, max_active: int = 4, low: float = 0.3) -> AuSet:
    """Anny infants (A1's `IdentityParams`) in the 75 non-neutral catalogue expressions, the neutral and
    `n_mixtures` random AU mixtures each (drawn per identity from `numpy_rng(seed, i, BUILD, 3)`)."""
    from synth.sources.anny_source import facial_action_bases

    cat = load_catalogue()
    table = cat.au_to_actions.astype(np.float64)  # (A, 52)
    n_id, n_au = len(params), len(cat.au_names)
    n_ex = len(cat.expression_names) + n_mixtures
    meshes = aus = neutral = bases = None
    for i in range(n_id):
        neutral_i, action_bases = facial_action_bases(params[i : i + 1])  # (1, N, 3), (1, 52, N, 3)
        mix = random_mixtures(numpy_rng(seed, i, Stage.BUILD, 3), n_mixtures, n_au, max_active, low)
        aus_i = np.concatenate([cat.expression_aus, mix])  # (n_ex, A)
        actions = np.clip(aus_i @ table, 0.0, 1.0)  # (n_ex, 52)
        if meshes is None:
            n_vert = neutral_i.shape[1]
            meshes = np.empty((n_id, n_ex, n_vert, 3), dtype=np.float32)
            aus = np.empty((n_id, n_ex, n_au), dtype=np.float32)
            neutral = np.empty((n_id, n_vert, 3))
            bases = np.empty((n_id, n_au, n_vert, 3), dtype=np.float32)
        meshes[i] = neutral_i[0] + np.einsum("ea,avd->evd", actions, action_bases[0])
        aus[i] = aus_i
        neutral[i] = neutral_i[0]
        bases[i] = np.einsum("ua,avd->uvd", table, action_bases[0])
    mixture = np.arange(n_ex) >= len(cat.expression_names)
    return AuSet(meshes, aus, mixture, neutral, bases)


@dataclass(frozen=True)
class AuEvaluation:
    """Per-AU (A, 4) precision / recall / F1 / support tables by method ("nnls", "svm") and test set
    ("catalogue", "mixtures"); intensity_mae: (A,) mean absolute NNLS intensity error on the mixtures."""

    au_names: list[str]
    tables: dict[tuple[str, str], np.ndarray]
    intensity_mae: np.ndarray


def evaluate_au_labelling(
    train: AuSet,
    test: AuSet,
    patches: SpectralPatches,
    au_names: list[str],
    threshold: float = 0.1,
    detector: AuDetector | None = None,
) -> AuEvaluation:
    """Train the SVMs on `train`, then label `test` (held-out identities) with both methods.

    NNLS: `au_labels.au_intensities` with each test identity's neutral and AU bases, present when the
    intensity >= threshold. SVM: the spectral detector on the mesh alone. Ground truth: intensity > 0.
    """
    detector = detector or AuDetector()
    n_au = train.aus.shape[-1]
    x_train = spectral_features(train.meshes.reshape(-1, *train.meshes.shape[2:]), patches)
    detector.fit(x_train, train.aus.reshape(-1, n_au) > 0)
    log.info("trained %d SVMs on %d meshes", n_au, len(x_train))
    svm = detector.predict(spectral_features(test.meshes.reshape(-1, *test.meshes.shape[2:]), patches))
    svm = svm.reshape(*test.aus.shape)
    est = np.stack(
        [au_intensities(test.meshes[i], test.neutral[i], test.bases[i]) for i in range(len(test.meshes))]
    )
    truth = test.aus > 0
    tables = {}
    for set_name, mask in (("catalogue", ~test.mixture), ("mixtures", test.mixture)):
        if not mask.any():
            continue
        t = truth[:, mask].reshape(-1, n_au)
        tables["nnls", set_name] = precision_recall_f1(t, (est[:, mask] >= threshold).reshape(-1, n_au))
        tables["svm", set_name] = precision_recall_f1(t, svm[:, mask].reshape(-1, n_au))
    mix = test.mixture
    mae = (
        np.abs(est[:, mix] - test.aus[:, mix]).reshape(-1, n_au).mean(0)
        if mix.any()
        else np.full(n_au, np.nan)
    )
    return AuEvaluation(list(au_names), tables, mae)
