"""Anthropometry of infant heads: head circumference, landmark distances, and their published norms.

Pure math over meshes and landmarks (numpy, scipy, trimesh); no model, Anny, Ray or Hydra here. Units:
meshes and landmarks in metres in the common frame (x = subject's left, y = back of the head, z = up; the
face looks towards -y), every measurement in millimetres, ages in months.

Head circumference (occipitofrontal, `head_circumference`): the perimeter of the convex hull of the head's
skin cross-section by the plane that contains glabella g and opisthocranion o and is perpendicular to the
midsagittal plane (it contains the left-right axis x):
- glabella: the most anterior (min y) midline skin vertex between nasion height and 15 mm above it
  (the smooth prominence between the brows; "just above the supraorbital ridges");
- opisthocranion: the midline skin vertex behind the head's centre (y > 0) farthest from glabella (the
  end of maximal head length, "the most prominent part of the occiput"); so the plane is the one of the
  largest glabella-occiput length, where a tape measuring the largest occipitofrontal circumference sits.
The convex hull is what a tape stretched around the head measures (it bridges concavities such as the
temples); in 2D, scipy's `ConvexHull.area` is the perimeter. The section comes from
`trimesh.intersections.mesh_plane` (exact triangle/plane intersection, no sampling), so the measurement is
deterministic and continuous in the vertices. Tested on spheres and ellipsoids against their analytic
perimeters.

Norms (`load_norms`): `synth/labels/data/infant_anthropometry.json`, a copy of the project's reference
file with its citations: WHO head circumference-for-age by sex (0-36 months) and caliper norms of
intercanthal width (en-en), palpebral fissure length (ex-en), mouth width (ch-ch) and nasal height (n-sn)
by year of age (Hall et al. 2007 compilation). Between tabulated ages the mean and SD are interpolated
linearly. Plus eight further distances at 3 years by sex from 3D photographs (Weinberg et al. 2016, the 3D
Facial Norms database; `FACIAL_3D_MEASURES`): outer canthal width, nasal width, philtrum length and width,
nasal protrusion, nasal bridge length, lower lip height, alar length. They are not calibrated against, so
they check the anatomy the calibration did not target (`norm_table_3d`).
"""

import itertools
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import trimesh
from scipy.spatial import ConvexHull

NORMS_FILE = "infant_anthropometry.json"
SEXES = ("female", "male")
# The norm-bearing facial distances: name -> landmark pairs (bilateral ones average both sides).
FACIAL_MEASURES: dict[str, tuple[tuple[str, str], ...]] = {
    "en-en": (("enL", "enR"),),
    "ex-en": (("exL", "enL"), ("exR", "enR")),
    "ch-ch": (("chL", "chR"),),
    "n-sn": (("n", "sn"),),
}
# Distances with 3D norms at 3 years (Weinberg et al. 2016): name -> landmark pairs (bilateral averaged).
FACIAL_3D_MEASURES: dict[str, tuple[tuple[str, str], ...]] = {
    "ex-ex": (("exL", "exR"),),
    "al-al": (("aL", "aR"),),
    "sn-ls": (("sn", "ls"),),
    "sn-prn": (("sn", "prn"),),
    "cph-cph": (("cphL", "cphR"),),
    "n-prn": (("n", "prn"),),
    "li-sl": (("li", "sl"),),
    "ac-prn": (("acL", "prn"), ("acR", "prn")),
}
FACIAL_3D_AGE_MONTHS = 36.0
GLABELLA_BAND_MM = 15.0


