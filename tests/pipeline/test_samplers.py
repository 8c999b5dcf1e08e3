"""Samplers: sample i's latents depend only on (seed, i, config); splits are identity-disjoint."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from synth.errors import SynthError
from synth.labels.expression_prior import ExpressionPriorConfig
from synth.labels.expressions import load_catalogue
from synth.pipeline.config import ExpressionSource, InterpolationMode, SamplerConfig, SamplerKind, SplitConfig
from synth.pipeline.samplers import LatentSpace, Sampler, assign_splits
from synth.seeding import Stage, torch_generator

AUS = ("AU1", "AU2", "AU12")
EXPRESSIONS = ("neutral", "inner_brow_raiser", "outer_brow_raiser", "lip_corner_puller", "happiness")
EXPRESSION_AUS = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0, 1]],
    dtype=np.float32,
)
SPACE = LatentSpace(
    dim_id=5, dim_ex=4, expression_names=EXPRESSIONS, au_names=AUS, expression_aus=EXPRESSION_AUS
)


CATALOGUE = load_catalogue()
CAT_SPACE = LatentSpace(
    dim_id=5,
    dim_ex=4,
    expression_names=CATALOGUE.expression_names,
    au_names=CATALOGUE.au_names,
    expression_aus=CATALOGUE.expression_aus,
)  # the real catalogue: every AU has its single-AU expression, so the expression prior has all its units


def sampler(seed: int = 3, **kw) -> Sampler:
    """A sampler over the small fake space; the flow's expressions unless the test asks otherwise."""
    kw = {"kind": SamplerKind.random, "expressions_from": ExpressionSource.flow} | kw
    return Sampler(SamplerConfig(**kw), seed, SPACE)


def prior_sampler(seed: int = 3, **kw) -> Sampler:
    """A sampler over the real catalogue, expressions from the expression prior (the defaults)."""
    return Sampler(SamplerConfig(**kw), seed, CAT_SPACE)


def test_random_sampler_draws_what_face_model_sample_draws() -> None:
    plan = sampler(seed=7).plan(np.array([0, 5]))
    for row, index in enumerate((0, 5)):
        gen = torch_generator(7, index, Stage.LATENT)
        np.testing.assert_array_equal(plan.z_id[row], torch.randn(5, generator=gen).numpy())
        np.testing.assert_array_equal(plan.z_ex[row], torch.randn(4, generator=gen).numpy())
    assert plan.expression == ["sampled", "sampled"]
    assert not plan.use_catalogue.any()
    np.testing.assert_array_equal(plan.group, [0, 5])


@pytest.mark.parametrize("kind", list(SamplerKind))
@settings(max_examples=15, deadline=None)
@given(indices=st.lists(st.integers(0, 200), min_size=1, max_size=12, unique=True))
def test_a_sample_does_not_depend_on_its_batch(kind: SamplerKind, indices: list[int]) -> None:
    s = prior_sampler(kind=kind, targets={"AU12_L": 1.5} if kind is SamplerKind.au else {})
    together = s.plan(np.array(indices))
    for row, index in enumerate(indices):
        alone = s.plan(np.array([index]))
        for field in ("z_id", "z_ex", "expr_weights", "use_catalogue", "group", "step", "use_aus", "aus"):
            np.testing.assert_array_equal(getattr(together, field)[row], getattr(alone, field)[0])
        assert together.expression[row] == alone.expression[0]


def test_seeds_change_the_draws() -> None:
    a = sampler(seed=0).plan(np.arange(4))
    b = sampler(seed=1).plan(np.arange(4))
    assert not np.allclose(a.z_id, b.z_id)
    assert len({tuple(r) for r in a.z_id}) == 4


def test_temperature_and_truncation() -> None:
    base = sampler().plan(np.arange(50))
    hot = sampler(temperature=0.5).plan(np.arange(50))
    np.testing.assert_allclose(hot.z_id, 0.5 * base.z_id, rtol=1e-6)
    cut = sampler(truncation=0.5).plan(np.arange(50))
    beta = np.sqrt(chi2.ppf(0.5, 5))
    norms = np.linalg.norm(cut.z_id, axis=1)
    assert norms.max() <= beta * (1 + 1e-5)
    inside = np.linalg.norm(base.z_id, axis=1) <= beta
    np.testing.assert_array_equal(cut.z_id[inside], base.z_id[inside])  # untouched inside the sphere
    assert (~inside).any()


