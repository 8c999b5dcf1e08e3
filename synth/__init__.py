"""synth: synthetic datasets of expressive 3D faces."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