# --- norms -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Norms:
    """Published norms, millimetres.

    hc_age_months: (A,) WHO table ages; hc_mean / hc_sd: {"female"|"male": (A,)} head circumference.
    facial: {measure ("en-en", ...): (age_years (K,), mean (K,), sd (K,))}.
    facial_3d: {measure ("ex-ex", ...): {"female"|"male": (mean, sd)}} at `FACIAL_3D_AGE_MONTHS`.
    sources: {"head_circumference": citation, "facial": citation, "facial_3d": citation}.
    """

    hc_age_months: np.ndarray
    hc_mean: dict[str, np.ndarray]
    hc_sd: dict[str, np.ndarray]
    facial: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    facial_3d: dict[str, dict[str, tuple[float, float]]]
    sources: dict[str, str]

    def head_circumference(self, age_months: np.ndarray, sex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WHO (median, SD) in mm at each (age in months, sex "female"/"male"); arrays of the same shape."""
        age = np.asarray(age_months, dtype=np.float64)
        sex = np.asarray(sex)
        self._check_ages(age, self.hc_age_months, "months")
        mean, sd = np.empty_like(age), np.empty_like(age)
        for s in SEXES:
            sel = sex == s
            mean[sel] = np.interp(age[sel], self.hc_age_months, self.hc_mean[s])
            sd[sel] = np.interp(age[sel], self.hc_age_months, self.hc_sd[s])
        unknown = ~np.isin(sex, SEXES)
        if unknown.any():
            raise ValueError(f"sex must be one of {SEXES}, got {sorted(set(sex[unknown].tolist()))}")
        return mean, sd

    def facial_norm(self, measure: str, age_months: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, SD) in mm of a facial measure ("en-en", "ex-en", "ch-ch", "n-sn") at ages in months."""
        years, mean, sd = self.facial[measure]
        age = np.asarray(age_months, dtype=np.float64) / 12.0
        self._check_ages(age, years, "years")
        return np.interp(age, years, mean), np.interp(age, years, sd)

    @staticmethod
    def _check_ages(age: np.ndarray, table: np.ndarray, unit: str) -> None:
        if age.size and (age.min() < table[0] - 1e-9 or age.max() > table[-1] + 1e-9):
            raise ValueError(
                f"age {age.min():.3g}-{age.max():.3g} {unit} outside the norms' {table[0]}-{table[-1]} {unit}"
            )


def norms_from_json(data: dict[str, Any]) -> Norms:
    """Parse the reference file's layout (`head_circumference_who` in cm, `facial_caliper_norms` in mm)."""
    who = data["head_circumference_who"]
    if who["unit"] != "cm" or who["columns"] != [
        "age_months",
        "boys_mean",
        "boys_sd",
        "girls_mean",
        "girls_sd",
    ]:
        raise ValueError(f"norms: unexpected head_circumference_who layout {who['unit']!r} {who['columns']}")
    rows = np.array(who["rows"], dtype=np.float64) * np.array([1, 10, 10, 10, 10])  # cm -> mm
    facial_rows = data["facial_caliper_norms"]["rows"]
    facial = {}
    for measure in FACIAL_MEASURES:
        sel = sorted((r[2], r[3], r[4]) for r in facial_rows if r[1] == measure)
        if not sel:
            raise ValueError(f"norms: no rows for {measure}")
        a = np.array(sel, dtype=np.float64)
        facial[measure] = (a[:, 0], a[:, 1], a[:, 2])
    table_3d = data["facial_3d_norms_age3"]
    facial_3d: dict[str, dict[str, tuple[float, float]]] = {}
    for _, measure, sex, years, mean, sd in table_3d["rows"]:
        if years * 12.0 != FACIAL_3D_AGE_MONTHS or sex not in SEXES or measure not in FACIAL_3D_MEASURES:
            raise ValueError(f"norms: unexpected 3D norm row {measure} {sex} {years}")
        facial_3d.setdefault(measure, {})[sex] = (float(mean), float(sd))
    if set(facial_3d) != set(FACIAL_3D_MEASURES) or any(len(v) != 2 for v in facial_3d.values()):
        raise ValueError(
            f"norms: 3D norms for {sorted(facial_3d)}, need both sexes of {sorted(FACIAL_3D_MEASURES)}"
        )
    return Norms(
        hc_age_months=rows[:, 0],
        hc_mean={"male": rows[:, 1], "female": rows[:, 3]},
        hc_sd={"male": rows[:, 2], "female": rows[:, 4]},
        facial=facial,
        facial_3d=facial_3d,
        sources={
            "head_circumference": who["source"],
            "facial": data["facial_caliper_norms"]["source"],
            "facial_3d": table_3d["source"],
        },
    )


@cache
def load_norms() -> Norms:
    """The norms shipped with the package (see module doc for the sources)."""
    text = resources.files("synth.labels").joinpath("data", NORMS_FILE).read_text()
    return norms_from_json(json.loads(text))


# --- measurements ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadTopology:
    """What the head circumference needs to know about a topology.

    faces: (F, 3) int64 skin triangles only (no eyes, teeth or tongue).
    midline: (M,) int64 skin vertices on the midsagittal plane of the template.
    """

    faces: np.ndarray
    midline: np.ndarray


def head_circumference(
    vertices: np.ndarray, topology: HeadTopology, nasion: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Occipitofrontal head circumference of one mesh (see module doc).

    vertices: (N, 3) metres, common frame; nasion: (3,) metres (the `n` landmark).
    Returns (circumference in mm, glabella (3,), opisthocranion (3,)) in metres.
    """
    mid = vertices[topology.midline]  # (M, 3)
    band = (mid[:, 2] >= nasion[2]) & (mid[:, 2] <= nasion[2] + GLABELLA_BAND_MM / 1000.0) & (mid[:, 1] < 0)
    if not band.any():
        raise ValueError(
            "head_circumference: no midline vertex above nasion (is the mesh in the common frame?)"
        )
    glabella = mid[band][np.argmin(mid[band, 1])]
    back = mid[mid[:, 1] > 0]
    opisthocranion = back[np.argmax(np.linalg.norm(back - glabella, axis=1))]
    return plane_perimeter(vertices, topology.faces, glabella, opisthocranion), glabella, opisthocranion


def plane_perimeter(vertices: np.ndarray, faces: np.ndarray, front: np.ndarray, back: np.ndarray) -> float:
    """Convex-hull perimeter (mm) of the section of a mesh (vertices (N, 3) metres, faces (F, 3)) by the
    plane through `front` and `back` (3,) that contains the x axis."""
    axis = np.array([1.0, 0.0, 0.0])
    along = back - front
    along = along - axis * (along @ axis)
    along /= np.linalg.norm(along)
    normal = np.cross(axis, along)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    segments = trimesh.intersections.mesh_plane(mesh, plane_normal=normal, plane_origin=front)  # (S, 2, 3)
    if len(segments) < 3:
        raise ValueError("head_circumference: the plane misses the mesh")
    points = segments.reshape(-1, 3) - front
    flat = np.stack([points @ axis, points @ along], axis=1)  # (2S, 2) in-plane coordinates
    return float(ConvexHull(flat).area * 1000.0)  # a 2D hull's "area" is its perimeter


def pair_names(names: tuple[str, ...]) -> list[str]:
    """Names "a-b" of every landmark pair, in `itertools.combinations` order."""
    return [f"{a}-{b}" for a, b in itertools.combinations(names, 2)]


def pair_distances(points: np.ndarray) -> np.ndarray:
    """Every pairwise distance: points (n, L, 3) metres -> (n, L (L - 1) / 2) mm, combinations order."""
    i, j = np.triu_indices(points.shape[1], k=1)
    return np.linalg.norm(points[:, i] - points[:, j], axis=-1) * 1000.0


def facial_measures(points: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The norm-bearing distances (FACIAL_MEASURES) of landmarks (n, L, 3) metres -> {name: (n,) mm}."""
    out = {}
    for measure, pairs in FACIAL_MEASURES.items():
        d = [np.linalg.norm(points[:, names.index(a)] - points[:, names.index(b)], axis=-1) for a, b in pairs]
        out[measure] = np.mean(d, axis=0) * 1000.0
    return out


@dataclass(frozen=True)
class Population:
    """Measured identities: age_months (n,), sex (n,) "female"/"male", head_circumference (n,) mm,
    facial {measure: (n,) mm}, pairs (n, P) mm with pair_labels (P,)."""

    age_months: np.ndarray
    sex: np.ndarray
    head_circumference: np.ndarray
    facial: dict[str, np.ndarray]
    pairs: np.ndarray
    pair_labels: list[str]


def measure_population(
    vertices: np.ndarray,
    points: np.ndarray,
    names: tuple[str, ...],
    topology: HeadTopology,
    age_months: np.ndarray,
    sex: np.ndarray,
) -> Population:
    """Measure n neutral heads: vertices (n, N, 3) and their landmarks points (n, L, 3), metres."""
    n_index = names.index("n")
    hc = np.array(
        [head_circumference(v, topology, p[n_index])[0] for v, p in zip(vertices, points, strict=True)]
    )
    return Population(
        age_months=np.asarray(age_months, dtype=np.float64),
        sex=np.asarray(sex),
        head_circumference=hc,
        facial=facial_measures(points, names),
        pairs=pair_distances(points),
        pair_labels=pair_names(names),
    )


def concat_populations(pops: list[Population]) -> Population:
    """One population of several (same pair labels)."""
    return Population(
        age_months=np.concatenate([p.age_months for p in pops]),
        sex=np.concatenate([p.sex for p in pops]),
        head_circumference=np.concatenate([p.head_circumference for p in pops]),
        facial={k: np.concatenate([p.facial[k] for p in pops]) for k in pops[0].facial},
        pairs=np.concatenate([p.pairs for p in pops]),
        pair_labels=pops[0].pair_labels,
    )


def distribution_rows(pops: dict[str, Population]) -> list[dict[str, Any]]:
    """Mean and SD (mm) of head circumference and the facial measures of each population (no norms: for
    populations without ages, such as unconditioned model samples); the first population is the reference
    and each row gives the difference of means in its SDs."""
    reference = next(iter(pops.values()))
    rows = []
    for measure in ("head circumference", *FACIAL_MEASURES):
        ref = reference.head_circumference if measure == "head circumference" else reference.facial[measure]
        for label, pop in pops.items():
            values = pop.head_circumference if measure == "head circumference" else pop.facial[measure]
            rows.append({
                "population": label,
                "measure": measure,
                "n": int(values.size),
                "mean_mm": float(values.mean()),
                "sd_mm": float(values.std(ddof=1)),
                "difference_in_reference_sd": float((values.mean() - ref.mean()) / ref.std(ddof=1)),
                "sd_ratio_to_reference": float(values.std(ddof=1) / ref.std(ddof=1)),
            })  # fmt: skip
    return rows


def _markdown(columns: tuple[tuple[str, str, str], ...], rows: list[dict[str, Any]]) -> str:
    """A Markdown table of rows: columns (title, row key, format spec)."""
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(format(r[key], spec) for _, key, spec in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def distribution_markdown(rows: list[dict[str, Any]]) -> str:
    """The population-against-reference table (`distribution_rows`) as Markdown."""
    return _markdown(
        (("population", "population", ""), ("measure", "measure", ""), ("n", "n", ""),
         ("mean mm", "mean_mm", ".1f"), ("SD mm", "sd_mm", ".1f"),
         ("mean - reference (ref. SDs)", "difference_in_reference_sd", "+.2f"),
         ("SD / reference SD", "sd_ratio_to_reference", ".2f")),
        rows,
    )  # fmt: skip


def _row(group: str, measure: str, values: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> dict[str, Any]:
    """One table row: values (n,) mm against per-identity norm mean / sd (n,)."""
    z = (values - mean) / sd
    return {
        "group": group,
        "measure": measure,
        "n": int(values.size),
        "mean_mm": float(values.mean()),
        "sd_mm": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
        "norm_mean_mm": float(mean.mean()),
        "norm_sd_mm": float(sd.mean()),
        "z_of_mean": float(z.mean()),
        "sd_ratio": float(z.std(ddof=1)) if values.size > 1 else float("nan"),
    }


def norm_table(pop: Population, norms: Norms, groups: np.ndarray) -> list[dict[str, Any]]:
    """Rows (mean, SD, norm, z of the mean, SD ratio) per group label (n,) str and measure.

    Each identity is compared with the norm at its own age (and sex for head circumference): z of the mean
    is the mean of the identities' z-scores, the SD ratio the SD of their z-scores (1 = the norm's
    spread). Facial norms are sexes combined; ages past the facial tables (3 years) get no facial row.
    """
    rows = []
    for group in dict.fromkeys(groups.tolist()):
        sel = groups == group
        mean, sd = norms.head_circumference(pop.age_months[sel], pop.sex[sel])
        rows.append(_row(group, "head circumference", pop.head_circumference[sel], mean, sd))
        for measure, values in pop.facial.items():
            years = norms.facial[measure][0]
            if pop.age_months[sel].max() / 12.0 > years[-1] + 1e-9:
                continue
            mean, sd = norms.facial_norm(measure, pop.age_months[sel])
            rows.append(_row(group, measure, values[sel], mean, sd))
    return rows


def facial_3d_values(pop: Population) -> dict[str, np.ndarray]:
    """The `FACIAL_3D_MEASURES` distances of a population: {measure: (n,) mm} (bilateral ones averaged)."""
    column = {label: k for k, label in enumerate(pop.pair_labels)}

    def distance(a: str, b: str) -> np.ndarray:
        return pop.pairs[:, column[f"{a}-{b}"] if f"{a}-{b}" in column else column[f"{b}-{a}"]]

    return {m: np.mean([distance(a, b) for a, b in pairs], axis=0) for m, pairs in FACIAL_3D_MEASURES.items()}


def facial_3d_norm(norms: Norms, measure: str, sex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, SD) (n,) mm of a 3D-norm measure for each identity's sex, at `FACIAL_3D_AGE_MONTHS`."""
    stats = np.array([norms.facial_3d[measure][s] for s in np.asarray(sex).tolist()]).reshape(-1, 2)
    return stats[:, 0], stats[:, 1]


def norm_table_3d(pop: Population, norms: Norms, groups: np.ndarray) -> list[dict[str, Any]]:
    """Rows as `norm_table` for the 3D-norm distances (`FACIAL_3D_MEASURES`, each identity against its
    sex's norm), for the groups whose identities are all `FACIAL_3D_AGE_MONTHS` old (the norms' one age)."""
    values = facial_3d_values(pop)
    rows = []
    for group in dict.fromkeys(groups.tolist()):
        sel = groups == group
        if np.any(np.abs(pop.age_months[sel] - FACIAL_3D_AGE_MONTHS) > 1e-6):
            continue
        for measure in FACIAL_3D_MEASURES:
            mean, sd = facial_3d_norm(norms, measure, pop.sex[sel])
            rows.append(_row(group, measure, values[measure][sel], mean, sd))
    return rows


def pair_table(pop: Population, groups: np.ndarray) -> list[dict[str, Any]]:
    """Mean and SD (mm) of every landmark-pair distance per group (no published norm for most of them)."""
    rows = []
    for group in dict.fromkeys(groups.tolist()):
        sel = groups == group
        values = pop.pairs[sel]
        sd = values.std(axis=0, ddof=1) if sel.sum() > 1 else np.full(values.shape[1], np.nan)
        for label, m, s in zip(pop.pair_labels, values.mean(axis=0), sd, strict=True):
            rows.append({"group": group, "pair": label, "mean_mm": float(m), "sd_mm": float(s)})
    return rows


def pair_markdown(rows: list[dict[str, Any]]) -> str:
    """The landmark-distance table (`pair_table`) as Markdown."""
    columns = (
        ("group", "group", ""),
        ("pair", "pair", ""),
        ("mean mm", "mean_mm", ".1f"),
        ("SD mm", "sd_mm", ".1f"),
    )
    return _markdown(columns, rows)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The norm table (`norm_table`, `norm_table_3d`) as Markdown."""
    return _markdown(
        (("group", "group", ""), ("measure", "measure", ""), ("n", "n", ""), ("mean mm", "mean_mm", ".1f"),
         ("SD mm", "sd_mm", ".1f"), ("norm mean", "norm_mean_mm", ".1f"), ("norm SD", "norm_sd_mm", ".2f"),
         ("z of mean", "z_of_mean", "+.2f"), ("SD ratio", "sd_ratio", ".2f")),
        rows,
    )  # fmt: skip


def hc_figure(pops: dict[str, Population], norms: Norms) -> bytes:
    """PNG: head circumference against age, one panel per sex, over the WHO median and +-2 SD band;
    pops: {label: Population} (e.g. "source", "model samples")."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    markers = itertools.cycle(("o", "x", "^", "s"))
    for ax, sex in zip(axes, SEXES, strict=True):
        age = norms.hc_age_months
        median, sd = norms.hc_mean[sex], norms.hc_sd[sex]
        ax.fill_between(age, median - 2 * sd, median + 2 * sd, color="0.85", label="WHO +-2 SD")
        ax.plot(age, median, "k-", label="WHO median")
        for (label, pop), marker in zip(pops.items(), markers, strict=False):
            sel = pop.sex == sex
            ax.plot(pop.age_months[sel], pop.head_circumference[sel], marker, ms=4, ls="none", label=label)
        ax.set_title(sex)
        ax.set_xlabel("age (months)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("head circumference (mm)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
