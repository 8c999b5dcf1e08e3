"""synth: synthetic datasets of expressive 3D faces.

Importing synth changes nothing in the caller's process (no environment variable, no library setting):
the CPU pins of `synth.cpu` are set where synth starts a process (the `synth` command, Ray workers).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
