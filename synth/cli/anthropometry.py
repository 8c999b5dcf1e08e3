"""`synth anthropometry [model=...] [out=DIR] [ages_months=[0,3,6,12,24,36]] [n_per_group=20] ...`: measure
infant heads against growth and caliper norms (docs/anthropometry.md).

Writes into `out`: `anthropometry.json` (config, model id, every table), `anthropometry.md` (the norm table
of the source's identities by age and sex, the prior population, the model samples against the source, and
every landmark distance) and `head_circumference.png` (head circumference against age over the WHO median
and +-2 SD per sex).
"""

import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synth.analysis.anthropometry_config import AnthropometryConfig
from synth.cli._hydra import run

log = logging.getLogger(__name__)


def _task(config: AnthropometryConfig, raw: DictConfig) -> int:
    import numpy as np
    import torch

    from synth.atomic import atomic_write_bytes, atomic_write_text
    from synth.build.config import ModelSource
    from synth.errors import SynthError
    from synth.labels import anthropometry as an
    from synth.sources.anny_anthropometry import measure_identities, measure_meshes
    from synth.sources.anny_source import sample_identities

    if config.model.source is not ModelSource.anny and config.model.path is None:
        raise SynthError(f"anthropometry: model.source={config.model.source.value}: needs the Anny source")
    start = time.perf_counter()
    out = Path(config.out)
    norms = an.load_norms()
    prior, n = config.model.anny, config.n_per_group

    # 1. The source's identities at each age and sex (fresh identity indices for every group).
    groups, pops = [], []
    for g, (age, sex) in enumerate((a, s) for a in config.ages_months for s in an.SEXES):
        params = sample_identities(prior, config.seed, n, start=g * n, age_months=age, sex=sex)
        pops.append(measure_identities(params))
        groups += [f"{age:g} m {sex}"] * n
    source = an.concat_populations(pops)
    groups = np.array(groups)
    table = an.norm_table(source, norms, groups)
    table_3d = an.norm_table_3d(source, norms, groups)
    log.info("source measured: %d identities", len(groups))

    # 2. The prior's own population (its age distribution), each identity against the norm at its age.
    population = measure_identities(sample_identities(prior, config.seed + 1, config.n_samples))
    population_rows = an.norm_table(population, norms, np.array(["prior ages"] * config.n_samples))

    # 3. Samples of the built model (neutral expression) against the prior population.
    model_id, sample_rows, figure_pops = None, [], {"source": source}
    conditioned_rows, readout_error = [], None
    if config.samples:
        from synth.build.build import resolve_model
        from synth.facemodel.model import FaceModel

        model = FaceModel.load(resolve_model(config.model, progress=True))
        model_id = model.model_id
        # the flow's samples follow the training identities (their ages: model.training_ages), so they are
        # held against those, decoded by the model
        pops3 = {}
        for name, w_id in (
            ("training identities", model.identity_coefficients),
            ("model samples", model.sample(config.n_samples, config.seed)["w_id"]),
        ):
            with torch.no_grad():
                meshes = model.decode(w_id, model.neutral_w_ex.expand(len(w_id), -1)).double().cpu().numpy()
            unknown = np.full(len(meshes), np.nan)
            pops3[name] = measure_meshes(meshes, unknown, np.array(["unknown"] * len(meshes)))
        sample_rows = an.distribution_rows(pops3)
        conditioned, readout_error = _conditioned_samples(model, config, groups)
        if conditioned is not None:
            conditioned_rows = an.norm_table(conditioned, norms, np.char.add("model ", groups))
            table_3d += an.norm_table_3d(conditioned, norms, np.char.add("model ", groups))
            figure_pops["model, sampler.age_months"] = conditioned
    result = {
        "config": OmegaConf.to_container(raw, resolve=True),
        "model_id": model_id,
        "norms": norms.sources,
        "source_by_age_sex": table,
        "prior_population": population_rows,
        "model_vs_training": sample_rows,
        "model_conditioned_by_age_sex": conditioned_rows,
        "other_distances_at_36_months": table_3d,
        "readout_held_out_rmse": readout_error,
        "landmark_distances": an.pair_table(source, groups),
        "seconds": time.perf_counter() - start,
    }
    atomic_write_bytes(out / "head_circumference.png", an.hc_figure(figure_pops, norms))
    atomic_write_text(out / "anthropometry.md", _markdown(result))
    atomic_write_text(out / "anthropometry.json", json.dumps(result, indent=1, default=str) + "\n")
    sys.stdout.write(f"{out / 'anthropometry.json'}\n")
    return 0


