"""Running a subcommand as a Hydra app with front-loaded validation.

Hydra reports a bad override with a multi-line message and exit code 1; synth promises one line and exit
code 2 with nothing written. So, outside multirun, the config is composed and converted to its dataclass
(which validates itself in `__post_init__`) before Hydra runs; inside the task the same conversion happens
once more and a `SynthError` becomes one line on stderr and exit code 2.
"""

import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synth.config import register_configs
from synth.errors import SynthError

CONFIG_MODULE = "synth.conf"


def to_object(cfg: DictConfig) -> Any:
    """The dataclass instance of a composed config; validation errors become `SynthError`."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise SynthError(_one_line(err)) from None
    except ValueError as err:
        raise SynthError(str(err)) from None


def compose_config(config_name: str, overrides: list[str]) -> Any:
    """Compose `config_name` with `overrides` and return the validated dataclass (for tests and precheck)."""
    register_configs()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise SynthError(_one_line(err)) from None
    return to_object(cfg)


def run(config_name: str, task: Callable[[Any, DictConfig], int | None]) -> int:
    """Run `task(config_object, raw_cfg)` as a Hydra app over `synth/conf/<config_name>.yaml`."""
    register_configs()
    args = sys.argv[1:]
    flags = {a for a in args if a.startswith("-")}
    multirun = bool(flags & {"-m", "--multirun"})
    informational = bool(flags & {"-h", "--help", "--hydra-help", "--cfg", "-c", "--info", "-i"})
    if not multirun and not informational:
        compose_config(config_name, [a for a in args if not a.startswith("-")])

    def _task(cfg: DictConfig) -> int | None:
        try:
            return task(to_object(cfg), cfg)
        except SynthError as err:
            sys.stderr.write(f"{sys.argv[0]}: error: {err}\n")
            sys.exit(2)

    hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name)(_task)()
    return 0


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text.replace("full_key: ", "key: ")
