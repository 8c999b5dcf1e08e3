"""Experiments on a built face model: reconstruction and neutralisation of held-out infants, fitting from
2D keypoints, and the latent analyses of BabyFlow 4.5 (parallel analysis, Mahalanobis-projected sampling
with and without the flows, nearest-neighbour matching of Fig. 12, diversity / specificity of 3DFaceCAM).

Each experiment is a function returning a JSON-able dict; `synth fit` / `synth analyze` write them.
The model's training meshes are taken as its bilinear reconstructions decode(w_id_i, w_ex_j) of training
identity i in catalogue expression j (the truncated HOSVD keeps >= 99.9 % of each mode's energy by
default), so no experiment needs the source tensor again.
"""

import dataclasses
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from scipy.stats import chi2
from torch import Tensor

from synth.errors import SynthError
from synth.facemodel.model import FaceModel
from synth.facemodel.tensor import FaceTensor
from synth.fitting.baseline import PcaShapeModel, TrainingMeshes, fit_pca, training_meshes
from synth.fitting.fitting import (
    FitOptions,
    LatentFit,
    Prior,
    fit_keypoints,
    fit_meshes,
    fit_model_from_face_model,
    neutral_twin,
)
from synth.fitting.keypoint_encoder import KeypointData, KeypointEncoder, fit_keypoints_lipflow
from synth.fitting.metrics import diversity, error_table, mean_sd, per_vertex_error, specificity

log = logging.getLogger(__name__)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def training_reconstructions(model: FaceModel, ids: Tensor, exs: Tensor) -> Tensor:
    """The bilinear reconstruction of training identity ids[k] in catalogue expression exs[k] -> (K, N, 3)."""
    with torch.no_grad():
        return model.decode(model.identity_coefficients[ids], model.expression_coefficients[exs])


def training_tensor(model: FaceModel) -> FaceTensor:
    """All training identities x catalogue expressions, reconstructed: a FaceTensor (n_id, n_ex, N, 3)."""
    n_id, n_ex = len(model.identity_ids), len(model.expression_names)
    ids = torch.arange(n_id).repeat_interleave(n_ex)
    exs = torch.arange(n_ex).repeat(n_id)
    verts = torch.cat([training_reconstructions(model, ids[s], exs[s]) for s in _batches(len(ids), 256)])
    return FaceTensor(
        vertices=verts.reshape(n_id, n_ex, -1, 3).numpy(),
        faces=model.faces.numpy(),
        expression_names=model.expression_names,
        au_names=model.au_names,
        expression_aus=model.expression_aus.numpy(),
        identity_ids=model.identity_ids,
    )


def subset_expressions(tensor: FaceTensor, k: int, generator: np.random.Generator) -> FaceTensor:
    """The neutral plus k - 1 random other expressions of `tensor` (all when k <= 0 or k >= n_ex)."""
    neutral = tensor.expression_names.index("neutral")
    if k <= 0 or k >= tensor.n_expressions:
        return tensor
    others = [e for e in range(tensor.n_expressions) if e != neutral]
    keep = [neutral, *sorted(generator.choice(others, size=k - 1, replace=False).tolist())]
    return tensor.select_expressions(keep)


# ----------------------------------------------------------------------------------------------------
# 3D reconstruction and neutralisation of held-out infants
# ----------------------------------------------------------------------------------------------------


def _fit_all(fit: Callable[[Tensor], Any], vertices: Tensor, batch_size: int) -> list[Any]:
    out = []
    for s in _batches(vertices.shape[0], batch_size):
        out.append(fit(vertices[s]))
        log.info("fitted %d / %d meshes", s.stop, vertices.shape[0])
    return out


