"""`synth bench [NAME [args]]`: run `benchmarks/bench_NAME.py` of the source checkout.

    synth bench                       # list the benchmarks
    synth bench facemodel --batch 512 # the face-model benchmark with its own arguments

Each benchmark prints its figure as a ratio against a baseline measured in the same run, with the
absolute numbers and the hardware (docs/performance.md). They live next to the package in the
repository, not in the wheel, so this command needs a checkout (`pip install -e .`).
"""

import subprocess
import sys
from pathlib import Path

import synth
from synth.errors import SynthError


def benchmarks_dir() -> Path | None:
    """The checkout's `benchmarks/` (the package's parent directory holds it), or None for a wheel."""
    directory = Path(synth.__file__).resolve().parents[1] / "benchmarks"
    return directory if directory.is_dir() else None


def main() -> int:
    args = sys.argv[1:]
    directory = benchmarks_dir()
    if directory is None:
        raise SynthError(
            "the benchmarks ship with the source checkout, not the wheel: clone the repository, "
            "`pip install -e .` there, then run `synth bench NAME`"
        )
    names = sorted(p.stem.removeprefix("bench_") for p in directory.glob("bench_*.py"))
    if not args or args[0] in ("-h", "--help"):
        usage = "usage: synth bench NAME [args]  (synth bench NAME --help: its arguments)"
        sys.stdout.write(f"{usage}\n\nbenchmarks: {', '.join(names)}\n")
        return 0
    name, rest = args[0], args[1:]
    if name not in names:
        raise SynthError(f"unknown benchmark {name!r}; one of: {', '.join(names)}")
    # A child process: the benchmark sets its own logging, threads and (for some) Ray.
    return subprocess.run(
        [sys.executable, str(directory / f"bench_{name}.py"), *rest], check=False
    ).returncode
