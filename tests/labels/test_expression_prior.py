"""The expression prior alone (no face model): base rates, sparsity, neutral share, exclusions, data."""

import copy
import json
from importlib import resources

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.labels.expression_prior import (
    ACTIVE,
    ExpressionPrior,
    ExpressionPriorConfig,
    expression_prior,
    load_prior_data,
    parse_prior,
)
from synth.labels.expressions import load_catalogue

AU_NAMES = load_catalogue().au_names


@pytest.fixture(scope="module")
def prior() -> ExpressionPrior:
    return expression_prior(ExpressionPriorConfig(), AU_NAMES)


@pytest.fixture(scope="module")
def draws(prior: ExpressionPrior):
    return prior.draw(np.random.default_rng(123), 4000)


def _doc() -> dict:
    text = resources.files("synth.labels").joinpath("data", "expression_prior.json").read_text()
    return json.loads(text)


def test_base_rates_meet_the_configured_targets(prior: ExpressionPrior, draws) -> None:
    rates = prior.unit_rates(draws.aus)
    ratio = rates / prior.targets
    off = {u: round(float(r), 2) for u, r in zip(prior.units, ratio, strict=True) if not 1 / 1.5 <= r <= 1.5}
    assert not off, f"base rates off their targets by more than x1.5: {off}"
    # the frequent units are within 15 % (binomial noise at 4000 draws is ~5 %); AU25 loses to the exclusive
    # lip actions and the sparse part's cap, and sits lower
    common = (prior.targets >= 0.1) & (np.array(prior.units) != "AU25")
    assert np.abs(ratio[common] - 1).max() < 0.15


def test_targets_follow_the_cited_ordering(prior: ExpressionPrior) -> None:
    target = dict(zip(prior.units, prior.targets, strict=True))
    top = sorted(target, key=target.get, reverse=True)[:5]
    assert "AU25" in top and "AU12" in top
    assert target["AU25"] == pytest.approx(2.16 * 0.235, abs=2e-3)  # DISFA: AU25 about twice AU12
    assert target["AU9"] < target["AU12"] / 3  # DISFA: AU9 about a third of AU12
    assert target["AU1"] < target["AU12"] / 2 and target["AU2"] < target["AU12"] / 2


def test_neutral_share_and_sparsity(prior: ExpressionPrior, draws) -> None:
    summary = prior.summary(draws.aus)
    assert abs(summary["neutral_share"] - 0.372) < 0.02
    assert 1 <= summary["median_active_units"] <= 4 and 1 <= summary["median_active_columns"] <= 4
    units = prior.unit_activity(draws.aus).sum(axis=1)
    assert (units <= 4).mean() > 0.6  # most faces move 0-4 AUs
    assert summary["clipped_share"] == 0.0
    active = draws.aus[draws.aus > 0]
    assert (
        active.min() > ACTIVE and active.max() <= 1.0
    )  # nothing between 0 and the threshold, nothing clipped


def test_neutral_share_is_configurable() -> None:
    p = expression_prior(ExpressionPriorConfig(neutral_share=0.1), AU_NAMES)
    aus = p.draw(np.random.default_rng(0), 3000).aus
    assert abs(p.summary(aus)["neutral_share"] - 0.1) < 0.02


def test_prototypes_appear_with_their_units(prior: ExpressionPrior, draws) -> None:
    act = prior.unit_activity(draws.aus)
    col = {u: i for i, u in enumerate(prior.units)}
    labels = np.array(draws.label)
    smiles = labels == "smile"
    assert smiles.mean() > 0.05  # smile is the most frequent prototype
    assert act[smiles, col["AU12"]].all()
    cries = labels == "cry_face"
    assert act[cries, col["AU25"]].all() and act[cries, col["AU4"]].mean() > 0.7
    assert set(prior.prototype_names) >= {
        "smile",
        "cry_face",
        "surprise",
        "sadness",
        "anger",
        "fear",
        "disgust",
    }
    contempt = draws.aus[labels == "contempt"]
    left, right = AU_NAMES.index("AU12_L"), AU_NAMES.index("AU12_R")
    assert ((contempt[:, left] > 0) != (contempt[:, right] > 0)).all()  # one-sided


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), n=st.integers(1, 64))
def test_exclusive_pairs_are_never_both_active(seed: int, n: int) -> None:
    p = expression_prior(ExpressionPriorConfig(), AU_NAMES)
    draw = p.draw(np.random.default_rng(seed), n)
    assert (p.exclusive_violations(draw.aus) == 0).all()
    assert len(draw.label) == n and draw.aus.shape == (n, len(AU_NAMES))