def test_au_targets_by_au_name_and_expression_name_with_extrapolation() -> None:
    plan = sampler(kind=SamplerKind.au, targets={"AU12": 1.5, "happiness": 0.5}).plan(np.arange(3))
    assert plan.use_catalogue.all()
    expected = np.zeros(len(EXPRESSIONS), np.float32)
    expected[EXPRESSIONS.index("lip_corner_puller")] = 1.5  # the single-AU expression of AU12
    expected[EXPRESSIONS.index("happiness")] = 0.5
    np.testing.assert_array_equal(plan.expr_weights, np.tile(expected, (3, 1)))
    assert plan.expression[0] == "AU12:1.50+happiness:0.50"
    assert len({tuple(r) for r in plan.z_id}) == 3  # identities still vary


def test_au_random_draws_are_au_vectors_in_range() -> None:
    s = sampler(kind=SamplerKind.au, num_random_aus=2, intensity_min=0.2, intensity_max=1.4)
    plan = s.plan(np.arange(40))
    assert plan.use_aus.all() and not plan.use_catalogue.any()
    nonzero = plan.aus[plan.aus > 0]
    assert ((plan.aus > 0).sum(1) == 2).all()
    assert nonzero.min() >= 0.2 and nonzero.max() <= 1.4
    assert all(label.count(":") == 2 for label in plan.expression)


def test_au_random_draws_follow_the_prior_base_rates_and_exclusions() -> None:
    s = prior_sampler(kind=SamplerKind.au, num_random_aus=3)
    plan = s.plan(np.arange(1500))
    assert s.prior is not None
    assert (s.prior.exclusive_violations(plan.aus) == 0).all()
    active = plan.aus > 0
    names = CATALOGUE.au_names
    # AU25 (base rate 0.51) is drawn far more often than AU9 (0.075) and jaw_left (0.01)
    assert active[:, names.index("AU25")].mean() > 3 * active[:, names.index("AU9")].mean()
    assert active[:, names.index("AU9")].mean() > active[:, names.index("jaw_left")].mean()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), start=st.integers(0, 10**6))
def test_no_sampler_ever_moves_an_exclusive_pair(seed: int, start: int) -> None:
    indices = np.arange(start, start + 24)
    for kw in (
        {},
        {"kind": SamplerKind.identity_sets},
        {"kind": SamplerKind.interpolation, "steps": 4},
        {"kind": SamplerKind.au, "num_random_aus": 4},
    ):
        s = prior_sampler(seed=seed, **kw)
        plan = s.plan(indices)
        assert s.prior is not None
        assert (s.prior.exclusive_violations(plan.aus) == 0).all(), kw


def test_prior_sampler_plans_exact_au_vectors() -> None:
    plan = prior_sampler(seed=5).plan(np.arange(300))
    assert plan.use_aus.all() and not plan.use_catalogue.any()
    neutral = ~(plan.aus > 0).any(axis=1)
    assert [plan.expression[i] for i in np.flatnonzero(neutral)] == ["neutral"] * int(neutral.sum())
    assert 0.25 < neutral.mean() < 0.5  # the configured 0.372
    assert plan.aus.max() <= 1.0 and plan.aus[plan.aus > 0].min() > 0.1
    assert "smile" in plan.expression and "cry_face" in plan.expression
    assert len({tuple(r) for r in plan.z_id}) == 300


def test_prior_sampler_refuses_a_model_without_single_au_expressions() -> None:
    with pytest.raises(SynthError, match=r"sampler=prior: .*single-AU expressions"):  # SPACE: fake AU names
        Sampler(SamplerConfig(), 0, SPACE)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"targets": {"AU99": 1.0}}, "sampler.targets.AU99"),
        ({"au_pool": ["AU1", "AU7"]}, "sampler.au_pool"),
        ({"au_pool": ["AU1"], "num_random_aus": 2}, "sampler.num_random_aus"),
    ],
)
def test_au_sampler_refuses_what_the_model_lacks(kw: dict, match: str) -> None:
    with pytest.raises(SynthError, match=match):
        sampler(kind=SamplerKind.au, **kw)


def test_identity_sets_share_identity_and_start_with_the_neutral_twin() -> None:
    s = sampler(kind=SamplerKind.identity_sets, expressions_per_identity=3)
    plan = s.plan(np.arange(12))
    np.testing.assert_array_equal(plan.group, np.repeat(np.arange(3), 4))
    for g in range(3):
        rows = plan.z_id[4 * g : 4 * g + 4]
        np.testing.assert_array_equal(rows, np.tile(rows[0], (4, 1)))
    assert not np.allclose(plan.z_id[0], plan.z_id[4])
    neutral = plan.step == 0
    assert plan.use_catalogue[neutral].all() and plan.expr_weights[neutral].sum() == 0
    assert {plan.expression[i] for i in np.flatnonzero(neutral)} == {"neutral"}
    assert not plan.use_catalogue[~neutral].any()  # no expression list: flow-prior expressions
    with_prior = prior_sampler(kind=SamplerKind.identity_sets, expressions_per_identity=3).plan(np.arange(12))
    assert (
        with_prior.use_aus[with_prior.step > 0].all() and not with_prior.use_aus[with_prior.step == 0].any()
    )
    named = sampler(kind=SamplerKind.identity_sets, expressions_per_identity=2, expressions=["happiness"])
    assert named.plan(np.arange(3)).expression == ["neutral", "happiness", "happiness"]


