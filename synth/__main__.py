"""`python -m synth ...`: the `synth` command (pinned process), for environments without the script."""

from synth.cli import command

command()
