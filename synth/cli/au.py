"""`synth au evaluate`: train the spectral SVM AU detector and evaluate both AU labelling methods.

    synth au evaluate [--train 30] [--test 10] [--mixtures 40] [--seed 0] [--threshold 0.1] [--out FILE]
                      [--save DIR]

Anny infants (A1's prior) in the catalogue expressions and in random AU mixtures at random intensities;
the SVMs train on `--train` identities, both methods (NNLS intensities thresholded, SVMs) are scored on
`--test` held-out identities. Default output: au-labels.md in the working directory (docs/au-labels.md
is this report plus a measured note on random samples). `--save DIR` keeps the trained detector:
`synth.labels.au_detector.MeshAuDetector.load(DIR).predict(vertices)` labels Anny-topology meshes.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from synth.atomic import atomic_write_text
from synth.errors import SynthError
from synth.hardware import cpu_model

log = logging.getLogger(__name__)


def _table(evaluation, set_name: str) -> str:
    rows = [
        "| AU | positives | NNLS P | NNLS R | NNLS F1 | SVM P | SVM R | SVM F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nnls, svm = evaluation.tables["nnls", set_name], evaluation.tables["svm", set_name]

    def fmt(x: float) -> str:
        return "-" if np.isnan(x) else f"{x:.2f}"

    for a, name in enumerate(evaluation.au_names):
        cells = " | ".join(fmt(v) for v in (*nnls[a, :3], *svm[a, :3]))
        rows.append(f"| {name} | {int(nnls[a, 3])} | {cells} |")
    macro = " | ".join(f"**{fmt(np.nanmean(t[:, j]))}**" for t in (nnls, svm) for j in range(3))
    rows.append(f"| **macro mean** | | {macro} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="synth au", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    ev = sub.add_parser("evaluate", help="train the SVMs, score NNLS and SVM labels on held-out infants")
    ev.add_argument("--train", type=int, default=30, help="training identities (default 30)")
    ev.add_argument("--test", type=int, default=10, help="held-out identities (default 10)")
    ev.add_argument("--mixtures", type=int, default=40, help="random AU mixtures per identity (default 40)")
    ev.add_argument("--seed", type=int, default=0, help="identity / mixture seed (default 0)")
    ev.add_argument("--threshold", type=float, default=0.1, help="NNLS intensity counted as present (0.1)")
    ev.add_argument("--patch-size", type=int, default=150, help="vertices per landmark patch (default 150)")
    ev.add_argument(
        "--out", type=Path, default=Path("au-labels.md"), help="Markdown report (default: au-labels.md)"
    )
    ev.add_argument("--save", type=Path, default=None, help="also save the trained SVM detector here")
    args = parser.parse_args()
    if args.train < 1 or args.test < 1 or args.mixtures < 0:
        raise SynthError("--train and --test must be >= 1 and --mixtures >= 0")
    if not 0.0 < args.threshold < 1.0:
        raise SynthError(f"--threshold={args.threshold} must be in (0, 1)")

    from synth.analysis.au_evaluation import anny_au_set, evaluate_au_labelling
    from synth.labels.au_detector import AuDetector, MeshAuDetector, build_patches
    from synth.labels.expressions import load_catalogue
    from synth.labels.landmarks import load_anny_head_landmarks
    from synth.sources.anny_source import AnnyPriorConfig, anny_topology, neutral_meshes, sample_identities
    from synth.sources.transfer import HELD_OUT_STREAM

    start = time.perf_counter()
    prior = AnnyPriorConfig()
    train_ids = sample_identities(prior, args.seed, args.train)
    test_ids = sample_identities(prior, args.seed, args.test, start=HELD_OUT_STREAM)
    # Patches and eigenvectors depend on connectivity only; the mean training infant orders the rings.
    template = neutral_meshes(train_ids).mean(axis=0)
    patches = build_patches(template, anny_topology().faces, load_anny_head_landmarks(), args.patch_size)
    train = anny_au_set(train_ids, args.mixtures, args.seed)
    test = anny_au_set(test_ids, args.mixtures, args.seed + 1)
    au_names = list(load_catalogue().au_names)
    detector = AuDetector()
    evaluation = evaluate_au_labelling(train, test, patches, au_names, args.threshold, detector)
    if args.save is not None:
        MeshAuDetector(patches, detector, tuple(au_names), len(template)).save(args.save)
        log.info("saved the AU detector to %s", args.save)
    seconds = time.perf_counter() - start

    mae = evaluation.intensity_mae
    sections = [
        f"### Catalogue expressions ({test.mixture.size - test.mixture.sum()} per identity)\n\n"
        + _table(evaluation, "catalogue")
    ]
    if args.mixtures:
        sections.append(
            f"### Random mixtures ({args.mixtures} per identity, 1-4 AUs at intensity U(0.3, 1))\n\n"
            + _table(evaluation, "mixtures")
        )
    report = REPORT.format(
        command=("synth au " + " ".join(sys.argv[1:])).strip(),
        train=args.train,
        test=args.test,
        threshold=args.threshold,
        seconds=seconds,
        machine=f"{cpu_model()}, {os.cpu_count()} cores",
        mae=np.nanmean(mae),
        tables="\n".join(sections),
    )
    atomic_write_text(args.out, report)
    log.info("wrote %s (%.0f s)", args.out, seconds)
    return 0


REPORT = """# AU labels: intensities and the spectral detector