def reconstruction_experiment(
    model: FaceModel,
    held_out: FaceTensor,
    options: FitOptions,
    regions: dict[str, np.ndarray],
    baseline_meshes: TrainingMeshes,
    baseline_variance: float,
    seed: int,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Fit every mesh of held-out identities (n_h, n_ex, N, 3) with the bilinear model under the flow prior
    (BabyFlow), under the Gaussian prior (no flow), and with the PCA baseline; then neutralise.

    Returns per-model error tables (mean +- sd over meshes, overall and per region, mm), and for
    neutralisation: the error of the neutralised expressive meshes against each identity's true neutral,
    the floor (error of fitting the true neutral itself), and identity preservation: the distance between
    z_id fitted to an expressive mesh and z_id fitted to the same infant's neutral, next to the mean
    distance between different held-out infants' neutral z_id.
    """
    n_h, n_ex = held_out.n_identities, held_out.n_expressions
    verts = torch.as_tensor(held_out.vertices, dtype=torch.float32).reshape(n_h * n_ex, -1, 3)
    fm = fit_model_from_face_model(model)
    neutral_idx = held_out.expression_names.index("neutral")
    truth_neutral = torch.as_tensor(held_out.vertices[:, neutral_idx], dtype=torch.float32)  # (n_h, N, 3)
    result: dict[str, Any] = {"held_out_meshes": n_h * n_ex, "held_out_identities": n_h, "models": {}}

    fits: dict[Prior, list] = {}
    for prior in (Prior.flow, Prior.gaussian):
        opts = dataclasses.replace(options, prior=prior)
        fits[prior] = _fit_all(lambda v, o=opts: fit_meshes(fm, v, o), verts, batch_size)
        recon = torch.cat([f.vertices for f in fits[prior]])
        name = "bilinear + flow prior (BabyFlow)" if prior is Prior.flow else "bilinear + Gaussian prior"
        result["models"][name] = error_table(per_vertex_error(recon, verts), regions)

    train = training_tensor(model)
    pca = PcaShapeModel.fit(
        training_meshes(train, baseline_meshes, np.random.default_rng(seed)), baseline_variance
    )
    recon = torch.cat([r for _, r in _fit_all(lambda v: fit_pca(pca, v, options), verts, batch_size)])
    result["models"][f"PCA baseline ({pca.n_components} modes, {baseline_meshes.value} expression)"] = (
        error_table(per_vertex_error(recon, verts), regions)
    )

    # Neutralisation under the flow prior: fit -> neutral expression -> decode, in each input's frame.
    flow_fits = fits[Prior.flow]
    z_id = torch.cat([f.z_id for f in flow_fits]).reshape(n_h, n_ex, -1)
    with torch.no_grad():
        neutral = torch.cat([f.transform.apply(neutral_twin(fm, f.w_id)) for f in flow_fits])
    neutral = neutral.reshape(n_h, n_ex, -1, 3)
    expressive = [e for e in range(n_ex) if e != neutral_idx]
    truth = truth_neutral[:, None].expand(-1, len(expressive), -1, -1).flatten(0, 1)  # (n_h (n_ex-1), N, 3)
    err = per_vertex_error(neutral[:, expressive].flatten(0, 1), truth)
    displacement = per_vertex_error(verts.reshape(n_h, n_ex, -1, 3)[:, expressive].flatten(0, 1), truth)
    floor = per_vertex_error(neutral[:, neutral_idx], truth_neutral)  # fit of the neutral itself
    z_neutral = z_id[:, neutral_idx]  # (n_h, D)
    same = (z_id[:, expressive] - z_neutral[:, None]).norm(dim=-1)  # (n_h, n_ex - 1)
    between = (
        torch.cdist(z_neutral, z_neutral)[~torch.eye(n_h, dtype=torch.bool)] if n_h > 1 else torch.zeros(1)
    )
    result["neutralisation"] = {
        "neutralised_vs_true_neutral_mm": error_table(err, regions),
        "expressive_vs_true_neutral_mm": error_table(displacement, regions),
        "fit_of_true_neutral_mm": error_table(floor, regions),
        "z_id_distance_same_infant": mean_sd(same.flatten()),
        "z_id_distance_between_infants": mean_sd(between),
    }
    return result


# ----------------------------------------------------------------------------------------------------
# Fitting from 2D keypoints
# ----------------------------------------------------------------------------------------------------


def keypoint_experiment(
    model: FaceModel,
    n_samples: int,
    seed: int,
    options: FitOptions,
    batch_size: int = 16,
) -> dict[str, Any]:
    """LiP-Flow's setting on our data: held-out generated samples (fresh `seed`), their 23 landmarks
    projected by the dataset's camera sampler, fitted under (a) the flow prior, (b) a Gaussian prior on w,
    (c) no prior. Reports the 3D per-vertex error (mm) of the recovered meshes and the 2D residual (px).
    """
    from synth.labels.landmarks import landmarks, load_anny_head_landmarks
    from synth.render.camera import sample_cameras
    from synth.render.config import RenderConfig
    from synth.seeding import Stage, numpy_rng

    definition = load_anny_head_landmarks()
    definition.check_topology(model.faces.numpy(), model.n_vertices)
    sample = model.sample(n_samples, seed=seed)
    verts = sample["vertices"]
    centre = landmarks(model.mean_shape.numpy(), definition).mean(0)
    cams = sample_cameras(
        RenderConfig(), [numpy_rng(seed, i, Stage.CAMERA) for i in range(n_samples)], centre
    )

    def lmk(v: Tensor) -> Tensor:
        return landmarks(v, definition)

    kp = cams.project(lmk(verts))[..., :2].float()  # (S, L, 2) pixels
    fm = fit_model_from_face_model(model)
    result: dict[str, Any] = {"samples": n_samples, "landmarks": len(definition.names), "priors": {}}
    for prior in Prior:
        opts = dataclasses.replace(options, prior=prior)
        fits = []
        for s in _batches(n_samples, batch_size):
            sub = type(cams)(cams.K[s], cams.R[s], cams.t[s], cams.width, cams.height)
            fits.append(fit_keypoints(fm, kp[s], sub, lmk, opts))
        recon = torch.cat([f.vertices for f in fits])
        result["priors"][prior.value] = {
            "vertex_error_mm": mean_sd(per_vertex_error(recon, verts).mean(1)),
            "keypoint_rmse_px": mean_sd(torch.cat([f.data_term for f in fits]).sqrt()),
        }
    mean_face = fm.decode(fm.identity.w_init[None], fm.expression.w_init[None]).expand_as(verts)
    result["mean_face_error_mm"] = mean_sd(per_vertex_error(mean_face, verts).mean(1))
    return result


# ----------------------------------------------------------------------------------------------------
# Latent analyses
# ----------------------------------------------------------------------------------------------------


def dataset_keypoint_experiment(
    face_model: FaceModel,
    data: KeypointData,
    encoder: KeypointEncoder | None,
    options: FitOptions,
    batch_size: int = 16,
) -> dict[str, Any]:
    """LiP-Flow's setting on held-out *dataset* samples (meshes, 2D landmarks and cameras as written by
    `synth generate`): fits under the flow / Gaussian / no prior from the mean start and, with an encoder,
    the encoder alone, its start under the flow prior, and LiP-Flow (its start and conditional prior).

    face_model: the `FaceModel` that made `data` (data.mesh required). Same result layout as
    `keypoint_experiment` (`keypoint_markdown` renders it).
    """
    from synth.labels.landmarks import landmarks, load_anny_head_landmarks

    if data.mesh is None:
        raise ValueError(
            "dataset_keypoint_experiment needs the samples' meshes (read_keypoint_data(mesh=True))"
        )
    wrong = sorted(set(data.model_ids) - {face_model.model_id})
    if wrong:
        raise SynthError(f"data: samples were made by face model(s) {wrong}, not {face_model.model_id}")
    definition = load_anny_head_landmarks()
    definition.check_topology(face_model.faces.numpy(), face_model.n_vertices)

    def lmk(v: Tensor) -> Tensor:
        return landmarks(v, definition)

    fm = fit_model_from_face_model(face_model)
    n = len(data)
    rows: dict[str, Any] = {}

    def record(name: str, fits: list[LatentFit], parts: list[KeypointData]) -> None:
        recon = torch.cat([f.vertices for f in fits])
        px = torch.cat(
            [
                p.cameras.project(lmk(f.vertices))[..., :2] - p.lmk2d[..., :2]
                for f, p in zip(fits, parts, strict=True)
            ]
        )
        rows[name] = {
            "vertex_error_mm": mean_sd(per_vertex_error(recon, data.mesh).mean(1)),
            "keypoint_rmse_px": mean_sd(px.square().sum(-1).mean(-1).sqrt()),
        }

    parts = [data.subset(s) for s in _batches(n, batch_size)]
    for prior in Prior:
        opts = dataclasses.replace(options, prior=prior)
        record(
            prior.value,
            [fit_keypoints(fm, p.lmk2d[..., :2].contiguous(), p.cameras, lmk, opts) for p in parts],
            parts,
        )
    if encoder is not None:
        alone = []
        for p in parts:
            mu_id, mu_ex = encoder.predict(p.lmk2d, p.cameras)
            with torch.no_grad():
                w = (fm.identity.to_w(mu_id), fm.expression.to_w(mu_ex))
                alone.append(
                    LatentFit(mu_id, mu_ex, *w, fm.decode(*w), torch.zeros(len(p)), torch.zeros(len(p)))
                )
        record("encoder alone (no fit)", alone, parts)
        for name, conditional in (
            ("encoder start + flow prior", False),
            ("encoder start + conditional flow prior (LiP-Flow)", True),
        ):
            record(
                name,
                [
                    fit_keypoints_lipflow(fm, encoder, p.lmk2d, p.cameras, lmk, options, conditional)
                    for p in parts
                ],
                parts,
            )
    mean_face = fm.decode(fm.identity.w_init[None], fm.expression.w_init[None]).expand_as(data.mesh)
    return {
        "samples": n,
        "landmarks": len(definition.names),
        "priors": rows,
        "mean_face_error_mm": mean_sd(per_vertex_error(mean_face, data.mesh).mean(1)),
    }


def parallel_analysis(
    chunks: Callable[[], Iterator[np.ndarray]],
    draws: int,
    quantile: float,
    generator: np.random.Generator,
) -> dict[str, Any]:
    """Horn's parallel analysis, permutation version (Buja & Eyuboglu 1992), of a data matrix given in
    column chunks: chunks() yields (n_obs, p_c) arrays that together are the (n_obs, p) data.

    The observed eigenvalues of the column-centred Gram matrix are compared with those of `draws`
    matrices whose columns are permuted independently (same marginals, no joint structure); components
    are significant while their eigenvalue exceeds the `quantile` of the null's eigenvalue of the same
    rank. Gram matrices (n_obs x n_obs) are accumulated chunk by chunk, so p can be millions.
    """
    gram = None
    null = None
    for x in chunks():
        x = x - x.mean(0)
        g = x @ x.T
        gram = g if gram is None else gram + g
        perm = [generator.permuted(x, axis=0) for _ in range(draws)]
        ng = np.stack([p @ p.T for p in perm])
        null = ng if null is None else null + ng
    eig = np.linalg.eigvalsh(gram)[::-1]
    null_eig = np.linalg.eigvalsh(null)[:, ::-1]  # (draws, n_obs)
    threshold = np.quantile(null_eig, quantile, axis=0)
    above = eig > threshold
    significant = int(np.argmin(above)) if not above.all() else len(eig)
    return {
        "significant": significant,
        "eigenvalues": eig[: max(significant + 5, 10)].tolist(),
        "null_quantile": threshold[: max(significant + 5, 10)].tolist(),
        "draws": draws,
        "quantile": quantile,
    }


def factor_parallel_analysis(
    model: FaceModel,
    factor: str,
    draws: int,
    quantile: float,
    max_columns: int,
    generator: np.random.Generator,
) -> dict[str, Any]:
    """Parallel analysis of one bilinear mode on the reconstructed training tensor.

    factor "identity": observations = training identities, variables = (expression, vertex coordinate);
    "expression": observations = catalogue expressions, variables = (identity, vertex coordinate).
    Vertices are subsampled with a stride so there are at most `max_columns` variables (cost).
    """
    n_id, n_ex = len(model.identity_ids), len(model.expression_names)
    n_other = n_ex if factor == "identity" else n_id
    stride = max(1, int(np.ceil(n_other * model.n_vertices * 3 / max_columns)))
    keep = torch.arange(0, model.n_vertices, stride)

    def chunks() -> Iterator[np.ndarray]:
        for k in range(n_other):
            if factor == "identity":
                ids, exs = torch.arange(n_id), torch.full((n_id,), k)
            else:
                ids, exs = torch.full((n_ex,), k), torch.arange(n_ex)
            yield training_reconstructions(model, ids, exs)[:, keep].flatten(1).double().numpy()

    out = parallel_analysis(chunks, draws, quantile, generator)
    out["vertex_stride"] = stride
    return out


def critical_beta(rho: float, dof: int) -> float:
    """beta = sqrt(chi2_dof(rho)): the Mahalanobis radius of the rho confidence hyperellipsoid (eq. 24)."""
    return float(np.sqrt(chi2.ppf(rho, dof)))


def gaussian_hyperellipsoid_samples(
    codes: Tensor, dof: int, rho: float, n: int, generator: torch.Generator
) -> Tensor:
    """Fig. 12: n samples of N(mu, Sigma) (empirical mean / covariance of `codes` (n_train, D)) in its
    `dof` leading principal directions, projected onto the rho hyperellipsoid (beta^2 = chi2_dof(rho))."""
    codes = codes.double()
    mean = codes.mean(0)
    cov = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0)[:dof].clamp_min(0), evecs.flip(1)[:, :dof]  # leading dof directions
    eps = torch.randn(n, dof, generator=generator, dtype=torch.float64)
    b = mean + (eps * evals.sqrt()) @ evecs.T  # (n, D)
    # Eq. 24 within the dof-dimensional subspace: the Mahalanobis norm uses the subspace covariance.
    d = ((b - mean) @ evecs) / evals.sqrt().clamp_min(1e-30)  # (n, dof) whitened
    beta = critical_beta(rho, dof)
    return (mean + (b - mean) * (beta / d.norm(dim=-1, keepdim=True))).float()


def _edge_strain(verts: Tensor, faces: Tensor, reference: Tensor) -> Tensor:
    """Mean |edge length / reference edge length - 1| per mesh (B,): a mesh-distortion measure."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # (3F, 2)
    ref = (reference[e[:, 0]] - reference[e[:, 1]]).norm(dim=-1).clamp_min(1e-9)
    length = (verts[:, e[:, 0]] - verts[:, e[:, 1]]).norm(dim=-1)
    return (length / ref - 1).abs().mean(-1)


