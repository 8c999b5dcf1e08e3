"""Cross-age, cross-topology expression transfer (BabyFlow eq. 5-7) and the transfer model source.

Transfer of expression e onto a target (infant) mesh X_s in expression s, from K source (adult) heads:

    D_k = Y_k,e - Y_k,s                  (eq. 5, source topology; Y_k,s is adult k in the same AU
                                          combination s as the infant, so an expressive infant is not
                                          given s twice)
    D_k -> M D_k                         (eq. 6, M: the barycentric correspondence, target x source)
    X_e = X_s + delta * mean_k M D_k     (eq. 7, averaged over the K-member ensemble; paper K = 40)

The deformations are also turned by the rotation of the source-to-target alignment and, by default,
scaled by its size ratio (an adult's jaw drop is smaller on an infant head; this matches the Anny
source's `expression_scaling=head_size`; the paper's eq. 7 has only delta).

Transfer as a model source (`build_transfer_tensor`): the infants are A1's Anny infants (same prior, same
seed stream as `build_anny_tensor`, so the identities are the same), but their expressions come from
adult Anny heads (age ~20-60 y) remeshed to a different topology (quadric decimation with
`fast_simplification`, new vertices resampled barycentrically from the adult surface) and carried over
by M computed between the mean adult and the mean infant (landmark Procrustes + thin-plate warp +
nearest-triangle projection, `synth.sources.correspondence`), exactly as FaceWarehouse plays the
source in the paper. `validate_transfer` compares the result with Anny's own infant expressions.
"""

import importlib.metadata
import logging
from dataclasses import asdict, dataclass, field, replace

import fast_simplification
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from synth.facemodel.tensor import FaceTensor
from synth.labels.expressions import Catalogue, load_catalogue
from synth.labels.landmarks import landmarks, load_anny_head_landmarks
from synth.seeding import Stage, numpy_rng
from synth.sources.anny_source import (
    AnnyPriorConfig,
    AnnySourceConfig,
    ExpressionScaling,
    IdentityParams,
    anny_topology,
    facial_action_bases,
    fill_variants,
    head_tensor,
    neutral_meshes,
    sample_identities,
    selected_expressions,
    source_identities,
    variant_ids,
    years_to_anny_age,
)
from synth.sources.correspondence import (
    Correspondence,
    barycentric_matrix,
    barycentric_projection,
    compute_mapping,
    similarity_procrustes,
)
from synth.sources.transfer_config import SourceTopology, TransferConfig

log = logging.getLogger(__name__)

# Adults are drawn from the identity stream at indices >= ADULT_STREAM (infants use 0.., held-out
# infants HELD_OUT_STREAM..), so the three sets never share a draw.
ADULT_STREAM = 1_000_000
HELD_OUT_STREAM = 500_000


# --- eq. 5-7 --------------------------------------------------------------------------------------------


def deformation_rotation(transform: np.ndarray, scale_deformation: bool) -> np.ndarray:
    """(3, 3) linear map taking source-frame deformation vectors to the target frame: the rotation of
    the (4, 4) similarity `transform`, times its scale when `scale_deformation`."""
    linear = np.asarray(transform)[:3, :3]
    return linear if scale_deformation else linear / np.cbrt(np.linalg.det(linear))


def _scales_deformation(transfer: TransferConfig, prior: AnnyPriorConfig) -> bool:
    if transfer.scale_deformation is not None:
        return transfer.scale_deformation
    return prior.expression_scaling is ExpressionScaling.head_size


