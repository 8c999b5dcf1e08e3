"""Fit the anthropometric calibration of the Anny infant prior (`synth.sources.anny_calibration`).

`python -m synth.sources.anny_calibration_fit [--n N] [--seed S] [--out FILE]` rewrites the shipped
`synth/sources/data/anny_calibration.json` (defaults reproduce it byte for byte on one machine).

Method, per anchor age a (months) and sex:
1. Draw n identities from the uncalibrated prior with their age pinned to a and their sex to `sex` (gender
   uniform in that half of Anny's gender axis), other individuals at each anchor, plus one standard
   normal per control for the spread.
2. Targets in norm units: WHO head circumference median and SD for (a, sex); en-en, ex-en, ch-ch and n-sn
   caliper norms at a / 12 years (sexes combined), interpolated between tabulated years.
3. Gauss-Newton on the control offsets o (C,): measure the population's mean z-scores r (5,) and their
   Jacobian J (5, C) by forward differences on the same identities; step = bounded ridge least squares
   argmin |J d + r|^2 + ridge |o + d|^2 with |o + d| <= OFFSET_BOUND (room for the spread inside Anny's
   [-1, 1]) by `scipy.optimize.lsq_linear`.
4. Narrower regions: the eye and mouth targets of the prior spread ex-en, en-en and ch-ch wider than the
   norms. A region's share of a measure's z-score variance scales with the square of its spread factor f;
   measuring the variance with the region's prior draw switched off (f = 0) gives that share, and f is the
   largest value in [MIN_SPREAD, 1] that keeps each of the region's measures at or under the norm's
   variance.
5. Wider measures: the z-score variance of measure k is its spread under the prior v_k plus
   sum_c J_kc^2 s_c^2 from the extra control noise s (C,); s^2 >= 0 solves sum_c J_kc^2 s_c^2 = 1 - v_k
   (target: the norm's SD) by non-negative least squares (`scipy.optimize.nnls`), measures already wider
   than the norm asking for nothing.
Steps 3-5 alternate for ITERATIONS rounds (the Jacobian is measured at rounds JACOBIAN_AT only); anchors
are independent. The fit treats the uncalibrated prior's local changes (clipped to [-1, 1]) as its draws;
the prior's std <= 0.5 makes the clip rare.
6. Anatomy (`fit_anatomy`): at 36 months, per sex, the offsets of the ANATOMY_CONTROLS (nose width,
   depth, height and septum angle, philtrum width, lower lip height, mouth height: the Anny local changes
   that move those distances most independently, measured) and of the size controls are fitted together,
   with the noise and spreads of steps 1-5 in place, against the eight 3D norms at 3 years (outer canthal
   width, nasal width, philtrum length and width, nasal protrusion, nasal bridge, lower lip height, alar
   length) and the five norms above, weighted NORM_WEIGHT times (where the two disagree, the five stay
   at their norms): Gauss-Newton as in 3, on other individuals.
7. There are no published norms of those eight before 3 years, so the anatomy offsets of 36 months apply
   at every age (Anny's infant nose and mouth are taken to be off by the same amount, in its own units, at
   every age), and the size offsets of the other anchors are refitted with them in place (as in 3).
`--anatomy-only` runs steps 6-7 on the shipped file's steps 1-5.
"""

import argparse
import importlib.metadata
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear, nnls

from synth.atomic import atomic_write_text
from synth.labels.anthropometry import (
    FACIAL_3D_AGE_MONTHS,
    FACIAL_3D_MEASURES,
    FACIAL_MEASURES,
    Norms,
    Population,
    facial_3d_norm,
    facial_3d_values,
    load_norms,
)
from synth.sources.anny_anthropometry import measure_identities
from synth.sources.anny_calibration import (
    ANATOMY_CONTROLS,
    CALIBRATION_FILE,
    CONTROLS,
    FORMAT_VERSION,
    REGIONS,
    SEXES,
    control_matrix,
    region_matrix,
)
from synth.sources.anny_source import AnnyPriorConfig, IdentityParams, sample_identities

log = logging.getLogger(__name__)