@pytest.mark.parametrize("mode", list(InterpolationMode))
def test_interpolation_is_linear_between_endpoints(mode: InterpolationMode) -> None:
    plan = sampler(kind=SamplerKind.interpolation, steps=5, mode=mode).plan(np.arange(10))
    z_id, z_ex = plan.z_id[:5], plan.z_ex[:5]
    np.testing.assert_allclose(z_id[2], (z_id[0] + z_id[4]) / 2, atol=1e-6)
    np.testing.assert_allclose(z_ex[1], 0.75 * z_ex[0] + 0.25 * z_ex[4], atol=1e-6)
    assert np.allclose(z_id[0], z_id[4]) == (mode is InterpolationMode.expression)
    assert np.allclose(z_ex[0], z_ex[4]) == (mode is InterpolationMode.identity)
    assert not np.allclose(plan.z_id[0], plan.z_id[5])  # the next sequence starts elsewhere
    assert plan.expression[4] == f"interp:{mode.value}:1.000"
    aus = prior_sampler(kind=SamplerKind.interpolation, steps=5, mode=mode).plan(np.arange(40)).aus
    seqs = aus.reshape(8, 5, -1)  # 8 sequences of 5 AU vectors
    np.testing.assert_allclose(seqs[:, 1], 0.75 * seqs[:, 0] + 0.25 * seqs[:, 4], atol=1e-6)
    moves = [not np.array_equal(q[0], q[4]) for q in seqs]
    assert any(moves) != (mode is InterpolationMode.identity)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), groups=st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_splits_are_a_function_of_the_group(seed: int, groups: list[int]) -> None:
    splits = SplitConfig()
    a = assign_splits(seed, np.array(groups), splits)
    b = assign_splits(seed, np.array(groups[::-1]), splits)[::-1]
    assert a == b
    assert set(a) <= {"train", "val", "test"}


def test_split_fractions_and_identity_disjointness() -> None:
    s = sampler(kind=SamplerKind.identity_sets, expressions_per_identity=4)
    plan = s.plan(np.arange(5000))
    split = assign_splits(3, plan.group, SplitConfig(train=0.7, val=0.2, test=0.1))
    by_group: dict[int, set[str]] = {}
    for g, sp in zip(plan.group.tolist(), split, strict=True):
        by_group.setdefault(g, set()).add(sp)
    assert all(len(v) == 1 for v in by_group.values())  # one identity -> one split
    first = [next(iter(v)) for v in by_group.values()]
    fractions = {k: first.count(k) / len(first) for k in ("train", "val")}
    assert abs(fractions["train"] - 0.7) < 0.08 and abs(fractions["val"] - 0.2) < 0.08
    only_train = assign_splits(3, np.arange(100), SplitConfig(train=1.0, val=0.0, test=0.0))
    assert set(only_train) == {"train"}


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"temperature": 0.0}, "sampler.temperature"),
        ({"truncation": 1.0}, "sampler.truncation"),
        ({"targets": {"AU12": 9.0}}, "sampler.targets.AU12"),
        ({"intensity_min": 0.8, "intensity_max": 0.5}, "sampler.intensity_min"),
        ({"steps": 1}, "sampler.steps"),
        ({"expressions_per_identity": 0}, "sampler.expressions_per_identity"),
        ({"prior": lambda: ExpressionPriorConfig(neutral_share=1.0)}, "sampler.prior.neutral_share"),
        ({"prior": lambda: ExpressionPriorConfig(scale_min=0.0)}, "sampler.prior.scale_min"),
        ({"prior": lambda: ExpressionPriorConfig(intensity_min=0.1)}, "sampler.prior.intensity_min"),
        ({"prior": lambda: ExpressionPriorConfig(base_rates={"AU12": 1.2})}, "sampler.prior.base_rates.AU12"),
        (
            {"prior": lambda: ExpressionPriorConfig(prototype_weights={"smile": -1})},
            "sampler.prior.prototype_weights",
        ),
    ],
)
def test_sampler_config_validation_names_the_key(kw: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        SamplerConfig(**{k: v() if callable(v) else v for k, v in kw.items()})


def test_split_config_must_sum_to_one() -> None:
    with pytest.raises(ValueError, match=r"splits\.train"):
        SplitConfig(train=0.5, val=0.1, test=0.1)
