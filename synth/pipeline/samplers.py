"""Samplers: global sample index -> that sample's latent plan, from (seed, index, config) alone.

A sampler never sees a batch's other samples: every random draw comes from a stream keyed by the sample
index or by its group (`synth.seeding`), so sample i is the same whatever the batch size, worker count
or resume history.

Groups. Each sample belongs to an identity group: the samples that share an identity draw (identity_sets:
one identity and its expressions; interpolation: one sequence; random / au: the sample alone). The train /
val / test split is a function of (seed, group) only (`assign_splits`), so splits are identity-disjoint:
two samples that share an identity draw share a group and hence a split. The split draw is a uniform
u = numpy_rng(seed, group, Stage.SPLIT).random(); u < train -> "train", u < train + val -> "val", else
"test" (so split sizes are binomial around the fractions).

Latent space. `z_id`, `z_ex` are the flows' Gaussian latents (BabyFlow section 4.4); temperature scales
them and truncation projects them onto the rho-confidence sphere (eq. 24, `FaceModel`'s `truncate`). The
random sampler draws exactly what `FaceModel.sample(n, seed)` draws (stream Stage.LATENT of the index), so
sample i of a dataset is `FaceModel.sample_indices([i], seed)`; the other samplers use Stage.SAMPLER
streams keyed by index or group. Expressions can also
be given as a mixture over the model's catalogue expressions (`expr_weights`): the pipeline turns it into
w_ex = w_neutral + sum_e weight_e (W_ex[e] - w_neutral), so the mesh is the neutral face plus the weighted
expression deltas of that identity (the bilinear model is linear in w_ex): weight 1 is the catalogue
expression, > 1 extrapolates along it (3DFaceCAM), 0 is neutral.

AU vectors. The prior sampler (the default), the au sampler's random draws and identity_sets /
interpolation with `expressions_from=prior` give each sample an AU vector `aus` (A,) instead; the pipeline
builds w_ex = w_neutral + sum_a aus_a (W_ex[single(a)] - w_neutral) from the catalogue's single-AU
expressions, and the sample's AU label is that vector (exact, not estimated). The vectors come from the
expression prior (`synth.labels.expression_prior`), drawn from a Stage.SAMPLER stream of the index (or of
the group for interpolation endpoints).
"""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from synth.errors import SynthError
from synth.facemodel.model import truncate
from synth.labels.expression_prior import ExpressionPrior, expression_prior
from synth.pipeline.config import ExpressionSource, InterpolationMode, SamplerConfig, SamplerKind, SplitConfig
from synth.seeding import Stage, numpy_rng, torch_generator
from synth.sources.conditioning import age_from_feature

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# Extra ids of the sampler's random streams (the `extra` argument of `synth.seeding`); never renumber.
_ID_STREAM = 0
_EX_STREAM = 1
_END_ID_STREAM = 2  # interpolation: the second endpoint's identity
_END_EX_STREAM = 3  # interpolation: the second endpoint's expression
_AU_STREAM = 4  # au sampler: random AU choice and intensities
_PRIOR_STREAM = 5  # expression prior draws (prior kind, identity_sets, first interpolation endpoint)
_END_PRIOR_STREAM = 6  # interpolation: the second endpoint's expression prior draw
_KIND_OFFSET_STREAM = 100  # + the prior stream: the run's offset of the golden-ratio kind sequence
_LABEL_STREAM = 7  # age / sex conditioning: the identity's target age and sex


@dataclass(frozen=True)
class LatentSpace:
    """What a sampler needs to know about the face model.

    dim_id, dim_ex: latent dimensions of the identity / expression flows.
    expression_names: the model's catalogue expressions (index 0 is "neutral").
    au_names: the A action-unit names.
    expression_aus: (n_ex, A) nominal AU intensities of each catalogue expression.
    readout: the age / sex readout of the identity latent (`synth.sources.conditioning.Readout`), or None
        when the model has no labelled training identities.
    conditional: the model's `IdentityConditional` (None without one) and condition_z its sampler,
        (ages (n,), female (n,), e (n, D)) -> z_id (n, D) (`FaceModel.conditioned_z_id`).
    """

    dim_id: int
    dim_ex: int
    expression_names: tuple[str, ...]
    au_names: tuple[str, ...]
    expression_aus: np.ndarray
    readout: Any = None
    conditional: Any = None
    condition_z: Any = None

    def single_au_expressions(self) -> dict[str, int]:
        """AU name -> index of the catalogue expression that activates exactly that AU (and nothing else)."""
        found: dict[str, int] = {}
        for e, row in enumerate(np.asarray(self.expression_aus)):
            active = np.flatnonzero(row > 0)
            if len(active) == 1:
                found.setdefault(self.au_names[active[0]], e)
        return found