ANCHORS_MONTHS = (0.0, 3.0, 6.0, 12.0, 24.0, 36.0)
MEASURES = ("head circumference", *FACIAL_MEASURES)
OFFSET_BOUND = 0.8
RIDGE = 0.02
ITERATIONS = 4
JACOBIAN_AT = (0,)
MIN_SPREAD = 0.3
REGION_MEASURES = {"eye": ("en-en", "ex-en"), "mouth": ("ch-ch",)}
STEP = 0.1  # forward-difference step of the Jacobian, Anny local-change units
COMMAND = "python -m synth.sources.anny_calibration_fit"
SIZE_CONTROLS = tuple(c for c in CONTROLS if c not in ANATOMY_CONTROLS)  # steps 1-5 (CONTROLS order: first)
ANATOMY_ITERATIONS = 3
NORM_WEIGHT = 3.0  # weight of the five size norms against the eight 3D norms in step 6


def z_scores(pop: Population, norms: Norms) -> np.ndarray:
    """(n, 5) z-scores of each identity's MEASURES against the norms at its age (and sex for the head)."""
    mean, sd = norms.head_circumference(pop.age_months, pop.sex)
    cols = [(pop.head_circumference - mean) / sd]
    for measure in FACIAL_MEASURES:
        mean, sd = norms.facial_norm(measure, pop.age_months)
        cols.append((pop.facial[measure] - mean) / sd)
    return np.stack(cols, axis=1)


def z_scores_3d(pop: Population, norms: Norms) -> np.ndarray:
    """(n, 8) z-scores of each identity's FACIAL_3D_MEASURES against the 3-year 3D norms of its sex."""
    values = facial_3d_values(pop)
    cols = []
    for measure in FACIAL_3D_MEASURES:
        mean, sd = facial_3d_norm(norms, measure, pop.sex)
        cols.append((values[measure] - mean) / sd)
    return np.stack(cols, axis=1)


def _with_controls(
    params: IdentityParams, base: np.ndarray, controls: np.ndarray, spread: np.ndarray
) -> IdentityParams:
    """params with local changes base (n, L) * region spread + controls (n, C) @ D, clipped to [-1, 1]."""
    labels = params.local_change_labels
    regions = region_matrix(labels)
    factor = np.where(regions.any(axis=0), spread @ regions, 1.0)
    return replace(
        params, local_changes=np.clip(base * factor + controls @ control_matrix(labels), -1.0, 1.0)
    )


