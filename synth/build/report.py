"""The model report: what a built model keeps, how well it generalises, and how Gaussian its latents are.

Written as `report.json` + `report_kde.png` into the model directory by `build_model` (or by `synth
model-report DIR`). On identities held out from the build (drawn from the same prior with fresh seeds):
- reconstruction error per vertex (mm) of the truncated bilinear model: each held-out identity's w_id
  fitted by least squares over all its expressions (w_ex = the catalogue rows, as the training rows are
  defined), then (a) decoded with the catalogue w_ex and (b) with w_ex refitted per mesh;
- the flows' NLL on the training coefficients and on the held-out ones;
- Gaussianity before (whitened PCA coordinates u) vs after the flows (z): Kolmogorov-Smirnov statistic
  of every coordinate against N(0, 1), and of the squared radii against chi2(D) (BabyFlow section 2.6);
- a KDE plot of the first components before and after (BabyFlow Fig. 8).
"""

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from synth.atomic import atomic_write_bytes, atomic_write_text
from synth.errors import SynthError
from synth.facemodel import bilinear
from synth.facemodel.flows import LatentFlow
from synth.facemodel.model import FaceModel
from synth.facemodel.tensor import FaceTensor

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
KDE_FILE = "report_kde.png"
_KDE_COMPONENTS = 3


def gaussianity(x: np.ndarray) -> dict[str, float]:
    """How far samples x (n, D) are from N(0, I): KS statistic per coordinate (mean, max) and its share
    of coordinates rejected at 5%, and the KS statistic of the squared radii against chi2(D)."""
    per_dim = [stats.kstest(x[:, j], "norm") for j in range(x.shape[1])]
    radius = stats.kstest(np.square(x).sum(1), "chi2", args=(x.shape[1],))
    return {
        "ks_mean": float(np.mean([r.statistic for r in per_dim])),
        "ks_max": float(np.max([r.statistic for r in per_dim])),
        "rejected_5pct": float(np.mean([r.pvalue < 0.05 for r in per_dim])),
        "ks_radius_chi2": float(radius.statistic),
    }


def _flow_stats(flow: LatentFlow, train: Tensor, held_out: Tensor | None) -> dict[str, Any]:
    with torch.no_grad():
        out: dict[str, Any] = {
            "dim_w": flow.dim_w,
            "dim_z": flow.dim_z,
            "nll_train": float(-flow.log_prob(train).mean()),
            "gaussianity_train": {
                "before_flow": gaussianity(flow.whiten(train).double().numpy()),
                "after_flow": gaussianity(flow.to_z(train).double().numpy()),
            },
        }
        if held_out is not None:
            out["nll_held_out"] = float(-flow.log_prob(held_out).mean())
            out["gaussianity_held_out"] = {
                "before_flow": gaussianity(flow.whiten(held_out).double().numpy()),
                "after_flow": gaussianity(flow.to_z(held_out).double().numpy()),
            }
    return out


def _errors_mm(recon: Tensor, target: Tensor) -> dict[str, float]:
    err = (recon - target).norm(dim=-1).flatten().double().numpy() * 1000.0  # per vertex, mm
    return {
        "mean": float(err.mean()),
        "median": float(np.median(err)),
        "p95": float(np.percentile(err, 95)),
        "max": float(err.max()),
    }


def held_out_coefficients(model: FaceModel, held_out: FaceTensor) -> dict[str, Tensor]:
    """Fit held-out identities: w_id (n, I) over all their expressions with the catalogue w_ex, and w_ex
    refitted per mesh (n, E', E); plus the reconstructions of both fits (n, E', N, 3)."""
    if held_out.n_vertices != model.n_vertices:
        raise SynthError(
            f"held-out meshes have {held_out.n_vertices} vertices, the model {model.n_vertices}: "
            "the topology must be the same"
        )
    try:
        rows = [model.expression_names.index(n) for n in held_out.expression_names]
    except ValueError as err:
        raise SynthError(f"held-out tensor has an expression the model lacks: {err}") from None
    verts = torch.from_numpy(held_out.vertices).float()  # (n, E', N, 3)
    cat = model.expression_coefficients[rows]  # (E', E)
    w_id = torch.cat(
        [
            bilinear.fit_identity(model.core, model.mean, cat[None], v[None])  # (1, I)
            for v in verts
        ]
    )
    n, n_ex = verts.shape[:2]
    w_id_rep = w_id[:, None].expand(-1, n_ex, -1).reshape(n * n_ex, -1)
    flat = verts.reshape(n * n_ex, -1, 3)
    recon_cat = model.decode(w_id_rep, cat[None].expand(n, -1, -1).reshape(n * n_ex, -1))
    w_ex = torch.cat(
        [
            bilinear.fit_expression(model.core, model.mean, a, b)
            for a, b in zip(w_id_rep.split(64), flat.split(64), strict=True)
        ]
    )
    recon_fit = model.decode(w_id_rep, w_ex)
    return {
        "w_id": w_id,
        "w_ex": w_ex.reshape(n, n_ex, -1),
        "recon_catalogue": recon_cat.reshape(verts.shape),
        "recon_refit": recon_fit.reshape(verts.shape),
        "target": verts,
    }