def transfer_expression(
    target_s: np.ndarray,
    source_s: np.ndarray,
    source_e: np.ndarray,
    mapping: Correspondence | None,
    delta: float = 1.0,
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Eq. 5-7 with the ensemble average.

    target_s: (..., N, 3) target mesh(es) in expression s. source_s, source_e: (K, ..., M, 3) the K
    source heads in expressions s and e (same leading shape after K as target_s or broadcastable).
    mapping: source-to-target correspondence (None: same topology with known vertex correspondence,
    M = identity). rotation: optional (3, 3) applied to the deformations (see `deformation_rotation`).
    Returns (..., N, 3): target_s + delta * mean_k M (source_e[k] - source_s[k]).
    """
    deform = np.asarray(source_e, dtype=np.float64) - np.asarray(source_s, dtype=np.float64)  # eq. 5
    mean = deform.mean(axis=0)  # M is linear: averaging before mapping equals averaging the meshes
    mapped = mean if mapping is None else mapping.map(mean)  # eq. 6
    if rotation is not None:
        mapped = mapped @ np.asarray(rotation).T
    return np.asarray(target_s, dtype=np.float64) + delta * mapped  # eq. 7


def au_actions(catalogue: Catalogue, aus: np.ndarray) -> np.ndarray:
    """Facial-action weights of AU vectors (..., A) -> (..., 52), clipped to Anny's [0, 1] range."""
    return np.clip(np.asarray(aus) @ catalogue.au_to_actions, 0.0, 1.0)


# --- the adult source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdultSource:
    """K adult heads as a source of expressions, in their own topology.

    neutral: (K, M, 3) float64 aligned neutral meshes (common frame, metres); bases: (K, 52, M, 3)
    float32 facial-action displacement bases (Anny's actions are linear blendshapes, so adult k with
    action weights a is neutral[k] + a @ bases[k]); faces: (F', 3) int64; landmarks: (L, 3) the 23
    landmarks of the mean adult on this topology; topology: its name.
    """

    neutral: np.ndarray
    bases: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray
    topology: str


def sample_adult_identities(
    prior: AnnyPriorConfig, seed: int, n: int, age_years: tuple[float, float]
) -> IdentityParams:
    """n adult identities: the infant prior's shape variation (gender, weight, muscle, ethnicity, local
    face changes) with the age replaced by Uniform(age_years) years."""
    base = sample_identities(prior, seed, n, start=ADULT_STREAM)
    years = np.array(
        [numpy_rng(seed, ADULT_STREAM + i, Stage.BUILD, 1).uniform(*age_years) for i in range(n)]
    )
    phenotypes = base.phenotypes.copy()
    phenotypes[:, list(base.phenotype_labels).index("age")] = years_to_anny_age(years)
    return IdentityParams(
        years * 12.0, phenotypes, base.local_changes, base.phenotype_labels, base.local_change_labels
    )


def remesh(
    vertices: np.ndarray, faces: np.ndarray, reduction: float
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """A different topology for the surface of `vertices` (N, 3) / `faces`: quadric decimation, with each
    new vertex resampled as the closest point of the original surface.

    Returns (new vertices (M, 3), new faces (F', 3) int64, resampling (M, N) CSR: 3 barycentric weights per
    row, so any mesh of the original topology `x` becomes `resampling @ x` in the new one).
    """
    points, new_faces = fast_simplification.simplify(
        np.asarray(vertices, dtype=np.float64), np.asarray(faces), target_reduction=reduction
    )
    fid, weights, _ = barycentric_projection(points, vertices, faces)
    resampling = barycentric_matrix(fid, weights, faces, len(vertices))
    return np.asarray(resampling @ vertices), np.asarray(new_faces, dtype=np.int64), resampling


def build_adult_source(
    config: TransferConfig, prior: AnnyPriorConfig, seed: int, progress: bool = False
) -> AdultSource:
    """The K = config.kappa adult Anny heads in the configured topology (see `AdultSource`)."""
    topo = anny_topology()
    params = sample_adult_identities(prior, seed, config.kappa, config.adult_age_years)
    neutral = np.empty((config.kappa, topo.symmetry.size, 3))
    bases = np.empty((config.kappa, 52, topo.symmetry.size, 3), dtype=np.float32)
    for k in tqdm(range(config.kappa), desc="adult heads", unit="head", disable=not progress):
        n_k, b_k = facial_action_bases(params[k : k + 1])
        neutral[k], bases[k] = n_k[0], b_k[0]
    mean_lmk = landmarks(neutral.mean(axis=0), load_anny_head_landmarks())  # (L, 3)
    source = AdultSource(neutral, bases, topo.faces, mean_lmk, "anny-head")
    return remesh_source(source, config.reduction) if config.topology is SourceTopology.decimated else source


def remesh_source(source: AdultSource, reduction: float) -> AdultSource:
    """The same adults in a new topology: the mean adult decimated (`remesh`), every mesh and basis
    resampled, the landmarks projected onto the new mean surface."""
    mean = source.neutral.mean(axis=0)
    _, new_faces, resampling = remesh(mean, source.faces, reduction)
    neutral = np.stack([resampling @ v for v in source.neutral])  # (K, M, 3)
    bases = np.stack([[resampling @ b for b in bk] for bk in source.bases]).astype(
        np.float32
    )  # (K, 52, M, 3)
    new_mean = neutral.mean(axis=0)
    fid, w, _ = barycentric_projection(source.landmarks, new_mean, new_faces)
    lmk = np.einsum("lk,lkd->ld", w, new_mean[new_faces[fid]])
    log.info("adult source remeshed: %d -> %d vertices", mean.shape[0], new_mean.shape[0])
    return AdultSource(neutral, bases, new_faces, lmk, f"{source.topology}-decimated-{reduction:g}")


def source_mapping(
    source: AdultSource, target_mean: np.ndarray, target_faces: np.ndarray, config: TransferConfig
):
    """M from the mean adult of `source` onto the mean target (infant) mesh (N, 3) of Anny's topology."""
    target_lmk = landmarks(target_mean, load_anny_head_landmarks())
    return compute_mapping(
        source.neutral.mean(axis=0),
        source.faces,
        source.landmarks,
        target_mean,
        target_faces,
        target_lmk,
        warp=config.warp,
        icp_iterations=config.icp_iterations,
    )


def transfer_catalogue(
    infant_neutral: np.ndarray,
    source: AdultSource,
    mapping: Correspondence | None,
    actions: np.ndarray,
    delta: float,
    rotation: np.ndarray | None,
    infant_actions: np.ndarray | None = None,
) -> np.ndarray:
    """Transfer E expressions (action rows (E, 52) at nominal intensity) onto infants.

    infant_neutral: (n, N, 3) infants in expression s (neutral unless `infant_actions`, (52,), gives
    the action weights of their shared expression s: the adults then start from s too).
    Returns (n, E, N, 3) float32.
    """
    start = np.zeros(actions.shape[1]) if infant_actions is None else np.asarray(infant_actions)
    # Anny's blendshapes are linear: Y_e - Y_s = (a_e - a_s) @ bases, averaged over the ensemble.
    deform = np.einsum("ea,kavd->evd", actions - start, source.bases) / source.bases.shape[0]  # (E, M, 3)
    mapped = deform if mapping is None else mapping.map(deform)  # (E, N, 3)
    if rotation is not None:
        mapped = mapped @ rotation.T
    return (infant_neutral[:, None] + delta * mapped[None]).astype(np.float32)


def build_transfer_tensor(
    source_config: AnnySourceConfig, transfer: TransferConfig, seed: int, progress: bool = True
) -> FaceTensor:
    """The BabyFlow tensor with expressions transferred from adults (`TransferConfig`).

    source_config: A1's `AnnySourceConfig` (identities, expressions, delta, variants, prior): the same
    infants as `build_anny_tensor(source_config, seed)`; only their expressions differ.
    """
    catalogue = load_catalogue()
    topo = anny_topology()
    ex = selected_expressions(source_config.expressions, source_config.variants, catalogue)
    params = source_identities(source_config, seed)
    neutral = neutral_meshes(params)  # (n, N, 3)
    adults = build_adult_source(transfer, source_config.prior, seed, progress)
    mapping = source_mapping(adults, neutral.mean(axis=0), topo.faces, transfer)
    rotation = deformation_rotation(mapping.transform, _scales_deformation(transfer, source_config.prior))
    actions = au_actions(catalogue, catalogue.expression_aus[ex])  # (E, 52) nominal intensity
    base = transfer_catalogue(neutral, adults, mapping, actions, source_config.delta, rotation)
    names = [f"anny-{i:04d}" for i in range(len(params))]
    if source_config.variants:
        vertices = np.empty((3 * len(params), *base.shape[1:]), dtype=np.float32)
        vertices[0::3] = base
        fill_variants(vertices, ex, catalogue, topo)
        names = variant_ids(names)
    else:
        vertices = base
    provenance = {
        "kind": "anny+transfer",
        "anny_version": importlib.metadata.version("anny"),
        "seed": int(seed),
        "config": asdict(source_config),
        "transfer": asdict(transfer),
        "source_topology": adults.topology,
        "source_vertices": int(adults.neutral.shape[1]),
        "mapping_scale": mapping.scale,
        "identities": params.summary(),
    }
    return head_tensor(vertices, ex, names, provenance)


# --- validation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferErrors:
    """Per-expression transfer errors against Anny's native infant expressions, in millimetres.

    expression_names: E names; magnitude: (E,) mean native displacement from neutral; methods: name ->
    (E, 2) mean and 95th percentile of the per-vertex error over held-out infants and vertices.
    """

    expression_names: list[str]
    magnitude: np.ndarray
    methods: dict[str, np.ndarray] = field(default_factory=dict)


def validate_transfer(
    transfer: TransferConfig,
    prior: AnnyPriorConfig,
    seed: int,
    n_infants: int,
    delta: float = 1.0,
    expressions=None,
) -> TransferErrors:
    """Transferred vs native infant expressions on held-out infants, for three settings:

    - `same topology, M = I`: adults in Anny's topology, known vertex correspondence (the cross-age part
      of the error alone; rotation and scale from the landmark similarity);
    - `same topology, computed M`: adults in Anny's topology, M from landmarks + projection;
    - `cross topology`: adults remeshed (`transfer.reduction`), M from landmarks + projection.
    """
    catalogue = load_catalogue()
    topo = anny_topology()
    ex = np.arange(len(catalogue.expression_names)) if expressions is None else np.asarray(expressions)
    actions = au_actions(catalogue, catalogue.expression_aus[ex])  # (E, 52)
    infants = sample_identities(prior, seed, n_infants, start=HELD_OUT_STREAM)
    neutral, bases = facial_action_bases(infants)  # (n, N, 3), (n, 52, N, 3)
    native = neutral[:, None] + delta * np.einsum("ea,iavd->ievd", actions, bases)  # (n, E, N, 3)
    magnitude = np.linalg.norm(native - neutral[:, None], axis=-1).mean(axis=(0, 2)) * 1000.0

    same = build_adult_source(replace(transfer, topology=SourceTopology.anny), prior, seed)
    cross = remesh_source(same, transfer.reduction)
    target_mean = neutral.mean(axis=0)
    settings: dict[str, tuple[AdultSource, Correspondence | None]] = {
        "same topology, M = I": (same, None),
        "same topology, computed M": (same, source_mapping(same, target_mean, topo.faces, transfer)),
        f"cross topology ({cross.neutral.shape[1]} vertices)": (
            cross,
            source_mapping(cross, target_mean, topo.faces, transfer),
        ),
    }
    scale = _scales_deformation(transfer, prior)
    target_lmk = landmarks(target_mean, load_anny_head_landmarks())
    methods = {}
    for name, (source, mapping) in settings.items():
        transform = (
            similarity_procrustes(source.landmarks, target_lmk) if mapping is None else mapping.transform
        )
        rotation = deformation_rotation(transform, scale)
        out = transfer_catalogue(neutral, source, mapping, actions, delta, rotation)  # (n, E, N, 3)
        err = np.linalg.norm(out - native, axis=-1) * 1000.0  # (n, E, N) mm
        flat = np.moveaxis(err, 1, 0).reshape(len(ex), -1)  # (E, n*N)
        methods[name] = np.stack([flat.mean(axis=1), np.percentile(flat, 95, axis=1)], axis=1)
        log.info("%s: mean error %.3f mm", name, flat.mean())
    return TransferErrors([catalogue.expression_names[i] for i in ex], magnitude, methods)


def errors_markdown(errors: TransferErrors) -> str:
    """The validation table as Markdown (one row per expression, then the mean over expressions)."""
    names = list(errors.methods)
    head = (
        "| expression | native displacement (mm) | "
        + " | ".join(f"{n}: mean / p95 (mm)" for n in names)
        + " |"
    )
    rule = "|---|---:|" + "---:|" * len(names)
    rows = [head, rule]
    for i, expression in enumerate(errors.expression_names):
        cells = " | ".join(f"{errors.methods[n][i, 0]:.3f} / {errors.methods[n][i, 1]:.3f}" for n in names)
        rows.append(f"| {expression} | {errors.magnitude[i]:.3f} | {cells} |")
    means = " | ".join(
        f"**{errors.methods[n][:, 0].mean():.3f} / {errors.methods[n][:, 1].mean():.3f}**" for n in names
    )
    rows.append(f"| **mean over expressions** | {errors.magnitude.mean():.3f} | {means} |")
    return "\n".join(rows) + "\n"
