"""`python -m synth.cli ...`: the `synth` command (a pinned process) where its script is not on PATH."""

from synth.cli import command

command()
