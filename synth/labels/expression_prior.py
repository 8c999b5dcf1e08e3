"""The expression prior: sparse FACS AU vectors with the base rates and prototypes of real faces.

Why. Gaussian draws through the expression flow land near the mean of the catalogue's 76 codes, a blend
of all of them (docs/au-labels.md): every sample shows ~15 AUs, the jaw moves left and right at once, and
no face is neutral. A dataset for AU detectors needs the opposite. This prior draws the AU vector first,
the way faces behave, and the pipeline builds the expression from it (the bilinear model is linear in
w_ex: w_ex = w_n + sum_c a_c (W_c - w_n) over the catalogue's single-AU expressions c), so the label of
a sample is the vector that made it.

The data (`synth/labels/data/expression_prior.json`, every figure with its source):
- units: FACS AUs over the catalogue's AU columns (a bilateral unit drives its _L and _R columns), each
  with a target base rate = share of samples in which the unit is active (intensity > 0.1);
- the neutral share (DISFA: 37.2 % of frames have no AU);
- prototypes: the universal expressions (EMFACS) and the infant ones (Baby FACS smile and cry face;
  BabyFlow's closed-eye expressions), each unit with a level and a probability of taking part;
- companions: "if AU a then AU b with probability p" (AU26 -> AU25, ...);
- exclusive pairs: actions that cannot happen together (jaw left / right, eyes closed / upper lid
  raised, lips pressed / parted, ...).

The draw of one sample (all random numbers drawn in fixed shapes, so the stream does not depend on
outcomes):
1. neutral with probability `neutral_share`; else a prototype with probability `prototype_share`; else a
   sparse combination;
2. prototype k ~ weights: each of its units takes part with its probability (at least its most likely
   one), at intensity s * level * u (s ~ U(scale_min, scale_max) per sample, u ~ U(1 - jitter, 1) per unit);
3. sparse: each unit independently with probability q_u (at least one: an empty draw takes one unit
   ~ q), intensity ~ U(intensity_min, 1);
4. companions, then exclusive pairs (both active: a fair coin drops one; the calibration raises the
   rates of the units that lose);
5. columns: a bilateral unit's two sides get u ~ U(1 - asymmetry, 1) each; with probability
   `unilateral_share` (always for a prototype marked unilateral) only one side moves.
Every active column is >= intensity_min * (1 - asymmetry) > 0.1 and <= 1: nothing is clipped.

Calibration. The sparse rates q are set so that the total base rates meet the targets: a fixed-point
iteration q <- q * target / rate on a fixed-seed Monte Carlo estimate of the whole prior (prototypes,
companions and exclusions included); deterministic, a function of the config only. Targets that the
prototypes alone exceed cannot be met (q = 0); `achieved` says what the prior gives.
"""

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PRIOR_FILE = "expression_prior.json"
ACTIVE = 0.1
"""An AU column counts as active above this intensity (the threshold of the base rates)."""
_CALIBRATION_SEED = 20261202
_CALIBRATION_DRAWS = 16000
_CALIBRATION_STEPS = 12


