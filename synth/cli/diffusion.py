"""`synth diffusion`: diffusion utilities.

synth diffusion make-tiny DIR [--seed S] [--overwrite]
    build the tiny randomly initialised SD1.5 + two-ControlNet pipeline in DIR (atomically)
synth diffusion check [diffusion=PRESET] [diffusion.KEY=VALUE ...]
    check that the weights of a diffusion preset (default sd15_controlnet) can be loaded, without
    loading them; exit 2 with one line naming what is missing
"""

import argparse
import logging
import sys

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synth.cli._hydra import CONFIG_MODULE, _one_line, to_object
from synth.diffusion.config import DiffusionConfig
from synth.errors import SynthError

log = logging.getLogger("synth.diffusion")
_FORMS = "diffusion=PRESET or diffusion.KEY=VALUE"


def compose_diffusion(overrides: list[str]) -> DiffusionConfig:
    """The validated `DiffusionConfig` of `diffusion=PRESET` (default sd15_controlnet) and
    `diffusion.KEY=VALUE` overrides, composed from `synth/conf/diffusion/` as `synth generate` does."""
    preset, keys = "sd15_controlnet", []
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise SynthError(
                f"override {item!r} is not KEY=VALUE; use diffusion=PRESET or diffusion.KEY=VALUE"
            )
        if name == "diffusion":
            preset = value
        elif name.startswith("diffusion."):
            keys.append(f"{name.removeprefix('diffusion.')}={value}")
        else:
            raise SynthError(
                f"override {item!r}: only diffusion=PRESET and diffusion.KEY=VALUE are allowed here"
            )
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            group = compose(config_name=None, overrides=[f"+diffusion={preset}"]).diffusion
        merged = OmegaConf.merge(OmegaConf.structured(DiffusionConfig), group, OmegaConf.from_dotlist(keys))
    except (HydraException, OmegaConfBaseException) as err:
        raise SynthError(_one_line(err)) from None
    return to_object(merged)


def main() -> int:
    parser = argparse.ArgumentParser(prog="synth diffusion", description="diffusion utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny", help="build the tiny offline test pipeline in DIR")
    tiny.add_argument("dir", help="output directory (created atomically)")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing tiny pipeline")
    check = sub.add_parser("check", help="check that a preset's weights can be loaded")
    check.add_argument("overrides", nargs="*", help="diffusion=PRESET and diffusion.KEY=VALUE")
    args = parser.parse_args(sys.argv[1:])

    if args.command == "make-tiny":
        from synth.diffusion.tiny import make_tiny_pipeline

        if args.seed < 0:
            raise SynthError(f"--seed={args.seed} must be >= 0")
        try:
            out = make_tiny_pipeline(args.dir, seed=args.seed, overwrite=args.overwrite)
        except FileExistsError as err:
            raise SynthError(str(err)) from None
        log.info("tiny pipeline ready in %s (use diffusion=tiny diffusion.tiny_dir=%s)", out, out)
        return 0

    from synth.diffusion.loading import check_weights

    cfg = compose_diffusion(args.overrides)
    if not cfg.enabled:
        log.info("diffusion.kind=none: no weights needed")
        return 0
    sources = check_weights(cfg)
    log.info("weights found: base=%s depth=%s canny=%s", sources.base, sources.depth, sources.canny)
    return 0
