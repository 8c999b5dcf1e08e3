"""`synth generate [overrides]`: generate a dataset (`synth/conf/generate.yaml`, docs/operations.md)."""

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from synth.cli._hydra import run
from synth.pipeline.config import GenerateConfig

log = logging.getLogger(__name__)


def task(cfg: GenerateConfig, raw: DictConfig) -> int:
    """One Hydra job: in multirun, job N writes its dataset to the job's sweep directory."""
    from synth.pipeline.run import generate

    output_dir = None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is RunMode.MULTIRUN:
        output_dir = Path(hydra_cfg.runtime.output_dir)
        log.info("multirun job %s -> %s (%s)", hydra_cfg.job.num, output_dir, hydra_cfg.job.override_dirname)
    generate(cfg, output_dir)
    return 0


def main() -> int:
    return run("generate", task)