def model_report(model: FaceModel, held_out: FaceTensor | None) -> dict[str, Any]:
    """The report dict (see the module docstring); `held_out` None reports training figures only."""
    report: dict[str, Any] = {
        "model_id": model.model_id,
        "n_vertices": model.n_vertices,
        "n_identities": len(model.identity_ids),
        "n_expressions": len(model.expression_names),
        "hosvd": model.info.get("hosvd"),
    }
    ho_id = ho_ex = None
    if held_out is not None:
        fit = held_out_coefficients(model, held_out)
        ho_id, ho_ex = fit["w_id"], fit["w_ex"].flatten(0, 1)
        report["held_out"] = {
            "identities": held_out.identity_ids,
            "meshes": int(fit["target"].shape[0] * fit["target"].shape[1]),
            "error_mm_catalogue_expressions": _errors_mm(fit["recon_catalogue"], fit["target"]),
            "error_mm_refit_expressions": _errors_mm(fit["recon_refit"], fit["target"]),
        }
    report["flow_id"] = _flow_stats(model.flow_id, model.identity_coefficients, ho_id)
    report["flow_ex"] = _flow_stats(model.flow_ex, model.expression_coefficients, ho_ex)
    report["summary"] = _summary(report)
    return report


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"model_id": report["model_id"], "hosvd": report["hosvd"]}
    if "held_out" in report:
        out["held_out_error_mm_mean"] = report["held_out"]["error_mm_refit_expressions"]["mean"]
    for key in ("flow_id", "flow_ex"):
        r = report[key]
        out[key] = {
            "nll_train": r["nll_train"],
            "nll_held_out": r.get("nll_held_out"),
            "ks_mean_before": r["gaussianity_train"]["before_flow"]["ks_mean"],
            "ks_mean_after": r["gaussianity_train"]["after_flow"]["ks_mean"],
        }
    return out


def kde_figure(model: FaceModel) -> bytes:
    """PNG bytes: KDE of the first training components before (w, whitened) and after (z) each flow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [("identity", model.flow_id, model.identity_coefficients)]
    factors.append(("expression", model.flow_ex, model.expression_coefficients))
    ncols = _KDE_COMPONENTS
    fig, axes = plt.subplots(2, ncols, figsize=(3.2 * ncols, 5.6), squeeze=False)
    grid = np.linspace(-4, 4, 200)
    for row, (name, flow, w) in enumerate(factors):
        with torch.no_grad():
            before = flow.whiten(w).double().numpy()
            after = flow.to_z(w).double().numpy()
        for col in range(ncols):
            ax = axes[row, col]
            if col >= flow.dim_z:
                ax.axis("off")
                continue
            for data, label, color in (
                (before, "w (no flow)", "tab:blue"),
                (after, "z (flow)", "tab:orange"),
            ):
                x = data[:, col]
                if x.size > 2 and x.std() > 0:
                    ax.plot(grid, stats.gaussian_kde(x)(grid), color=color, label=label)
            ax.plot(grid, stats.norm.pdf(grid), "k--", lw=0.8, label="N(0, 1)")
            ax.set_title(f"{name} component {col + 1}")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(model: FaceModel, held_out: FaceTensor | None, directory: str | Path) -> dict[str, Any]:
    """Compute the report and write `report.json` + `report_kde.png` into `directory` atomically."""
    directory = Path(directory)
    report = model_report(model, held_out)
    atomic_write_bytes(directory / KDE_FILE, kde_figure(model))
    atomic_write_text(directory / REPORT_FILE, json.dumps(report, indent=1) + "\n")
    log.info("model report: %s", json.dumps(report["summary"]))
    return report