def fit_anchor(
    age_months: float, sex: str, n: int, seed: int, norms: Norms, start: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Offsets (C,), noise std (C,) and region spreads (G,) at one anchor, and the fit's z-score summary."""
    prior = AnnyPriorConfig(calibration=None)
    params = sample_identities(prior, seed, n, start=start, age_months=age_months, sex=sex)
    base = params.local_changes
    z_noise = np.random.default_rng([seed, int(age_months * 10), SEXES.index(sex)]).standard_normal(
        (n, len(SIZE_CONTROLS))
    )
    offset = np.zeros(len(SIZE_CONTROLS))
    std = np.zeros(len(SIZE_CONTROLS))
    spread = np.ones(len(REGIONS))
    no_anatomy = np.zeros((n, len(ANATOMY_CONTROLS)))

    def scores(o: np.ndarray, s: np.ndarray, f: np.ndarray | None = None) -> np.ndarray:
        f = spread if f is None else f
        controls = np.hstack([o + s * z_noise, no_anatomy])
        return z_scores(measure_identities(_with_controls(params, base, controls, f)), norms)

    jac = np.zeros((len(MEASURES), len(SIZE_CONTROLS)))
    for iteration in range(ITERATIONS):
        z = scores(offset, std)  # (n, 5)
        for g, region in enumerate(REGIONS):
            cols = [MEASURES.index(m) for m in REGION_MEASURES[region]]
            off = spread.copy()
            off[g] = 0.0
            v_without = scores(offset, std, off)[:, cols].var(axis=0, ddof=1)
            share = (z[:, cols].var(axis=0, ddof=1) - v_without) / max(spread[g], MIN_SPREAD) ** 2
            room = np.where(share > 1e-9, (1.0 - v_without) / np.maximum(share, 1e-9), np.inf)
            spread[g] = float(np.clip(np.sqrt(np.clip(room.min(), 0.0, None)), MIN_SPREAD, 1.0))
        z = scores(offset, std)
        r = z.mean(axis=0)
        log.debug(
            "offset %s std %s spread %s r %s sd %s",
            offset.round(2), std.round(2), spread.round(2), r.round(2), z.std(0).round(2),
        )  # fmt: skip
        if iteration in JACOBIAN_AT:  # the problem is nearly linear: a Jacobian at a few iterations is enough
            jac = np.stack(
                [
                    (scores(offset + STEP * e, std).mean(axis=0) - r) / STEP
                    for e in np.eye(len(SIZE_CONTROLS))
                ],
                axis=1,
            )  # (5, C)
        offset = offset + _ridge_step(jac, r, offset)
        prior_var = np.maximum(z.var(axis=0, ddof=1) - (jac**2) @ std**2, 0.0)
        std = np.sqrt(nnls(jac**2, np.maximum(1.0 - prior_var, 0.0))[0])
    summary = _summary(scores(offset, std), MEASURES)  # with the final spread, offsets and noise
    log.info("anchor %4.1f months %-6s %s", age_months, sex, summary)
    return offset, std, spread, summary


def _ridge_step(jac: np.ndarray, r: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The bounded ridge Gauss-Newton step d of offsets (C,) from mean z-scores r (M,) and their Jacobian
    (M, C): argmin |J d + r|^2 + RIDGE |offset + d|^2 with |offset + d| <= OFFSET_BOUND."""
    a = np.vstack([jac, np.sqrt(RIDGE) * np.eye(len(offset))])
    b = np.concatenate([-r, -np.sqrt(RIDGE) * offset])
    return lsq_linear(a, b, bounds=(-OFFSET_BOUND - offset, OFFSET_BOUND - offset)).x


def _summary(z: np.ndarray, names) -> dict[str, dict[str, float]]:
    """Mean and SD of z-scores z (n, M) per measure name: the fit's record of where it ended."""
    return {
        m: {"z_of_mean": round(float(z[:, k].mean()), 3), "sd_ratio": round(float(z[:, k].std(ddof=1)), 3)}
        for k, m in enumerate(names)
    }


def fit_calibration(n: int, seed: int) -> dict[str, Any]:
    """The calibration record (the JSON written to the package) fitted on n identities per anchor and sex."""
    norms = load_norms()
    offset = {s: [] for s in SEXES}
    noise = {s: [] for s in SEXES}
    spread = {s: [] for s in SEXES}
    fit = {s: [] for s in SEXES}
    for k, sex in enumerate(SEXES):
        for a, age in enumerate(ANCHORS_MONTHS):
            # other individuals at every anchor: their idiosyncrasies do not bias every age the same way
            start = (k * len(ANCHORS_MONTHS) + a) * n
            o, s, f, summary = fit_anchor(age, sex, n, seed, norms, start)
            offset[sex].append(np.round(o, 4).tolist())
            noise[sex].append(np.round(s, 4).tolist())
            spread[sex].append(np.round(f, 4).tolist())
            fit[sex].append(summary)
    record = {
        "format_version": FORMAT_VERSION,
        "name": "infant_v2",
        "about": (
            "Anthropometric calibration of the Anny infant prior: per anchor age and sex, offsets and extra "
            "standard deviations (Anny local-change units) of the controls, linear in age between anchors. "
            "See synth/sources/anny_calibration.py and docs/anthropometry.md."
        ),
        "command": f"{COMMAND} --n {n} --seed {seed}",
        "anny_version": importlib.metadata.version("anny"),
        "norms": load_norms().sources,
        "n_per_anchor": n,
        "seed": seed,
        "anchors_months": list(ANCHORS_MONTHS),
        "controls": list(CONTROLS),
        "control_local_changes": {k: list(v) for k, v in CONTROLS.items()},
        "regions": {k: list(v) for k, v in REGIONS.items()},
        "offset": offset,
        "noise_std": noise,
        "spread": spread,
        "fit": {"measures": list(MEASURES), **fit},
    }
    return fit_anatomy(record, n, seed)


def fit_anatomy(record: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """Steps 6-7: the record of steps 1-5 (SIZE_CONTROLS) with the ANATOMY_CONTROLS fitted at 36 months
    (jointly with the size offsets there) and the size offsets of the other anchors refitted with them.
    The steps 1-5 offsets and noise are kept as `size_fit`, so `--anatomy-only` can redo 6-7 alone."""
    norms = load_norms()
    size = len(SIZE_CONTROLS)
    record = json.loads(json.dumps(record))
    record["size_fit"] = json.loads(json.dumps({key: record[key] for key in ("offset", "noise_std")}))
    anchors = list(record["anchors_months"])
    at = anchors.index(FACIAL_3D_AGE_MONTHS)
    anatomy_fit = {}
    for k, sex in enumerate(SEXES):
        offsets, fits = {}, {}
        # 36 months first: it fixes the anatomy offsets the other anchors then keep
        for a in [at, *(i for i in range(len(anchors)) if i != at)]:
            start = ((len(SEXES) + k) * len(anchors) + a) * n  # other individuals than steps 1-5
            params = sample_identities(
                AnnyPriorConfig(calibration=None), seed, n, start=start, age_months=anchors[a], sex=sex
            )
            noise = np.random.default_rng([seed, 1000 + k, a]).standard_normal((n, size))
            sized = np.asarray(record["noise_std"][sex][a][:size]) * noise
            anatomy = None if a == at else offsets[at][size:]
            offsets[a], fits[a] = _refit(params, np.asarray(record["offset"][sex][a][:size]), sized, anatomy,
                                         np.asarray(record["spread"][sex][a]), norms)  # fmt: skip
            log.info("anatomy %s %g months: offsets %s %s", sex, anchors[a], offsets[a].round(3), fits[a])
        record["offset"][sex] = [np.round(offsets[a], 4).tolist() for a in range(len(anchors))]
        record["noise_std"][sex] = [
            row[:size] + [0.0] * len(ANATOMY_CONTROLS) for row in record["noise_std"][sex]
        ]
        anatomy_fit[sex] = [fits[a] for a in range(len(anchors))]
    record["norms"] = norms.sources
    record["controls"] = list(CONTROLS)
    record["control_local_changes"] = {k: list(v) for k, v in CONTROLS.items()}
    record["anatomy"] = {
        "controls": list(ANATOMY_CONTROLS),
        "norms": norms.sources["facial_3d"],
        **anatomy_fit,
    }
    return record


def size_fit(record: dict[str, Any]) -> dict[str, Any]:
    """The steps 1-5 record inside a calibration record (its `size_fit`, or the record itself when it has
    none: a file written before the anatomy steps)."""
    record = json.loads(json.dumps(record))
    for key, value in record.pop("size_fit", {}).items():
        record[key] = value
    record.pop("anatomy", None)
    record["controls"] = list(SIZE_CONTROLS)
    record["control_local_changes"] = {k: list(CONTROLS[k]) for k in SIZE_CONTROLS}
    return record


def _refit(
    params: IdentityParams,
    size_offset: np.ndarray,
    size_noise: np.ndarray,
    anatomy: np.ndarray | None,
    spread: np.ndarray,
    norms: Norms,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Offsets (C,) of every control for identities `params` with size-control noise `size_noise` (n, S):
    anatomy None: all offsets free, against the 5 norms and the 8 3D norms (36 months); else the anatomy
    offsets fixed and the size offsets refitted against the 5 norms."""
    n, size = len(params), len(SIZE_CONTROLS)
    with_3d = anatomy is None
    offset = np.concatenate([size_offset, np.zeros(len(ANATOMY_CONTROLS)) if with_3d else anatomy])
    free = np.arange(len(offset)) if with_3d else np.arange(size)

    def scores(o: np.ndarray) -> np.ndarray:
        controls = o + np.hstack([size_noise, np.zeros((n, len(ANATOMY_CONTROLS)))])
        pop = measure_identities(_with_controls(params, params.local_changes, controls, spread))
        z = z_scores(pop, norms)
        return np.hstack([z, z_scores_3d(pop, norms)]) if with_3d else z

    weight = np.ones(len(MEASURES) + (len(FACIAL_3D_MEASURES) if with_3d else 0))
    weight[: len(MEASURES)] = NORM_WEIGHT if with_3d else 1.0
    jac = None
    for _ in range(ANATOMY_ITERATIONS):
        r = scores(offset).mean(axis=0) * weight
        if jac is None:  # nearly linear: one Jacobian
            eye = np.eye(len(offset))[free]
            jac = np.stack([(scores(offset + STEP * e).mean(axis=0) * weight - r) / STEP for e in eye], 1)
        offset[free] = offset[free] + _ridge_step(jac, r, offset[free])
    z = scores(offset)
    return offset, _summary(z, [*MEASURES, *FACIAL_3D_MEASURES][: z.shape[1]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="identities per anchor age and sex")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / CALIBRATION_FILE))
    parser.add_argument("--anatomy-only", action="store_true", help="step 6 on the shipped steps 1-5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.anatomy_only:
        shipped = json.loads((Path(__file__).parent / "data" / CALIBRATION_FILE).read_text())
        record = fit_anatomy({**size_fit(shipped), "name": "infant_v2"}, args.n, args.seed)
    else:
        record = fit_calibration(args.n, args.seed)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
