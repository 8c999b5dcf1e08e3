"""synth: synthetic datasets of expressive 3D faces."""

from importlib.metadata import PackageNotFoundError, version

from synth import cpu

# Before any tensor operation of the process: one floating-point code path on every x86-64 CPU.
cpu.pin()

try:
    __version__ = version("synth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