def sampling_analysis(
    model: FaceModel,
    dof_id: int,
    dof_ex: int,
    rho: float,
    n_samples: int,
    n_pairs: int,
    n_train: int,
    seed: int,
) -> dict[str, Any]:
    """With-NF vs without-NF sampling (BabyFlow 2.6 / Fig. 9, 10, 12) and 3DFaceCAM diversity / specificity.

    For each factor, n samples of the empirical Gaussian of its training codes, projected to the rho
    hyperellipsoid in `dof` dimensions: in z (with-NF, decoded through the flow) and in w (without-NF,
    decoded directly). Identity samples keep the neutral expression, expression samples the mean identity;
    joint samples combine both. Each with-NF sample is matched to the nearest without-NF sample in w
    (Fig. 12) and the mean vertex distance of the pairs is reported. DIV / DIV-ID / DIV-EXP are normalised
    by the training meshes' own values (3DFaceCAM Table 1); SP is in mm against `n_train` training meshes.
    """
    gen = torch.Generator().manual_seed(seed)
    fm = fit_model_from_face_model(model)
    w_id_train, w_ex_train = model.identity_coefficients, model.expression_coefficients
    # One dof per factor for both spaces, so both sample the same chi-square shell.
    dof_id = min(dof_id, model.dim_z_id, model.rank_id)
    dof_ex = min(dof_ex, model.dim_z_ex, model.rank_ex)
    samples: dict[str, dict[str, Tensor]] = {}
    with torch.no_grad():
        z_id_train, z_ex_train = model.flow_id.to_z(w_id_train), model.flow_ex.to_z(w_ex_train)
        zi = gaussian_hyperellipsoid_samples(z_id_train, dof_id, rho, n_samples, gen)
        ze = gaussian_hyperellipsoid_samples(z_ex_train, dof_ex, rho, n_samples, gen)
        wi = gaussian_hyperellipsoid_samples(w_id_train, dof_id, rho, n_samples, gen)
        we = gaussian_hyperellipsoid_samples(w_ex_train, dof_ex, rho, n_samples, gen)
        samples["with_nf"] = {"w_id": model.flow_id.to_w(zi), "w_ex": model.flow_ex.to_w(ze)}
        samples["without_nf"] = {"w_id": wi, "w_ex": we}
    mean_id = fm.identity.w_init[None].expand(n_samples, -1)
    neutral = fm.expression.w_init[None].expand(n_samples, -1)

    train_ids = torch.randint(0, w_id_train.shape[0], (n_train,), generator=gen)
    train_exs = torch.randint(0, w_ex_train.shape[0], (n_train,), generator=gen)
    train = training_reconstructions(model, train_ids, train_exs)
    with torch.no_grad():
        train_id_pairs = model.decode(w_id_train, neutral[:1].expand(w_id_train.shape[0], -1))
        train_ex_pairs = model.decode(mean_id[:1].expand(w_ex_train.shape[0], -1), w_ex_train)
    ref = {
        "div": diversity(train, n_pairs, gen),
        "div_id": diversity(train_id_pairs, n_pairs, gen),
        "div_ex": diversity(train_ex_pairs, n_pairs, gen),
    }
    result: dict[str, Any] = {
        "rho": rho,
        "dof": {"identity": dof_id, "expression": dof_ex},
        "beta": {"identity": critical_beta(rho, dof_id), "expression": critical_beta(rho, dof_ex)},
        "training_diversity_mm": ref,
        "models": {},
    }
    meshes: dict[str, dict[str, Tensor]] = {}
    for name, s in samples.items():
        with torch.no_grad():
            ids = model.decode(s["w_id"], neutral)
            exs = model.decode(mean_id, s["w_ex"])
            joint = model.decode(s["w_id"], s["w_ex"])
        meshes[name] = {"identity": ids, "expression": exs, "joint": joint}
        result["models"][name] = {
            "DIV": diversity(joint, n_pairs, gen) / ref["div"],
            "DIV_ID": diversity(ids, n_pairs, gen) / ref["div_id"],
            "DIV_EXP": diversity(exs, n_pairs, gen) / ref["div_ex"],
            "SP_mm": specificity(joint, train),
            "edge_strain_expression": mean_sd(_edge_strain(exs, model.faces, model.mean_shape)),
            "edge_strain_identity": mean_sd(_edge_strain(ids, model.faces, model.mean_shape)),
        }
    # Fig. 12: nearest without-NF neighbour (in w) of each with-NF sample, and how far apart their meshes are.
    pairs = {}
    for key, factor in (("w_id", "identity"), ("w_ex", "expression")):
        nn_idx = torch.cdist(samples["with_nf"][key], samples["without_nf"][key]).argmin(1)
        a = meshes["with_nf"][factor]
        b = meshes["without_nf"][factor][nn_idx]
        pairs[factor] = {
            "nn_index": nn_idx,
            "mesh_distance_mm": mean_sd(per_vertex_error(a, b).mean(1)),
        }
    result["nearest_neighbour_pairs"] = {
        k: {"mesh_distance_mm": v["mesh_distance_mm"]} for k, v in pairs.items()
    }
    result["_figure"] = {"meshes": meshes, "pairs": {k: v["nn_index"] for k, v in pairs.items()}}
    return result