def _conditioned_samples(model, config: AnthropometryConfig, groups) -> tuple:
    """Neutral identities drawn by the generate sampler with `sampler.age_months=[a, a]` and `sampler.sex`
    for each source group (same ages, sexes and sizes), measured; (Population, readout error) or
    (None, None) for a model without an identity conditional. The readout error (None without a readout)
    is that of the labels of identities drawn without an age or sex."""
    import numpy as np
    import torch

    from synth.labels.anthropometry import SEXES, concat_populations
    from synth.pipeline.config import SamplerConfig
    from synth.pipeline.samplers import Sampler
    from synth.pipeline.stages import latent_space
    from synth.sources.anny_anthropometry import measure_meshes

    space = latent_space(model)
    if space.conditional is None:
        return None, None
    pops, n = [], config.n_per_group
    for g, (age, sex) in enumerate((a, s) for a in config.ages_months for s in SEXES):
        sampler = Sampler(SamplerConfig(age_months=[age, age], sex=sex), config.seed, space)
        plan = sampler.plan(np.arange(g * n, (g + 1) * n))
        with torch.no_grad():
            w_id = model.from_latent(torch.from_numpy(plan.z_id), torch.from_numpy(plan.z_ex))[0]
            meshes = model.decode(w_id, model.neutral_w_ex.expand(n, -1)).double().cpu().numpy()
        pops.append(measure_meshes(meshes, plan.age_months.astype(np.float64), np.array(plan.sex)))
    # held-out error of the age label in months: the readout's error (feature units, dm of WHO median head
    # circumference) over the feature's slope (dm per month) at each age
    from synth.sources.conditioning import age_feature

    if space.readout is None:
        return concat_populations(pops), None
    ages = np.asarray(config.ages_months, dtype=np.float64)
    low, high = np.maximum(ages - 0.5, 0.0), ages + 0.5
    slope = (age_feature(high) - age_feature(low)) / (high - low)
    error = space.readout.error
    months = {f"{a:g}": float(error[0] / s) for a, s in zip(ages, slope, strict=True)}
    return concat_populations(pops), {"age_months_at": months, "female_indicator": float(error[1])}


def _markdown(result: dict) -> str:
    from synth.labels.anthropometry import distribution_markdown, markdown_table, pair_markdown

    parts = [
        "# Anthropometry\n",
        f"Norms: {result['norms']['head_circumference']} / {result['norms']['facial']}\n",
        "## Source identities by age and sex\n",
        markdown_table(result["source_by_age_sex"]),
        "\n## The prior's population (its own ages)\n",
        markdown_table(result["prior_population"]),
    ]
    if result["model_vs_training"]:
        parts += [
            f"\n## Model {result['model_id']}: unconditioned samples vs its training identities\n",
            distribution_markdown(result["model_vs_training"]),
        ]
    if result["model_conditioned_by_age_sex"]:
        error = result["readout_held_out_rmse"]
        parts.append(
            f"\n## Model {result['model_id']} samples drawn with sampler.age_months=[a, a], sampler.sex\n"
        )
        if error is not None:
            parts.append(
                "(Identities drawn without an age or sex carry the readout's estimates; its "
                "leave-one-identity-out RMSE: age (months, at each age) "
                f"{', '.join(f'{k} m: {v:.1f}' for k, v in error['age_months_at'].items())}; "
                f"female indicator {error['female_indicator']:.2f}.)\n"
            )
        parts.append(markdown_table(result["model_conditioned_by_age_sex"]))
    if result["other_distances_at_36_months"]:
        parts += [
            "\n## Other distances at 36 months against 3D norms at 3 years (not calibrated against)\n",
            f"Norms: {result['norms']['facial_3d']}\n",
            markdown_table(result["other_distances_at_36_months"]),
        ]
    parts += [
        "\n## Every landmark distance (mean, SD mm) by group\n",
        pair_markdown(result["landmark_distances"]),
    ]
    return "\n".join(parts)


def main() -> int:
    return run("anthropometry", _task)