@dataclass
class ExpressionPriorConfig:
    """Knobs of the expression prior (`sampler.prior.*`); the data file holds the cited defaults.

    neutral_share: share of faces with no AU; None = the data's 0.372 (DISFA).
    prototype_share: share of the non-neutral faces drawn from a prototype (the rest are sparse
        combinations drawn at the calibrated rates).
    scale_min, scale_max: a prototype's overall intensity s ~ U(scale_min, scale_max).
    jitter: per-unit variation of a prototype's levels, u ~ U(1 - jitter, 1).
    intensity_min: the weakest intensity of an active unit (> 0.1 / (1 - asymmetry)).
    asymmetry: per-side variation of bilateral units, U(1 - asymmetry, 1).
    unilateral_share: share of active bilateral units that move one side only.
    base_rates: overrides of the data's target base rates, unit name -> rate in [0, 0.95].
    prototype_weights: overrides of the prototypes' relative weights, name -> weight >= 0 (0 disables).
    """

    neutral_share: float | None = None
    prototype_share: float = 0.6
    scale_min: float = 0.4
    scale_max: float = 1.0
    jitter: float = 0.15
    intensity_min: float = 0.15
    asymmetry: float = 0.15
    unilateral_share: float = 0.05
    base_rates: dict[str, float] = field(default_factory=dict)
    prototype_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        key = "sampler.prior"
        if self.neutral_share is not None and not 0.0 <= self.neutral_share < 1.0:
            raise ValueError(f"{key}.neutral_share={self.neutral_share} must be in [0, 1) (or null: 0.372)")
        for name in ("prototype_share", "jitter", "asymmetry", "unilateral_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key}.{name}={value} must be in [0, 1]")
        if not 0.0 < self.scale_min <= self.scale_max <= 1.0:
            raise ValueError(
                f"{key}.scale_min={self.scale_min}, {key}.scale_max={self.scale_max} must satisfy "
                "0 < min <= max <= 1"
            )
        if self.jitter >= 1.0 or self.asymmetry >= 1.0:
            raise ValueError(f"{key}.jitter and {key}.asymmetry must be < 1 (an active unit must stay > 0)")
        floor = self.intensity_min * (1.0 - self.asymmetry)
        if not (floor > ACTIVE and self.intensity_min <= 1.0):
            raise ValueError(
                f"{key}.intensity_min={self.intensity_min} with asymmetry={self.asymmetry} lets an active "
                f"column fall to {floor:.3f} <= {ACTIVE} (the activity threshold); raise intensity_min"
            )
        for name, rate in self.base_rates.items():
            if not 0.0 <= rate <= 0.95:
                raise ValueError(f"{key}.base_rates.{name}={rate} must be a rate in [0, 0.95]")
        for name, weight in self.prototype_weights.items():
            if weight < 0.0:
                raise ValueError(f"{key}.prototype_weights.{name}={weight} must be >= 0 (0 disables it)")


@dataclass(frozen=True)
class PriorData:
    """The parsed data file. units: U names; columns: per unit its catalogue AU column names; targets (U,);
    sources: per unit its source key; prototypes: name -> (weight, unilateral, {unit: (level, prob)});
    exclusive: (unit, unit, why); companions: (if, then, probability); neutral_share; citations."""

    units: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]
    targets: tuple[float, ...]
    sources: tuple[str, ...]
    prototypes: dict[str, tuple[float, bool, dict[str, tuple[float, float]]]]
    exclusive: tuple[tuple[str, str, str], ...]
    companions: tuple[tuple[str, str, float], ...]
    neutral_share: float
    citations: dict[str, str]


def _fail(what: str) -> ValueError:
    return ValueError(f"synth/labels/data/{PRIOR_FILE}: {what}")


def parse_prior(doc: dict[str, Any]) -> PriorData:
    """Validate the prior document and build `PriorData`; ValueError naming the bad entry."""
    if doc.get("format") != "synth.expression_prior" or doc.get("version") != 1:
        raise _fail(f"expected format 'synth.expression_prior' version 1, got {doc.get('format')!r}")
    citations = dict(doc["sources"])
    units = tuple(u["name"] for u in doc["units"])
    if len(set(units)) != len(units):
        raise _fail(f"duplicate unit names {sorted({u for u in units if units.count(u) > 1})}")
    for u in doc["units"]:
        for key in u["source"].split("+"):
            if key not in citations:
                raise _fail(f"unit {u['name']!r} cites unknown source {key!r}")
        if not 0.0 <= u["base_rate"] <= 0.95:
            raise _fail(f"unit {u['name']!r}: base_rate {u['base_rate']} outside [0, 0.95]")
    known = set(units)
    exclusive = []
    for e in doc["exclusive"]:
        a, b = e["pair"]
        if a not in known or b not in known or a == b:
            raise _fail(f"exclusive pair {e['pair']} names an unknown unit or the same unit twice")
        exclusive.append((a, b, e["why"]))
    companions = []
    for c in doc["companions"]:
        if c["if"] not in known or c["then"] not in known or not 0.0 <= c["probability"] <= 1.0:
            raise _fail(f"companion {c} names an unknown unit or a probability outside [0, 1]")
        companions.append((c["if"], c["then"], float(c["probability"])))
    pairs = {frozenset(p[:2]) for p in exclusive}
    prototypes = {}
    for p in doc["prototypes"]:
        aus = {}
        for unit, (level, prob) in p["aus"].items():
            if unit not in known:
                raise _fail(f"prototype {p['name']!r} uses unknown unit {unit!r}")
            if not (0.0 < level <= 1.0 and 0.0 < prob <= 1.0):
                raise _fail(f"prototype {p['name']!r}: {unit} level/probability must be in (0, 1]")
            aus[unit] = (float(level), float(prob))
        for a in aus:
            for b in aus:
                if a < b and frozenset((a, b)) in pairs and aus[a][1] == 1.0 and aus[b][1] == 1.0:
                    raise _fail(f"prototype {p['name']!r} always uses the exclusive pair {a}, {b}")
        prototypes[p["name"]] = (float(p["weight"]), bool(p.get("unilateral", False)), aus)
    return PriorData(
        units=units,
        columns=tuple(tuple(u["columns"]) for u in doc["units"]),
        targets=tuple(float(u["base_rate"]) for u in doc["units"]),
        sources=tuple(u["source"] for u in doc["units"]),
        prototypes=prototypes,
        exclusive=tuple(exclusive),
        companions=tuple(companions),
        neutral_share=float(doc["neutral_share"]["value"]),
        citations=citations,
    )


