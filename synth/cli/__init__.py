"""The `synth` command: `synth <subcommand> [args or Hydra overrides]`.

`command()` is the console script: the process is synth's, so it runs on the pinned CPU code path
(`synth.cpu`). `main(argv)` is the same command for Python callers, in their process as it is.

Each subcommand is a module `synth.cli.<name>` with a `main() -> int | None`; the module is imported only
when its subcommand runs, so `synth validate` does not pay for torch/diffusers/ray imports it does not use.
"""

import importlib
import logging
import sys

from synth import cpu
from synth.errors import SynthError

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("synth.cli.generate", "generate a dataset (Hydra overrides)"),
    "build-model": ("synth.cli.build_model", "build a face model (Hydra overrides)"),
    "model-report": ("synth.cli.model_report", "evaluate a built face model"),
    "validate": ("synth.cli.validate", "check a dataset directory"),
    "expressions": ("synth.cli.expressions", "a dataset's expressions vs the expression prior, label errors"),
    "preview": ("synth.cli.preview", "contact sheet of a dataset's first samples"),
    "diffusion": ("synth.cli.diffusion", "diffusion utilities (make-tiny DIR)"),
    "fit": ("synth.cli.fit", "fit / neutralise meshes (Hydra overrides)"),
    "analyze": ("synth.cli.analyze", "latent analyses of a face model (Hydra overrides)"),
    "anthropometry": ("synth.cli.anthropometry", "infant heads against growth norms (Hydra overrides)"),
    "transfer": ("synth.cli.transfer", "expression transfer validation"),
    "au": ("synth.cli.au", "AU detector training and evaluation"),
    "bench": ("synth.cli.bench", "run a benchmark of the source checkout (benchmarks/)"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: synth <command> [args]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"synth: unknown command {name!r}\n{_usage()}")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.argv = [f"synth {name}", *rest]
    try:
        module = importlib.import_module(COMMANDS[name][0])
        code = module.main()
    except SynthError as err:
        sys.stderr.write(f"synth {name}: error: {err}\n")
        return 2
    return int(code or 0)


def command() -> None:
    """The `synth` console script: pin the CPU code path (`synth.cpu`), then run `main`."""
    cpu.pin_process([sys.executable, "-m", "synth.cli", *sys.argv[1:]])
    sys.exit(main())
