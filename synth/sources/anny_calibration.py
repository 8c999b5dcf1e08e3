"""The anthropometric calibration of the Anny infant prior: age- and sex-dependent local-change offsets and
extra spreads that make Anny's infants measure like real infants (docs/anthropometry.md).

Anny's age axis is calibrated on body height; at 0-3 years its heads are too small after birth (the head
grows 63 mm from 0 to 3 years instead of WHO's 148 mm), eyes too wide apart with short fissures, mouths
narrow, noses short. The calibration adds to each identity's local changes, at its age a (months) and sex,

    local = clip(spread[sex](a) @ R * draw + offset[sex](a) @ D + noise_std[sex](a) * z @ D, -1, 1)

with z ~ N(0, I_C). draw (L,) is the prior's draw of the local changes (before its clip); R (G, L) marks
the regions whose prior spread the factors spread (G,) narrow (Anny's eye and mouth targets spread
palpebral fissures and mouths wider than real infants'); D (C, L) spreads each of the C calibration
controls over the Anny local changes it drives (a left/right pair moves together). offset, noise_std and
spread are piecewise linear in age between the fitted anchor ages (held constant outside them). The
controls are Anny's own shape targets (head depth and width, eye position and size, mouth width, nose
height and base): no explicit scale is needed, since Anny's head-scale targets reach the WHO head sizes
at every age within their range.

The fitted values ship in `synth/sources/data/anny_calibration.json`, written by
`python -m synth.sources.anny_calibration_fit` (fit: `synth.sources.anny_calibration_fit`). This module
only reads and applies them (numpy only), so the prior does not depend on the fitting code.
"""

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

CALIBRATION_FILE = "anny_calibration.json"
CALIBRATIONS = ("infant_v2",)  # names accepted by `AnnyPriorConfig.calibration`
SEXES = ("female", "male")
# Calibration controls -> the Anny local changes each one drives (all with weight 1).
CONTROLS: dict[str, tuple[str, ...]] = {
    "head-depth": ("head-scale-depth-incr",),
    "head-width": ("head-scale-horiz-incr",),
    "eye-trans-out": ("l-eye-trans-out", "r-eye-trans-out"),
    "eye-scale-incr": ("l-eye-scale-incr", "r-eye-scale-incr"),
    "eye-push1-out": ("l-eye-push1-out", "r-eye-push1-out"),
    "eye-push2-out": ("l-eye-push2-out", "r-eye-push2-out"),
    "mouth-scale-horiz-incr": ("mouth-scale-horiz-incr",),
    "nose-scale-vert-incr": ("nose-scale-vert-incr",),
    "nose-base-up": ("nose-base-up",),
    # anatomy controls: fitted at 3 years against the 3D norms of other distances, the same at every age
    "nose-width": ("nose-scale-horiz-incr",),
    "nose-depth": ("nose-scale-depth-incr",),
    "nose-up": ("nose-trans-up",),
    "nose-septum": ("nose-septumangle-incr",),
    "philtrum-width": ("mouth-cupidsbow-width-incr",),
    "lower-lip-height": ("mouth-lowerlip-height-incr",),
    "mouth-up": ("mouth-trans-up",),
}
ANATOMY_CONTROLS = (
    "nose-width",
    "nose-depth",
    "nose-up",
    "nose-septum",
    "philtrum-width",
    "lower-lip-height",
    "mouth-up",
)
# Regions whose prior spread the calibration may narrow: name -> Anny local-change prefixes.
REGIONS: dict[str, tuple[str, ...]] = {"eye": ("l-eye-", "r-eye-"), "mouth": ("mouth-",)}
FORMAT_VERSION = 1


def sex_of(gender: np.ndarray) -> np.ndarray:
    """Sex label of Anny gender values (any shape): "female" where gender >= 0.5 (Anny: 1 = female)."""
    return np.where(np.asarray(gender) >= 0.5, "female", "male")


