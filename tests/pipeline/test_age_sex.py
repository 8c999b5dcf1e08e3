"""Age and sex on every sample: conditioning in the identity latent space, labels in meta.json / index."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from synth.cli._hydra import compose_config
from synth.errors import SynthError
from synth.pipeline.config import ExpressionSource, SamplerConfig, SamplerKind
from synth.pipeline.run import generate
from synth.pipeline.samplers import LatentSpace, Sampler
from synth.sources.conditioning import fit_readout
from tests.facemodel.test_conditional import conditional


def _space(readout=None, conditional=None) -> LatentSpace:
    return LatentSpace(
        dim_id=3, dim_ex=3, expression_names=("neutral", "happy"), au_names=("AU12",),
        expression_aus=np.array([[0.0], [1.0]], np.float32), readout=readout, conditional=conditional,
        condition_z=None if conditional is None else conditional.sample_u,  # flow = identity map
    )  # fmt: skip


def _readout():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((60, 3))
    y = np.stack([0.3 * z[:, 0] + 4.5, (z[:, 1] > 0).astype(float)], axis=1)
    return fit_readout(z, y, np.arange(60))


def _cfg(**kw) -> SamplerConfig:
    fields = {"kind": SamplerKind.identity_sets, "expressions_per_identity": 2, **kw}
    # the test's model has no single-AU expressions: expressions from the flow
    return SamplerConfig(expressions_from=ExpressionSource.flow, **fields)


def test_conditioned_identities_carry_their_targets_and_groups_share_them() -> None:
    cond = conditional()
    plan = Sampler(_cfg(age_months=[11, 13], sex="male"), 5, _space(_readout(), cond)).plan(np.arange(30))
    assert np.all((plan.age_months >= 11) & (plan.age_months <= 13)) and set(plan.sex) == {"male"}
    assert not plan.label_estimated.any()
    for g in np.unique(plan.group):  # one identity per group: same latent, same label
        rows = plan.group == g
        assert np.ptp(plan.z_id[rows], axis=0).max() == 0 and np.ptp(plan.age_months[rows]) == 0
    # the latents are the conditional's draws at the labels, from the sampler's usual noise
    free = Sampler(_cfg(), 5, _space()).plan(np.arange(30))
    expected = cond.sample_u(plan.age_months, np.zeros(30, bool), free.z_id.astype(np.float64))
    np.testing.assert_allclose(plan.z_id, expected, rtol=1e-6, atol=1e-6)


def test_a_sex_alone_draws_ages_from_the_source_and_any_sex_draws_its_share() -> None:
    cond = conditional()
    girls = Sampler(_cfg(expressions_per_identity=1, sex="female"), 1, _space(None, cond)).plan(
        np.arange(2000)
    )
    assert set(girls.sex) == {"female"} and not girls.label_estimated.any()
    assert girls.age_months.min() >= 0 and girls.age_months.max() <= 36
    np.testing.assert_allclose(np.median(girls.age_months), 18.0, atol=1.5)  # the test law is uniform
    anyone = Sampler(_cfg(expressions_per_identity=1, age_months=[0, 36]), 1, _space(None, cond))
    share = np.mean(np.array(anyone.plan(np.arange(2000)).sex) == "female")
    assert abs(share - 0.4) < 0.04


def test_unconditioned_labels_are_the_readout_estimates() -> None:
    free = Sampler(_cfg(), 5, _space(_readout(), conditional())).plan(np.arange(6))
    bare = Sampler(_cfg(), 5, _space()).plan(np.arange(6))
    np.testing.assert_array_equal(free.z_id, bare.z_id)
    assert free.label_estimated.all() and np.isfinite(free.age_months).all()
    assert np.isnan(bare.age_months).all() and bare.sex == [None] * 6


def test_conditioning_needs_a_conditional_and_valid_values() -> None:
    with pytest.raises(SynthError, match="no age / sex conditional"):
        Sampler(SamplerConfig(sex="female"), 0, _space(_readout()))
    with pytest.raises(SynthError, match="span 0-36 months"):
        Sampler(SamplerConfig(age_months=[30, 48]), 0, _space(None, conditional()))
    with pytest.raises(ValueError, match=r"sampler\.age_months"):
        SamplerConfig(age_months=[13, 11])
    with pytest.raises(ValueError, match=r"sampler\.sex"):
        SamplerConfig(sex="other")


@pytest.mark.slow
def test_generate_writes_age_sex_and_head_circumference_on_every_sample(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    overrides = [
        f"model.path={tiny_model_dir}", f"output.dir={out}", "num_samples=10", "render.image_size=32",
        "output.samples_per_shard=5", "runtime.progress=false", "runtime.executor=local",
        "sampler=identity_sets", "sampler.age_months=[11,13]", "sampler.sex=female",
    ]  # fmt: skip
    generate(compose_config("generate", overrides))
    index = pq.read_table(out / "index").to_pandas().sort_values("index")
    assert index["age_months"].between(11, 13).all() and (index["sex"] == "female").all()
    assert index["head_circumference_mm"].between(250, 600).all()
    # the neutral twin and its expressions share the identity's head circumference
    groups = index.groupby("identity_id")["head_circumference_mm"].nunique()
    assert (groups == 1).all()
    with tarfile.open(next(out.glob("shard-*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("meta.json"))
        meta = json.loads(tar.extractfile(member).read())
    assert meta["sex"] == "female" and 11 <= meta["age_months"] <= 13 and meta["age_sex_estimated"] is False
    row = index[index["index"] == meta["index"]].iloc[0]
    assert meta["head_circumference_mm"] == pytest.approx(float(row["head_circumference_mm"]), rel=1e-6)
