"""`synth build-model [model=anny_infant|tiny|tensor] [model.out=DIR] [overrides]`: build a face model."""

import logging
import sys

from omegaconf import DictConfig

from synth.build.config import BuildModelConfig
from synth.cli._hydra import run

log = logging.getLogger(__name__)


def _task(config: BuildModelConfig, _raw: DictConfig) -> int:
    from synth.build.build import build_model

    path = build_model(config.model, out_dir=config.model.out, progress=True)
    sys.stdout.write(f"{path}\n")
    return 0


def main() -> int:
    return run("build_model", _task)