def test_the_exclusive_pairs_named_by_the_issue_are_in_the_data() -> None:
    pairs = {frozenset(p[:2]) for p in load_prior_data().exclusive}
    for a, b in (("jaw_left", "jaw_right"), ("AU43", "AU5"), ("AU23", "AU25"), ("AU26", "AU27")):
        assert frozenset((a, b)) in pairs


def test_a_draw_depends_only_on_its_generator(prior: ExpressionPrior) -> None:
    a = prior.draw(np.random.default_rng([7, 11]), 1)
    b = prior.draw(np.random.default_rng([7, 11]), 1)
    np.testing.assert_array_equal(a.aus, b.aus)
    assert a.label == b.label


def test_units_the_model_cannot_make_are_left_out() -> None:
    available = np.array([n in ("AU12_L", "AU12_R", "AU26", "AU43_L", "AU43_R") for n in AU_NAMES])
    p = ExpressionPrior(ExpressionPriorConfig(), AU_NAMES, available)
    assert set(p.units) == {"AU12", "AU26", "AU43"}
    aus = p.draw(np.random.default_rng(0), 500).aus
    assert (aus[:, ~available] == 0).all() and (aus[:, available] > 0).any()
    with pytest.raises(ValueError, match="single-AU expressions"):
        ExpressionPrior(ExpressionPriorConfig(), AU_NAMES, np.zeros(len(AU_NAMES), bool))


def test_config_overrides_and_their_errors() -> None:
    p = expression_prior(
        ExpressionPriorConfig(base_rates={"AU9": 0.3}, prototype_weights={"smile": 0}), AU_NAMES
    )
    assert "smile" not in p.prototype_names
    aus = p.draw(np.random.default_rng(1), 3000).aus
    assert p.unit_rates(aus)[p.units.index("AU9")] == pytest.approx(0.3, rel=0.15)
    with pytest.raises(ValueError, match=r"sampler\.prior\.base_rates\.AU99: unknown unit"):
        ExpressionPrior(ExpressionPriorConfig(base_rates={"AU99": 0.1}), AU_NAMES)
    with pytest.raises(ValueError, match=r"sampler\.prior\.prototype_weights\.grin: unknown prototype"):
        ExpressionPrior(ExpressionPriorConfig(prototype_weights={"grin": 1.0}), AU_NAMES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["units"][0].update(source="nowhere"), "cites unknown source 'nowhere'"),
        (lambda d: d["exclusive"].append({"pair": ["AU12", "AU99"], "why": ""}), "names an unknown unit"),
        (lambda d: d["prototypes"][0]["aus"].update(AU99=[1.0, 1.0]), "uses unknown unit 'AU99'"),
        (
            lambda d: d["prototypes"][0]["aus"].update(jaw_left=[1.0, 1.0], jaw_right=[1.0, 1.0]),
            "always uses the exclusive pair",
        ),
        (lambda d: d["units"][0].update(base_rate=1.5), "outside"),
        (lambda d: d.update(version=2), "version 1"),
    ],
)
def test_bad_prior_data_is_refused_with_the_entry(change, message: str) -> None:
    doc = copy.deepcopy(_doc())
    change(doc)
    with pytest.raises(ValueError, match=message):
        parse_prior(doc)


def test_every_unit_covers_catalogue_columns_once() -> None:
    data = load_prior_data()
    columns = [c for cols in data.columns for c in cols]
    assert sorted(columns) == sorted(AU_NAMES)  # the 31 units partition the 46 catalogue columns
    assert all(s.split("+")[0] in data.citations for s in data.sources)


@settings(max_examples=10, deadline=None)
@given(start=st.integers(0, 10**8), n=st.integers(200, 1500), offset=st.floats(0, 1, exclude_max=True))
def test_indexed_draws_hit_the_neutral_share_over_any_range(start: int, n: int, offset: float) -> None:
    p = expression_prior(ExpressionPriorConfig(), AU_NAMES)
    draw = p.draw(np.random.default_rng(start), n, index=np.arange(start, start + n), offset=offset)
    assert abs((draw.kind == 0).mean() - 0.372) < 3 / n + 1e-9  # golden-ratio sequence: O(1/n), not +-1.5 %
    assert ((draw.kind == 0) == ~(draw.aus > 0).any(axis=1)).all()
