"""How a generated dataset's expressions compare with the expression prior, and how exact its AU labels are.

`synth expressions DATASET` (synth/cli/expressions.py) prints the figures of docs/expression-prior.md
("Measured"): active AUs per sample, neutral share, exclusive-pair violations, clipped label values, each
unit's base rate against its target, and, for the samples made from AU vectors, the error of the label
and of the NNLS estimate against the generating vector (re-planned from the run's config and seed, not
read back from the labels) with the NNLS presence F1. Needs the face model the dataset was made with.
"""

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from synth.labels.expression_prior import ACTIVE

log = logging.getLogger(__name__)


def expression_report(dataset_dir: str | Path, cfg: Any) -> dict[str, Any]:
    """The figures (a JSON-able dict) of a finished dataset made by `synth generate` with config `cfg`
    (its `GenerateConfig`, rebuilt from manifest.json by the CLI)."""
    from synth.facemodel.model import FaceModel
    from synth.pipeline.stages import sampler_for

    root = Path(dataset_dir)
    manifest = json.loads((root / "manifest.json").read_text())
    table = pq.read_table(root / "index").sort_by("index")
    au = np.asarray(table.column("au").to_pylist(), np.float32)  # (n, A)
    nnls = np.asarray(table.column("au_nnls").to_pylist(), np.float32)  # (n, A)
    sampler = sampler_for(cfg, FaceModel.load(manifest["model"]["path"]))
    if sampler.prior is None:
        raise ValueError(f"{root}: sampler={cfg.sampler.kind.value} draws no AU vectors; nothing to compare")
    plan = sampler.plan(table.column("index").to_numpy())
    out = sampler.prior.summary(au)
    units = sampler.prior.unit_activity(au).sum(axis=1)
    out["units_per_sample_histogram"] = np.bincount(units).tolist()
    out["share_with_0_to_4_units"] = float((units <= 4).mean())
    sources, counts = np.unique(table.column("au_source").to_pylist(), return_counts=True)
    out["au_source"] = {str(k): int(v) for k, v in zip(sources, counts, strict=True)}
    use = plan.use_aus
    generating = np.clip(plan.aus[use] * cfg.sampler.intensity, 0.0, 1.0)
    out["au_vector_samples"] = int(use.sum())
    out["label_mae"] = float(np.abs(au[use] - generating).mean()) if use.any() else None
    out["nnls_mae"] = float(np.abs(nnls[use] - generating).mean()) if use.any() else None
    truth, pred = generating > ACTIVE, nnls[use] > ACTIVE
    tp, fp, fn = (truth & pred).sum(0), (~truth & pred).sum(0), (truth & ~pred).sum(0)
    out["nnls_f1_micro"] = float(2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1))
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    has = truth.any(axis=0)
    out["nnls_f1_macro"] = float(f1[has].mean()) if has.any() else None
    out["nnls_f1_per_au"] = {manifest["au_names"][i]: float(f1[i]) for i in np.flatnonzero(has)}
    residual = table.column("au_nnls_residual").to_numpy()
    log_prob = table.column("log_prob_ex").to_numpy()
    out["nnls_residual_median"], out["nnls_residual_p99"] = map(float, np.quantile(residual, [0.5, 0.99]))
    out["log_prob_ex_median"], out["log_prob_ex_p1"] = map(float, np.quantile(log_prob, [0.5, 0.01]))
    return out