Every generated sample carries 46 AU intensities in [0, 1] (`au.npy`); catalogue expressions also carry
their nominal AU set. Two ways to label a mesh, both in `synth.labels`:

- **NNLS intensities** (`au_labels.au_intensities`, `au_labels.ModelAuLabeller` for model samples): the
  mesh's deformation from its identity's neutral, explained by that identity's 46 per-AU deformation
  bases with non-negative least squares, clipped to [0, 1]. Needs the identity (its neutral and bases),
  which generated samples always have. For a `FaceModel` sample the bases come from the bilinear model
  itself (the identity decoded with the catalogue's single-AU expressions), so labelling is a few small
  matrix products and a 46 x 46 NNLS per sample.
- **Spectral SVM detector** (`au_detector`, the paper's section 4.2 after Derkach et al.): spectral
  features of patches around the 19 central landmarks (graph Laplacian, eq. 3; tau = 50 lowest
  eigenvectors; projection, eq. 4) and one linear-kernel SVM per AU (scikit-learn's LIBSVM). Works
  from the mesh alone (the paper uses it on scans of unknown expression). `synth au evaluate --save DIR`
  keeps the trained detector (JSON + safetensors: patches, scaler, each SVM's primal weights); then
  `au_detector.MeshAuDetector.load(DIR).predict(vertices)` labels (n, 4538, 3) Anny-topology meshes.

Evaluation: Anny infants from the default prior; the SVMs train on {train} identities, both methods are
scored on {test} held-out identities (disjoint seed stream), on the catalogue's 76 expressions and on
random AU mixtures at random intensities. An AU counts as present when its true intensity is > 0; NNLS
predicts presence at intensity >= {threshold}. P / R / F1 per AU; "-" where undefined (no positive or no
prediction). Mean absolute NNLS intensity error on the mixtures: {mae:.3f}.

Reproduce: `{command}` ({seconds:.0f} s on {machine}, shared with other jobs).

Labels of generated samples. Samples made from an AU vector (the default `sampler=prior`, `sampler=au`
random draws, identity_sets / interpolation with `expressions_from=prior`) carry that vector as `au.npy`
(`meta.au_source = generating`): the mesh is the identity's neutral plus the weighted single-AU
deformations, so the label is exact by construction. The NNLS estimate below is stored beside it for every
sample (`au_nnls.npy`, with its relative residual `meta.au_nnls_residual`) and is the label of flow
samples (`sampler=random`, `au_source = nnls`). See docs/expression-prior.md.

Identifiability. Anny's 52 facial actions and the catalogue's AU -> action table (A1's
`expressions.json`) give 46 AU bases spanning only 37 dimensions: AU43 / AU42 / AU41 (close eye, slit,
lid droop) are the same `eyeBlink` at weights 1 / 0.7 / 0.4; AU44 and AU7 mix the same two actions;
AU27 = 2 x AU26 + 0.2 x AU20 (both sides); sad_eyes is a combination of brow AUs. Only 25 AUs have a
basis independent of all others. For the others no method can tell the AUs apart from geometry: NNLS
gives parallel groups to the weakest AU that reaches the fitted amplitude (see `au_labels`), other
dependent sets get one valid non-negative decomposition. The F1 of these AUs measures this ambiguity,
not the solver.

{tables}"""