def pairs_figure(
    model: FaceModel, meshes: dict[str, dict[str, Tensor]], pairs: dict[str, Tensor], k: int
) -> bytes:
    """PNG: k with-NF samples (top) and their nearest without-NF neighbours (bottom), per factor, as
    frontal depth-shaded point renderings (BabyFlow Fig. 9 / 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, k, figsize=(1.8 * k, 8.0), squeeze=False)
    front = model.mean_shape[:, 1] < model.mean_shape[:, 1].median()  # the face side (looks towards -y)
    for block, factor in enumerate(("expression", "identity")):
        for col in range(k):
            for row, (name, idx) in enumerate((("with_nf", col), ("without_nf", int(pairs[factor][col])))):
                v = meshes[name][factor][idx][front].numpy()
                ax = axes[2 * block + row, col]
                ax.scatter(v[:, 0], v[:, 2], c=-v[:, 1], s=0.5, cmap="gray")
                ax.set_aspect("equal")
                ax.axis("off")
                if col == 0:
                    ax.set_title(
                        f"{factor}: {'with NF' if row == 0 else 'without NF (NN)'}", fontsize=7, loc="left"
                    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def gaussianity_table(model: FaceModel) -> dict[str, Any]:
    """KS distances to N(0, I) of the training codes before (whitened w) and after (z) each flow."""
    from synth.build.report import gaussianity

    out = {}
    for name, flow, w in (
        ("identity", model.flow_id, model.identity_coefficients),
        ("expression", model.flow_ex, model.expression_coefficients),
    ):
        with torch.no_grad():
            out[name] = {
                "without_nf": gaussianity(flow.whiten(w).double().numpy()),
                "with_nf": gaussianity(flow.to_z(w).double().numpy()),
            }
    return out


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------


def _pm(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def reconstruction_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of `reconstruction_experiment`: errors per model and region, neutralisation."""
    regions = [k for k in next(iter(result["models"].values())) if k != "all"]
    head = "| model | all | " + " | ".join(regions) + " |\n|---|---|" + "---|" * len(regions) + "\n"
    rows = "".join(
        f"| {name} | {_pm(t['all'])} | " + " | ".join(_pm(t[r]) for r in regions) + " |\n"
        for name, t in result["models"].items()
    )
    n = result["neutralisation"]
    neut_rows = "".join(
        f"| {label} | {_pm(n[key]['all'])} | " + " | ".join(_pm(n[key][r]) for r in regions) + " |\n"
        for label, key in (
            ("neutralised vs true neutral", "neutralised_vs_true_neutral_mm"),
            ("expressive input vs true neutral (nothing done)", "expressive_vs_true_neutral_mm"),
            ("fit of the true neutral (identity floor)", "fit_of_true_neutral_mm"),
        )
    )
    return (
        f"Per-vertex error (mm, mean ± sd over {result['held_out_meshes']} meshes of "
        f"{result['held_out_identities']} held-out infants)\n\n{head}{rows}\n"
        f"Neutralisation (flow prior; mm)\n\n{head.replace('model', 'mesh')}{neut_rows}\n"
        f"Identity preservation: |z_id(expressive) - z_id(neutral)| of the same infant "
        f"{_pm(n['z_id_distance_same_infant'])}; between different infants' neutrals "
        f"{_pm(n['z_id_distance_between_infants'])}\n"
    )