@dataclass(frozen=True)
class LatentPlan:
    """The latents chosen for a batch of samples (B rows).

    index: (B,) int64 global sample indices.
    group: (B,) int64 identity group keys (splits and identity ids derive from them).
    step: (B,) int64 position inside the group (0 for samplers without groups).
    z_id: (B, dim_id) float32 identity latents.
    z_ex: (B, dim_ex) float32 expression latents (ignored where `use_catalogue`).
    use_catalogue: (B,) bool: the expression is `expr_weights` over the catalogue, not `z_ex`.
    expr_weights: (B, n_ex) float32 catalogue mixture weights (zero rows where not `use_catalogue`).
    expression: B labels ("sampled", a catalogue name, "AU12:1.50+AU6:0.80", "interp:joint:0.250", a
        prior prototype "smile", or the prior's sparse units "AU12+AU25").
    use_aus: (B,) bool: the expression is the AU vector `aus` (over the single-AU expressions).
    aus: (B, A) float32 AU vectors (zero rows where not `use_aus`); the sample's exact AU label.
    age_months: (B,) float32 the identity's age: the conditioning target, else the readout's estimate
        (NaN without a readout); sex: B labels "female" / "male" (None without a readout);
    label_estimated: (B,) bool: age / sex come from the readout, not from a conditioning target.
    """

    index: np.ndarray
    group: np.ndarray
    step: np.ndarray
    z_id: np.ndarray
    z_ex: np.ndarray
    use_catalogue: np.ndarray
    expr_weights: np.ndarray
    expression: list[str]
    use_aus: np.ndarray
    aus: np.ndarray
    age_months: np.ndarray
    sex: list[str | None]
    label_estimated: np.ndarray