def region_matrix(local_change_labels: tuple[str, ...]) -> np.ndarray:
    """R (G, L): row g has 1 on each Anny local change of region g (REGIONS order)."""
    return np.array(
        [
            [float(label.startswith(prefixes)) for label in local_change_labels]
            for prefixes in REGIONS.values()
        ]
    ).reshape(len(REGIONS), len(local_change_labels))


def control_matrix(local_change_labels: tuple[str, ...]) -> np.ndarray:
    """D (C, L): row c has 1 on each Anny local change that control c drives (CONTROLS order)."""
    index = {label: i for i, label in enumerate(local_change_labels)}
    d = np.zeros((len(CONTROLS), len(local_change_labels)))
    for c, labels in enumerate(CONTROLS.values()):
        for label in labels:
            if label not in index:
                raise ValueError(f"calibration control drives {label!r}, which this Anny model lacks")
            d[c, index[label]] = 1.0
    return d


@dataclass(frozen=True)
class Calibration:
    """Fitted calibration: anchors_months (A,), offset / noise_std {sex: (A, C)} in Anny local-change
    units, controls (C,) names; `record` is the whole JSON (method, fit diagnostics)."""

    anchors_months: np.ndarray
    offset: dict[str, np.ndarray]
    noise_std: dict[str, np.ndarray]
    spread: dict[str, np.ndarray]
    controls: tuple[str, ...]
    record: dict[str, Any]

    def at(self, age_months: float, sex: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offset (C,), noise_std (C,), spread (G,)) at an age (months) and a sex, linear between anchors."""
        if sex not in SEXES:
            raise ValueError(f"sex={sex!r}: need one of {SEXES}")

        def interp(table: np.ndarray) -> np.ndarray:
            return np.array([np.interp(age_months, self.anchors_months, col) for col in table.T])

        return interp(self.offset[sex]), interp(self.noise_std[sex]), interp(self.spread[sex])

    def adjust(
        self, draw: np.ndarray, labels: tuple[str, ...], age_months: float, sex: str, z: np.ndarray
    ) -> np.ndarray:
        """Calibrated local changes of one identity: draw (L,) the prior's draw (before its clip), z (C,)
        standard normals. Returns (L,) clipped to Anny's range [-1, 1]."""
        offset, std, spread = self.at(age_months, sex)
        regions = region_matrix(labels)  # (G, L)
        factor = np.where(regions.any(axis=0), spread @ regions, 1.0)  # (L,)
        return np.clip(draw * factor + (offset + std * z) @ control_matrix(labels), -1.0, 1.0)


def calibration_from_json(data: dict[str, Any]) -> Calibration:
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"calibration format_version {data.get('format_version')} != {FORMAT_VERSION}")
    if tuple(data["controls"]) != tuple(CONTROLS) or tuple(data["regions"]) != tuple(REGIONS):
        raise ValueError(
            f"calibration controls / regions {data['controls']} / {data['regions']} differ from "
            f"{list(CONTROLS)} / {list(REGIONS)}; refit it"
        )
    return Calibration(
        anchors_months=np.asarray(data["anchors_months"], dtype=np.float64),
        offset={s: np.asarray(data["offset"][s], dtype=np.float64) for s in SEXES},
        noise_std={s: np.asarray(data["noise_std"][s], dtype=np.float64) for s in SEXES},
        spread={s: np.asarray(data["spread"][s], dtype=np.float64) for s in SEXES},
        controls=tuple(data["controls"]),
        record=data,
    )


@cache
def load_calibration(name: str) -> Calibration:
    """The shipped calibration `name` (one of CALIBRATIONS)."""
    if name not in CALIBRATIONS:
        raise ValueError(f"calibration {name!r}: known calibrations are {CALIBRATIONS} (or none)")
    text = resources.files("synth.sources").joinpath("data", CALIBRATION_FILE).read_text()
    data = json.loads(text)
    if data.get("name") != name:
        raise ValueError(f"{CALIBRATION_FILE} holds calibration {data.get('name')!r}, not {name!r}")
    return calibration_from_json(data)
