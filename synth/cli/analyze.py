"""`synth analyze [model=...] [out=DIR] [rho=0.99] [n_samples=200] ...`: latent analyses of a face model.

Writes `analysis.json`, `analysis.md` (the tables of docs/face-model.md, section Analyses), and with
figures=true `kde.png` (BabyFlow Fig. 8) and `pairs.png` (with-NF samples and their nearest without-NF
neighbours, Fig. 9 / 10 / 12) into `out`.
"""

import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synth.cli._hydra import run
from synth.fitting.config import AnalyzeConfig

log = logging.getLogger(__name__)


def _task(config: AnalyzeConfig, raw: DictConfig) -> int:
    import numpy as np

    from synth.analysis import analysis
    from synth.atomic import atomic_write_bytes, atomic_write_text
    from synth.build.build import resolve_model
    from synth.build.report import kde_figure
    from synth.facemodel.model import FaceModel

    out = Path(config.out)
    start = time.perf_counter()
    model = FaceModel.load(resolve_model(config.model, progress=True))
    rng = np.random.default_rng(config.seed)
    pa = {
        factor: analysis.factor_parallel_analysis(
            model, factor, config.pa_draws, config.pa_quantile, config.pa_max_columns, rng
        )
        for factor in ("identity", "expression")
    }
    log.info("parallel analysis: %s", {k: v["significant"] for k, v in pa.items()})
    sampling = analysis.sampling_analysis(
        model, max(pa["identity"]["significant"], 1), max(pa["expression"]["significant"], 1), config.rho,
        config.n_samples, config.n_pairs, config.n_train, config.seed,
    )  # fmt: skip
    figure = sampling.pop("_figure")
    result = {
        "parallel_analysis": pa,
        "sampling": sampling,
        "gaussianity": analysis.gaussianity_table(model),
    }
    if config.figures:
        atomic_write_bytes(out / "kde.png", kde_figure(model))
        atomic_write_bytes(
            out / "pairs.png",
            analysis.pairs_figure(model, figure["meshes"], figure["pairs"], config.figure_pairs),
        )
    record = {
        "config": OmegaConf.to_container(raw, resolve=True),
        "model_id": model.model_id,
        "result": result,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_text(out / "analysis.md", analysis.analysis_markdown(result))
    atomic_write_text(out / "analysis.json", json.dumps(record, indent=1, default=str) + "\n")
    sys.stdout.write(f"{out / 'analysis.json'}\n")
    return 0


def main() -> int:
    return run("analyze", _task)