def keypoint_markdown(result: dict[str, Any]) -> str:
    """Markdown table of `keypoint_experiment`."""
    rows = "".join(
        f"| {prior} | {_pm(r['vertex_error_mm'])} | {_pm(r['keypoint_rmse_px'])} |\n"
        for prior, r in result["priors"].items()
    )
    return (
        f"3D error of meshes fitted to {result['landmarks']} projected landmarks "
        f"({result['samples']} held-out samples)\n\n"
        "| prior | 3D vertex error (mm) | 2D keypoint RMSE (px) |\n"
        f"|---|---|---|\n{rows}| (mean face, no fit) | {_pm(result['mean_face_error_mm'])} | |\n"
    )


def analysis_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of `synth analyze`."""
    pa, s, g = result["parallel_analysis"], result["sampling"], result["gaussianity"]
    lines = [
        "| factor | significant dims (parallel analysis) | dof used | beta (rho = "
        f"{s['rho']}) |\n|---|---|---|---|",
        *(
            f"| {f} | {pa[f]['significant']} | {s['dof'][f]} | {s['beta'][f]:.2f} |"
            for f in ("identity", "expression")
        ),
        "",
        "| sampling | DIV | DIV-ID | DIV-EXP | SP (mm) | edge strain, expressions | edge strain, ids |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {m['DIV']:.2f} | {m['DIV_ID']:.2f} | {m['DIV_EXP']:.2f} | {m['SP_mm']:.3f} | "
            f"{_pm(m['edge_strain_expression'])} | {_pm(m['edge_strain_identity'])} |"
            for name, m in s["models"].items()
        ),
        "",
        "| nearest-neighbour pairs (Fig. 12) | mesh distance with-NF vs nearest without-NF (mm) |",
        "|---|---|",
        *(f"| {f} | {_pm(v['mesh_distance_mm'])} |" for f, v in s["nearest_neighbour_pairs"].items()),
        "",
        "| factor | KS mean without NF | KS mean with NF | KS radius chi2 without NF | with NF |",
        "|---|---|---|---|---|",
        *(
            f"| {f} | {v['without_nf']['ks_mean']:.3f} | {v['with_nf']['ks_mean']:.3f} | "
            f"{v['without_nf']['ks_radius_chi2']:.3f} | {v['with_nf']['ks_radius_chi2']:.3f} |"
            for f, v in g.items()
        ),
    ]
    return "\n".join(lines) + "\n"