class Sampler:
    """Maps global sample indices to `LatentPlan`s; one instance per run (seed, config, model)."""

    def __init__(self, cfg: SamplerConfig, seed: int, space: LatentSpace):
        self.cfg = cfg
        self.seed = seed
        self.space = space
        self._targets = self._resolve_targets() if cfg.kind is SamplerKind.au else {}
        self._expressions = [self._expression_index(n, "sampler.expressions") for n in cfg.expressions]
        self._au_pool = self._resolve_au_pool() if cfg.kind is SamplerKind.au and not cfg.targets else []
        self._conditioned = cfg.age_months is not None or cfg.sex != "any"
        if self._conditioned and space.conditional is None:
            raise SynthError(
                "sampler.age_months / sampler.sex: the model has no age / sex conditional (build it from "
                "the Anny source with this synth: synth build-model) to condition on"
            )
        if self._conditioned and cfg.age_months is not None:
            lo, hi = space.conditional.age_range
            if not lo <= cfg.age_months[0] <= cfg.age_months[1] <= hi:
                raise SynthError(
                    f"sampler.age_months={cfg.age_months}: the model's identities span {lo:g}-{hi:g} months"
                )
        self.prior = self._resolve_prior()
        self._kind_offset = {
            stream: float(numpy_rng(seed, 0, Stage.SAMPLER, _KIND_OFFSET_STREAM + stream).random())
            for stream in (_PRIOR_STREAM, _END_PRIOR_STREAM)
        }

    def _uses_prior(self) -> bool:
        kind, cfg = self.cfg.kind, self.cfg
        from_prior = cfg.expressions_from is ExpressionSource.prior
        return (
            kind is SamplerKind.prior
            or (kind is SamplerKind.au and not cfg.targets)
            or (kind is SamplerKind.identity_sets and not cfg.expressions and from_prior)
            or (kind is SamplerKind.interpolation and from_prior)
        )

    def _resolve_prior(self) -> ExpressionPrior | None:
        """The expression prior over the AUs this model can make from an AU vector (None when unused)."""
        if not self._uses_prior():
            return None
        singles = self.space.single_au_expressions()
        available = np.array([name in singles for name in self.space.au_names])
        try:
            return expression_prior(self.cfg.prior, self.space.au_names, available)
        except ValueError as err:
            if self.cfg.kind is SamplerKind.au:  # random AUs without base rates: uniform, no exclusions
                log.info("sampler=au: no expression prior for this model (%s); AUs drawn uniformly", err)
                return None
            raise SynthError(f"sampler={self.cfg.kind.value}: {err}") from None

    # ---- configuration checks against the model (front-loaded: called from __init__) ----

    def _expression_index(self, name: str, key: str) -> int:
        names = self.space.expression_names
        if name not in names:
            raise SynthError(
                f"{key}: expression {name!r} is not in the model's catalogue; use one of "
                f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''} ({len(names)} in all)"
            )
        return names.index(name)

    def _resolve_targets(self) -> dict[str, int]:
        singles = self.space.single_au_expressions()
        resolved = {}
        for name in self.cfg.targets:
            if name in self.space.expression_names:
                resolved[name] = self.space.expression_names.index(name)
            elif name in singles:
                resolved[name] = singles[name]
            else:
                raise SynthError(
                    f"sampler.targets.{name}: not an expression or a single-AU expression of the model; "
                    f"AUs available: {', '.join(sorted(singles)) or 'none'}; "
                    f"or use an expression name (e.g. {', '.join(self.space.expression_names[1:4])})"
                )
        return resolved

    def _resolve_au_pool(self) -> list[tuple[str, int]]:
        singles = self.space.single_au_expressions()
        names = self.cfg.au_pool or sorted(singles)
        missing = [n for n in names if n not in singles]
        if missing:
            raise SynthError(
                f"sampler.au_pool: {missing} have no single-AU expression in the model; "
                f"available: {', '.join(sorted(singles)) or 'none'}"
            )
        if len(names) < self.cfg.num_random_aus:
            raise SynthError(
                f"sampler.num_random_aus={self.cfg.num_random_aus} exceeds the {len(names)} AUs available "
                f"({', '.join(names)}); lower it or widen sampler.au_pool"
            )
        return [(n, singles[n]) for n in names]

    # ---- draws ----

    def _normal(self, key: int, stream: int, dim: int) -> np.ndarray:
        """A (dim,) float32 N(0, T^2 I) draw of one sampler stream, truncated when configured."""
        z = torch.randn(1, dim, generator=torch_generator(self.seed, key, Stage.SAMPLER, stream))
        return self._shape(z)[0]

    def _shape(self, z: torch.Tensor) -> np.ndarray:
        """Temperature, then the truncation of BabyFlow eq. 24 (as `FaceModel.sample` does)."""
        z = z * self.cfg.temperature
        if self.cfg.truncation is not None:
            z = truncate(z, self.cfg.truncation)
        return z.numpy().astype(np.float32)

    def _prior_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(z_id, z_ex) of sample `index` exactly as `FaceModel.sample_indices([index], seed)` draws them."""
        gen = torch_generator(self.seed, index, Stage.LATENT)
        z_id = torch.randn(1, self.space.dim_id, generator=gen)
        z_ex = torch.randn(1, self.space.dim_ex, generator=gen)
        return self._shape(z_id)[0], self._shape(z_ex)[0]

    def _z_id(self, key: int, stream: int = _ID_STREAM) -> np.ndarray:
        return self._normal(key, stream, self.space.dim_id)

    def _z_ex(self, key: int, stream: int = _EX_STREAM) -> np.ndarray:
        return self._normal(key, stream, self.space.dim_ex)

    # ---- the plan ----

    def group_of(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group, step) of each global index."""
        indices = np.asarray(indices, dtype=np.int64)
        size = {
            SamplerKind.identity_sets: self.cfg.expressions_per_identity + 1,
            SamplerKind.interpolation: self.cfg.steps,
        }.get(self.cfg.kind, 1)
        return indices // size, indices % size

    def plan(self, indices: np.ndarray) -> LatentPlan:
        """The latents of the samples `indices` ((B,) int, any order, any subset of the run)."""
        indices = np.asarray(indices, dtype=np.int64)
        groups, steps = self.group_of(indices)
        n_ex = len(self.space.expression_names)
        b = len(indices)
        z_id = np.zeros((b, self.space.dim_id), np.float32)
        z_ex = np.zeros((b, self.space.dim_ex), np.float32)
        use_cat = np.zeros(b, bool)
        weights = np.zeros((b, n_ex), np.float32)
        use_aus = np.zeros(b, bool)
        aus = np.zeros((b, len(self.space.au_names)), np.float32)
        labels: list[str] = []
        for row, (i, g, s) in enumerate(zip(indices.tolist(), groups.tolist(), steps.tolist(), strict=True)):
            kind = self.cfg.kind
            if kind is SamplerKind.prior:
                z_id[row] = self._z_id(i)
                use_aus[row] = True
                aus[row], label = self._prior_draw(i)
                labels.append(label)
            elif kind is SamplerKind.random:
                z_id[row], z_ex[row] = self._prior_pair(i)
                labels.append("sampled")
            elif kind is SamplerKind.au and not self.cfg.targets:
                z_id[row] = self._z_id(i)
                use_aus[row] = True
                labels.append(self._au_vector(i, aus[row]))
            elif kind is SamplerKind.au:
                z_id[row] = self._z_id(i)
                use_cat[row] = True
                labels.append(self._au_expression(i, weights[row]))
            elif kind is SamplerKind.identity_sets:
                z_id[row] = self._z_id(g)
                if s == 0:
                    use_cat[row] = True  # all-zero weights: the neutral twin
                    labels.append("neutral")
                elif self._expressions:
                    e = self._expressions[(s - 1) % len(self._expressions)]
                    use_cat[row] = True
                    weights[row, e] = 1.0
                    labels.append(self.space.expression_names[e])
                elif self.prior is not None:
                    use_aus[row] = True
                    aus[row], label = self._prior_draw(i)
                    labels.append(label)
                else:
                    z_ex[row] = self._z_ex(i)
                    labels.append("sampled")
            else:
                t = s / (self.cfg.steps - 1)
                z_id[row], z_ex[row] = self._interpolate(g, t)
                if self.prior is not None:
                    use_aus[row] = True
                    aus[row] = self._interpolate_aus(g, t)
                labels.append(f"interp:{self.cfg.mode.value}:{t:.3f}")
        age, sex, estimated = self._labels(groups, z_id)
        return LatentPlan(
            indices, groups, steps, z_id, z_ex, use_cat, weights, labels, use_aus, aus, age, sex, estimated
        )

    def _prior_draw(self, key: int, stream: int = _PRIOR_STREAM) -> tuple[np.ndarray, str]:
        """One AU vector (A,) float32 of the expression prior and its label, from the stream of `key`; the
        neutral / prototype / sparse choice is the golden-ratio sequence of `key` (exact shares over any run
        of keys, see `ExpressionPrior.draw`), its offset drawn from the run seed."""
        assert self.prior is not None
        rng = numpy_rng(self.seed, key, Stage.SAMPLER, stream)
        draw = self.prior.draw(rng, 1, index=np.array([key]), offset=self._kind_offset[stream])
        return draw.aus[0], draw.label[0]

    def _interpolate_aus(self, group: int, t: float) -> np.ndarray:
        """AU vector at t in [0, 1] of sequence `group`: linear between two prior draws; the second endpoint
        loses the units exclusive with the first's, so no point of the path moves two exclusive AUs."""
        assert self.prior is not None
        a = self._prior_draw(group)[0]
        if self.cfg.mode is InterpolationMode.identity:
            return a
        b = self.prior.compatible(self._prior_draw(group, _END_PRIOR_STREAM)[0], a)
        return ((1 - t) * a + t * b).astype(np.float32)

    def _au_vector(self, index: int, aus: np.ndarray) -> str:
        """Fill `aus` (A,) for sample `index` of the au sampler's random draws; return its label.

        `num_random_aus` AUs of `au_pool`, chosen one after the other with probabilities proportional to
        the expression prior's base rate of their unit, skipping AUs exclusive with one already chosen; the
        intensities are uniform in [intensity_min, intensity_max].
        """
        rng = numpy_rng(self.seed, index, Stage.SAMPLER, _AU_STREAM)
        names = [n for n, _ in self._au_pool]
        columns = np.array([self.space.au_names.index(n) for n in names])
        weight = np.ones(len(names)) if self.prior is None else self.prior.column_rates()[columns]
        weight = np.where(weight > 0, weight, weight[weight > 0].min() if (weight > 0).any() else 1.0)
        pick_u = rng.random(self.cfg.num_random_aus)
        values = rng.uniform(self.cfg.intensity_min, self.cfg.intensity_max, size=self.cfg.num_random_aus)
        chosen: list[int] = []
        free = np.ones(len(names), bool)
        for u in pick_u.tolist():
            if not free.any():
                break
            p = np.where(free, weight, 0.0)
            c = int(np.searchsorted(np.cumsum(p) / p.sum(), u, side="right").clip(max=len(names) - 1))
            chosen.append(c)
            free[c] = False
            if self.prior is not None:
                free &= ~self.prior.excludes(columns[c])[columns]
        parts = []
        for c, v in sorted(zip(chosen, values.tolist(), strict=False)):
            aus[columns[c]] = v
            parts.append(f"{names[c]}:{v:.2f}")
        return "+".join(parts)

    def _labels(self, groups: np.ndarray, z_id: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        """Condition each row's identity latent (in place) on its group's age and sex; return the rows'
        (age_months (B,), sex (B,), estimated (B,)).

        With sampler.age_months or sampler.sex, a group's age is uniform in [low, high] (without a range:
        drawn from the source's age distribution) and its sex the configured one (for "any": drawn with
        the source's share of girls); the latent is the model's identity conditional with the row's
        standard normal z_id as its noise. That map is affine in the noise, so the rows of one group stay
        one identity and an interpolation stays a line. Without either, the labels are the readout's
        estimates (NaN / None without a readout)."""
        b, cfg, space = len(groups), self.cfg, self.space
        if self._conditioned:
            cond = space.conditional
            age, female = np.empty(b), np.empty(b, bool)
            for row, g in enumerate(groups.tolist()):
                u_age, u_sex = numpy_rng(self.seed, g, Stage.SAMPLER, _LABEL_STREAM).random(2)
                if cfg.age_months is None:
                    age[row] = cond.draw_age(np.array([u_age]))[0]
                else:
                    lo, hi = cfg.age_months
                    age[row] = lo + u_age * (hi - lo)
                female[row] = cfg.sex == "female" or (cfg.sex == "any" and u_sex < cond.female_share[0])
            z_id[:] = space.condition_z(age, female, z_id.astype(np.float64)).astype(np.float32)
            sex = ["female" if f else "male" for f in female.tolist()]
            return age.astype(np.float32), sex, np.zeros(b, bool)
        readout = space.readout
        if readout is None:
            return np.full(b, np.nan, np.float32), [None] * b, np.ones(b, bool)
        predicted = readout.predict(z_id.astype(np.float64))  # (B, 2)
        age = age_from_feature(predicted[:, 0]).astype(np.float32)
        sex = ["female" if p >= 0.5 else "male" for p in predicted[:, 1]]
        return age, sex, np.ones(b, bool)

    def _au_expression(self, index: int, weights: np.ndarray) -> str:
        """Fill `weights` (n_ex,) for sample `index` of the au sampler; return its label."""
        if self._targets:
            parts = []
            for name, e in self._targets.items():
                weights[e] += self.cfg.targets[name]
                parts.append(f"{name}:{self.cfg.targets[name]:.2f}")
            return "+".join(parts)
        rng = numpy_rng(self.seed, index, Stage.SAMPLER, _AU_STREAM)
        chosen = rng.choice(len(self._au_pool), size=self.cfg.num_random_aus, replace=False)
        values = rng.uniform(self.cfg.intensity_min, self.cfg.intensity_max, size=len(chosen))
        parts = []
        for c, v in zip(sorted(chosen.tolist()), values.tolist(), strict=True):
            name, e = self._au_pool[c]
            weights[e] += v
            parts.append(f"{name}:{v:.2f}")
        return "+".join(parts)

    def _interpolate(self, group: int, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Latents at position t in [0, 1] of sequence `group` (BabyFlow eq. 23: linear in z)."""
        id_a, ex_a = self._z_id(group), self._z_ex(group)
        id_b = (
            self._z_id(group, _END_ID_STREAM) if self.cfg.mode is not InterpolationMode.expression else id_a
        )
        ex_b = self._z_ex(group, _END_EX_STREAM) if self.cfg.mode is not InterpolationMode.identity else ex_a
        return (1 - t) * id_a + t * id_b, (1 - t) * ex_a + t * ex_b


def assign_splits(seed: int, groups: np.ndarray, splits: SplitConfig) -> list[str]:
    """The split of each identity group: a function of (seed, group) only, hence identity-disjoint."""
    out = []
    for g in np.asarray(groups, dtype=np.int64).tolist():
        u = numpy_rng(seed, g, Stage.SPLIT).random()
        out.append("train" if u < splits.train else "val" if u < splits.train + splits.val else "test")
    return out
