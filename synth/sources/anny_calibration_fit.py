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
from synth.labels.anthropometry import FACIAL_MEASURES, Norms, Population, load_norms
from synth.sources.anny_anthropometry import measure_identities
from synth.sources.anny_calibration import (
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


def z_scores(pop: Population, norms: Norms) -> np.ndarray:
    """(n, 5) z-scores of each identity's MEASURES against the norms at its age (and sex for the head)."""
    mean, sd = norms.head_circumference(pop.age_months, pop.sex)
    cols = [(pop.head_circumference - mean) / sd]
    for measure in FACIAL_MEASURES:
        mean, sd = norms.facial_norm(measure, pop.age_months)
        cols.append((pop.facial[measure] - mean) / sd)
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
        (n, len(CONTROLS))
    )
    offset = np.zeros(len(CONTROLS))
    std = np.zeros(len(CONTROLS))
    spread = np.ones(len(REGIONS))

    def scores(o: np.ndarray, s: np.ndarray, f: np.ndarray | None = None) -> np.ndarray:
        f = spread if f is None else f
        return z_scores(measure_identities(_with_controls(params, base, o + s * z_noise, f)), norms)

    jac = np.zeros((len(MEASURES), len(CONTROLS)))
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
                [(scores(offset + STEP * e, std).mean(axis=0) - r) / STEP for e in np.eye(len(CONTROLS))],
                axis=1,
            )  # (5, C)
        a = np.vstack([jac, np.sqrt(RIDGE) * np.eye(len(CONTROLS))])
        b = np.concatenate([-r, -np.sqrt(RIDGE) * offset])
        step = lsq_linear(a, b, bounds=(-OFFSET_BOUND - offset, OFFSET_BOUND - offset)).x
        offset = offset + step
        prior_var = np.maximum(z.var(axis=0, ddof=1) - (jac**2) @ std**2, 0.0)
        std = np.sqrt(nnls(jac**2, np.maximum(1.0 - prior_var, 0.0))[0])
    z = scores(offset, std)  # with the final spread, offsets and noise
    summary = {
        m: {"z_of_mean": round(float(z[:, k].mean()), 3), "sd_ratio": round(float(z[:, k].std(ddof=1)), 3)}
        for k, m in enumerate(MEASURES)
    }
    log.info("anchor %4.1f months %-6s %s", age_months, sex, summary)
    return offset, std, spread, summary


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
    return {
        "format_version": FORMAT_VERSION,
        "name": "infant_v1",
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="identities per anchor age and sex")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / CALIBRATION_FILE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    record = fit_calibration(args.n, args.seed)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