@cache
def load_prior_data() -> PriorData:
    """The packaged prior data, validated; cached."""
    text = resources.files("synth.labels").joinpath("data", PRIOR_FILE).read_text(encoding="utf-8")
    return parse_prior(json.loads(text))


@dataclass(frozen=True)
class PriorDraw:
    """n draws. aus: (n, A) float32 column intensities in {0} u (0.1, 1]; units: (n, U) float32 unit
    intensities; kind: (n,) int8 (0 neutral, 1 prototype, 2 sparse); label: n strings ("neutral", a
    prototype name, or the sparse units joined by "+")."""

    aus: np.ndarray
    units: np.ndarray
    kind: np.ndarray
    label: list[str]


class ExpressionPrior:
    """The prior over AU vectors for a model's AU columns (see module docstring).

    au_names: the A AU column names of the model (catalogue order). available: (A,) bool, the columns the
    model can make from an AU vector (those with a single-AU expression); units with an unavailable column
    are left out, with their prototype entries, exclusions and companions. Raises ValueError naming the
    config key for unknown units / prototypes, and when no unit is left.
    """

    def __init__(
        self,
        cfg: ExpressionPriorConfig,
        au_names: tuple[str, ...] | list[str],
        available: np.ndarray | None = None,
        data: PriorData | None = None,
    ):
        data = data or load_prior_data()
        au_names = tuple(au_names)
        avail = np.ones(len(au_names), bool) if available is None else np.asarray(available, bool)
        for name in cfg.base_rates:
            if name not in data.units:
                raise ValueError(
                    f"sampler.prior.base_rates.{name}: unknown unit; units: {', '.join(data.units)}"
                )
        for name in cfg.prototype_weights:
            if name not in data.prototypes:
                raise ValueError(
                    f"sampler.prior.prototype_weights.{name}: unknown prototype; prototypes: "
                    f"{', '.join(data.prototypes)}"
                )
        col = {n: i for i, n in enumerate(au_names)}
        keep = [
            u for u, cols in enumerate(data.columns) if all(c in col and avail[col[c]] for c in cols)
        ]  # fmt: skip
        if not keep:
            raise ValueError(
                "the expression prior needs single-AU expressions in the model and this model has none for "
                "the prior's units; use sampler=random (flow sampling) or a model built with the catalogue"
            )
        dropped = [data.units[u] for u in range(len(data.units)) if u not in keep]
        if dropped:
            log.info("expression prior: the model cannot make units %s; they are left out", dropped)
        self.cfg = cfg
        self.au_names = au_names
        self.units = tuple(data.units[u] for u in keep)
        self.sources = tuple(data.sources[u] for u in keep)
        index = {name: i for i, name in enumerate(self.units)}
        self.targets = np.array(
            [cfg.base_rates.get(data.units[u], data.targets[u]) for u in keep], dtype=np.float64
        )
        self.neutral_share = data.neutral_share if cfg.neutral_share is None else cfg.neutral_share
        # column -> unit, and the side of bilateral columns (+1 left, -1 right, 0 central)
        self.column_unit = np.full(len(au_names), -1, np.int64)
        self.column_side = np.zeros(len(au_names), np.int8)
        for j, u in enumerate(keep):
            cols = data.columns[u]
            for c in cols:
                self.column_unit[col[c]] = j
                if len(cols) == 2:
                    self.column_side[col[c]] = 1 if c.endswith("_L") else -1
        self.exclusive = tuple(
            (index[a], index[b], why) for a, b, why in data.exclusive if a in index and b in index
        )
        self.companions = tuple(
            (index[a], index[b], p) for a, b, p in data.companions if a in index and b in index
        )
        names, weights, unilateral, levels, probs = [], [], [], [], []
        for name, (weight, one_side, aus) in data.prototypes.items():
            weight = cfg.prototype_weights.get(name, weight)
            entries = {index[a]: v for a, v in aus.items() if a in index}
            if weight <= 0.0 or not entries:
                continue
            level = np.zeros(len(self.units))
            prob = np.zeros(len(self.units))
            for u, (lv, pr) in entries.items():
                level[u], prob[u] = lv, pr
            names.append(name)
            weights.append(weight)
            unilateral.append(one_side)
            levels.append(level)
            probs.append(prob)
        self.prototype_names = tuple(names)
        self.prototype_weights = np.array(weights) / max(sum(weights), 1e-300)
        self.prototype_unilateral = np.array(unilateral, bool)
        self.prototype_levels = np.array(levels).reshape(len(names), len(self.units))
        self.prototype_probs = np.array(probs).reshape(len(names), len(self.units))
        self.prototype_share = cfg.prototype_share if names else 0.0
        self.q = self._calibrate()
        self.achieved = self._rates(self.q)  # quasi Monte Carlo over _CALIBRATION_DRAWS
        off = [
            f"{u} {a:.3f} vs {t:.3f}"
            for u, a, t in zip(self.units, self.achieved, self.targets, strict=True)
            if t > 0 and not 1 / 1.5 <= a / t <= 1.5
        ]
        if off:
            log.warning("expression prior: base rates the config cannot meet (achieved vs target): %s", off)

    # ---- drawing ----

    def draw(
        self, rng: np.random.Generator, n: int, index: np.ndarray | None = None, offset: float = 0.0
    ) -> PriorDraw:
        """n AU vectors from the prior.

        Without `index` every random number comes from `rng`. With `index` ((n,) int, e.g. global sample
        indices) the uniform that makes a face neutral, a prototype or a sparse combination is
        frac(offset + index * GOLDEN) instead (`offset` in [0, 1), e.g. drawn once from the run seed): over
        any range of consecutive indices the neutral and prototype shares then match the config to
        O(log n / n) instead of the binomial +-sqrt(p (1 - p) / n) (+-1.5 points at n = 1024), and sample
        i still depends on (index, offset, rng) alone. Everything else always comes from `rng` (stratifying
        the ~90 other choices with a multi-dimensional Kronecker sequence made rare AUs worse at n = 1024).
        """
        return self._draw(rng, n, self.q, index=index, offset=offset)

    def _draw(
        self,
        rng: np.random.Generator,
        n: int,
        q: np.ndarray,
        labels: bool = True,
        index: np.ndarray | None = None,
        offset: float = 0.0,
    ) -> PriorDraw:
        cfg = self.cfg
        n_units = len(self.units)
        n_comp, n_excl = max(len(self.companions), 1), max(len(self.exclusive), 1)
        # all draws in fixed shapes, so the stream never depends on outcomes or on `index`
        occ = rng.random((n, 3 + 2 * n_units + n_comp + n_excl))
        if index is not None:
            occ[:, 0] = np.mod(offset + np.asarray(index, np.float64) * GOLDEN, 1.0)
        u_kind, u_proto = occ[:, 0], occ[:, 1]
        takes_part = occ[:, 2 : 2 + n_units]
        u_fire = occ[:, 2 + n_units : 2 + 2 * n_units]
        u_fallback = occ[:, 2 + 2 * n_units]
        follow = occ[:, 3 + 2 * n_units : 3 + 2 * n_units + n_comp]
        coin = occ[:, 3 + 2 * n_units + n_comp : 3 + 2 * n_units + n_comp + n_excl]
        scale = rng.uniform(cfg.scale_min, cfg.scale_max, size=n)
        jitter = rng.uniform(1.0 - cfg.jitter, 1.0, size=(n, n_units))
        strength = rng.uniform(cfg.intensity_min, 1.0, size=(n, n_units))
        side_scale = rng.uniform(1.0 - cfg.asymmetry, 1.0, size=(n, len(self.au_names)))
        one_side = rng.random((n, n_units)) < cfg.unilateral_share
        left = rng.random((n, n_units)) < 0.5  # which side moves when one-sided
        # 1. kind of each face
        neutral = u_kind < self.neutral_share
        is_proto = ~neutral & (u_kind < self.neutral_share + (1 - self.neutral_share) * self.prototype_share)
        sparse = ~neutral & ~is_proto
        # 2. prototypes
        n_proto = len(self.prototype_names)
        k = _categorical(u_proto, self.prototype_weights) if n_proto else np.zeros(n, np.int64)
        units = np.zeros((n, n_units))
        if n_proto:
            level = self.prototype_levels[k]  # (n, U)
            part = takes_part < self.prototype_probs[k]
            lone = ~part.any(axis=1)  # every optional unit missed: keep the prototype's most likely unit
            part[lone, np.argmax(self.prototype_probs[k[lone]], axis=1)] = True
            units = np.where(is_proto[:, None] & part, scale[:, None] * level * jitter, 0.0)
        # 3. sparse combinations at the calibrated rates, at least one unit
        fires = u_fire < q
        fallback = _categorical(u_fallback, q if q.sum() > 0 else np.ones(n_units))
        empty = ~fires.any(axis=1)
        fires[empty, fallback[empty]] = True
        units = np.where(sparse[:, None] & fires, strength, units)
        units = np.where(units > 0, np.maximum(units, cfg.intensity_min), 0.0)
        # 4. companions, then exclusive pairs
        for c, (a, b, p) in enumerate(self.companions):
            add = (units[:, a] > 0) & (units[:, b] == 0) & (follow[:, c] < p)
            units[add, b] = np.maximum(units[add, a] * jitter[add, b], cfg.intensity_min)
        for e, (a, b, _) in enumerate(self.exclusive):
            both = (units[:, a] > 0) & (units[:, b] > 0)
            drop_a = both & (coin[:, e] < 0.5)
            units[drop_a, a] = 0.0
            units[both & ~drop_a, b] = 0.0
        # 5. columns: per-side variation, one-sided units
        if n_proto:
            one_side |= (is_proto & self.prototype_unilateral[k])[:, None]
        mapped = self.column_unit >= 0
        aus = np.zeros((n, len(self.au_names)))
        cu = self.column_unit[mapped]
        side = self.column_side[mapped]
        moves = ~one_side[:, cu] | (side == 0) | ((side == 1) & left[:, cu]) | ((side == -1) & ~left[:, cu])
        aus[:, mapped] = units[:, cu] * side_scale[:, mapped] * moves
        kind = np.where(neutral, 0, np.where(is_proto, 1, 2)).astype(np.int8)
        names = []
        for i in range(n if labels else 0):
            if kind[i] == 0:
                names.append("neutral")
            elif kind[i] == 1:
                names.append(self.prototype_names[k[i]])
            else:
                names.append("+".join(self.units[u] for u in np.flatnonzero(units[i] > 0)))
        return PriorDraw(aus.astype(np.float32), units.astype(np.float32), kind, names)

    def _calibrate(self) -> np.ndarray:
        """Sparse rates q (U,) meeting the targets (fixed-point iteration on a fixed-seed Monte Carlo)."""
        non_neutral = max(1.0 - self.neutral_share, 1e-9)
        sparse_share = max(1.0 - self.prototype_share, 1e-9)
        q = np.clip(self.targets / non_neutral / sparse_share * 0.5, 0.0, 0.95)
        for _ in range(_CALIBRATION_STEPS):
            rates = self._rates(q)
            step = np.clip(self.targets / np.maximum(rates, 1e-9), 0.5, 2.0)
            q = np.clip(q * step, 0.0, 0.95)
            q[self.targets == 0] = 0.0
        return q

    def _rates(self, q: np.ndarray) -> np.ndarray:
        """(U,) unit base rates of the prior with sparse rates q (fixed-seed Monte Carlo: the same numbers
        every call, so the fixed point sees no sampling noise)."""
        rng = np.random.default_rng(_CALIBRATION_SEED)
        index = np.arange(_CALIBRATION_DRAWS)
        return self.unit_rates(self._draw(rng, _CALIBRATION_DRAWS, q, labels=False, index=index).aus)

    # ---- helpers of the samplers ----

    def column_rates(self) -> np.ndarray:
        """(A,) the target base rate of each AU column's unit (0 for columns outside the prior)."""
        rates = np.zeros(len(self.au_names))
        mapped = self.column_unit >= 0
        rates[mapped] = self.targets[self.column_unit[mapped]]
        return rates

    def excludes(self, column: int) -> np.ndarray:
        """(A,) bool: the columns whose unit is exclusive with the unit of AU column `column`."""
        unit = self.column_unit[column]
        partners = {b for a, b, _ in self.exclusive if a == unit} | {
            a for a, b, _ in self.exclusive if b == unit
        }
        return (
            np.isin(self.column_unit, sorted(partners)) if unit >= 0 else np.zeros(len(self.au_names), bool)
        )

    def compatible(self, aus: np.ndarray, other: np.ndarray) -> np.ndarray:
        """`aus` (A,) with the units exclusive with any active unit of `other` (A,) set to zero."""
        out = np.array(aus, dtype=np.float32, copy=True)
        for column in np.flatnonzero(np.asarray(other) > ACTIVE):
            out[self.excludes(int(column))] = 0.0
        return out

    # ---- measuring ----

    def unit_activity(self, aus: np.ndarray) -> np.ndarray:
        """(n, A) AU columns -> (n, U) bool: a unit is active when any of its columns is > 0.1."""
        aus = np.asarray(aus)
        out = np.zeros((aus.shape[0], len(self.units)), bool)
        for j in range(len(self.units)):
            out[:, j] = (aus[:, self.column_unit == j] > ACTIVE).any(axis=1)
        return out

    def unit_rates(self, aus: np.ndarray) -> np.ndarray:
        """(U,) share of samples in which each unit is active."""
        return self.unit_activity(aus).mean(axis=0)

    def exclusive_violations(self, aus: np.ndarray) -> np.ndarray:
        """(n,) int: exclusive pairs with both units active in each sample."""
        act = self.unit_activity(aus)
        out = np.zeros(act.shape[0], np.int64)
        for a, b, _ in self.exclusive:
            out += act[:, a] & act[:, b]
        return out

    def summary(self, aus: np.ndarray) -> dict[str, Any]:
        """The realism figures of a set of AU vectors (n, A) against this prior's targets."""
        aus = np.asarray(aus, dtype=np.float32)
        act = self.unit_activity(aus)
        rates = act.mean(axis=0)
        ratio = np.where(self.targets > 0, rates / np.maximum(self.targets, 1e-12), np.nan)
        return {
            "samples": int(aus.shape[0]),
            "median_active_units": float(np.median(act.sum(axis=1))),
            "median_active_columns": float(np.median((aus > ACTIVE).sum(axis=1))),
            "neutral_share": float((~(aus > ACTIVE).any(axis=1)).mean()),
            "neutral_target": float(self.neutral_share),
            "exclusive_violations": int((self.exclusive_violations(aus) > 0).sum()),
            "clipped_share": float(((aus >= 1.0) | (aus < 0.0)).mean()),
            "unit_rates": dict(zip(self.units, rates.tolist(), strict=True)),
            "unit_targets": dict(zip(self.units, self.targets.tolist(), strict=True)),
            "rate_ratio": dict(zip(self.units, ratio.tolist(), strict=True)),
        }


def _categorical(u: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n,) indices drawn from `weights` (unnormalised, >= 0) by inverting the CDF at uniforms u (n,)."""
    cdf = np.cumsum(weights) / np.sum(weights)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(weights) - 1)


GOLDEN = (5**0.5 - 1) / 2
"""The Weyl step of the neutral / prototype / sparse choice: frac(offset + index * GOLDEN) is the 1-D
sequence with the most even spread over any run of consecutive indices (the golden-ratio sequence)."""


_PRIORS: dict[str, ExpressionPrior] = {}


def expression_prior(
    cfg: ExpressionPriorConfig, au_names: tuple[str, ...] | list[str], available: np.ndarray | None = None
) -> ExpressionPrior:
    """A cached `ExpressionPrior` (the calibration takes ~1 s; every sampler of a process shares it)."""
    avail = None if available is None else np.asarray(available, bool)
    key = json.dumps(
        [cfg.__dict__, list(au_names), None if avail is None else avail.tolist()], sort_keys=True, default=str
    )
    if key not in _PRIORS:
        _PRIORS[key] = ExpressionPrior(cfg, au_names, avail)
    return _PRIORS[key]
