"""Age and sex on every sample: conditioning in the identity latent space, labels in meta.json / index."""

import dataclasses
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
from synth.sources.conditioning import age_from_feature, fit_readout


def _space(readout=None) -> LatentSpace:
    return LatentSpace(
        dim_id=6, dim_ex=3, expression_names=("neutral", "happy"), au_names=("AU12",),
        expression_aus=np.array([[0.0], [1.0]], np.float32), readout=readout,
    )  # fmt: skip


def _readout():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((60, 6))
    y = np.stack([0.3 * z[:, 0] + 4.5, (z[:, 1] > 0).astype(float)], axis=1)
    return fit_readout(z, y, np.arange(60))


def test_conditioned_identities_carry_their_targets_and_groups_share_them() -> None:
    cfg = SamplerConfig(
        kind=SamplerKind.identity_sets,
        expressions_per_identity=2,
        age_months=[11, 13],
        sex="male",
        expressions_from=ExpressionSource.flow,  # the test's model has no single-AU expressions
    )
    plan = Sampler(cfg, 5, _space(_readout())).plan(np.arange(30))
    assert np.all((plan.age_months >= 11) & (plan.age_months <= 13)) and set(plan.sex) == {"male"}
    assert not plan.label_estimated.any()
    for g in np.unique(plan.group):  # one identity per group: same latent, same label
        rows = plan.group == g
        assert np.ptp(plan.z_id[rows], axis=0).max() == 0 and np.ptp(plan.age_months[rows]) == 0
    # the readout of the conditioned latents gives back the targets up to the readout's residual draw
    # (its age residual comes from the sex label's, a threshold the linear readout cannot fit exactly)
    predicted = _readout().predict(plan.z_id.astype(np.float64))
    np.testing.assert_allclose(age_from_feature(predicted[:, 0]), plan.age_months, atol=0.5)
    # unconditioned: estimated labels, same latent draws as without a readout
    free = Sampler(dataclasses.replace(cfg, age_months=None, sex="any"), 5, _space(_readout())).plan(
        np.arange(6)
    )
    bare = Sampler(dataclasses.replace(cfg, age_months=None, sex="any"), 5, _space()).plan(np.arange(6))
    np.testing.assert_array_equal(free.z_id, bare.z_id)
    assert free.label_estimated.all() and np.isnan(bare.age_months).all() and bare.sex == [None] * 6


def test_conditioning_needs_a_labelled_model_and_valid_values() -> None:
    with pytest.raises(SynthError, match="age / sex labels"):
        Sampler(SamplerConfig(sex="female"), 0, _space())
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
