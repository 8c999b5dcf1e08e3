"""The dataset's bytes and the model id do not depend on the CPU or on what the caller imported first
(synth.cpu).

One machine cannot run on an Intel and an AMD chip, but it can make MKL, OpenBLAS, ATen and NumPy behave
as they would elsewhere: `MKL_ENABLE_INSTRUCTIONS` caps the instruction set MKL dispatches to (an older
CPU), `OPENBLAS_CORETYPE` forces OpenBLAS's kernels of another CPU (SkylakeX where this one has AVX-512,
Prescott / Nehalem as pre-AVX2 stand-ins), an environment that already sets the libraries' own knobs
stands for a machine configured otherwise, and a script that imports NumPy (or runs a tensor operation)
before synth stands for a notebook. Each emulation runs `synth generate` (or builds the tiny model) in a
fresh process and must write the same bytes (the same model id). The controls, processes that are not
pinned (a Python caller's process running the in-process executor), must differ: the emulations are
sensitive to the code path, so a CPU-dependent result fails here on any machine.
"""

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from synth.build.build import PINNED_CHILD
from synth.cpu import PINNED_ENV, code_path, cpu_flags, pinned, pinned_env, pinned_key
from synth.errors import SynthError
from synth.pipeline.plan import RUN_FILE, write_run_file
from synth.pipeline.stages import check_code_path

pytestmark = pytest.mark.slow

# 12 samples in 3 shards, 64 x 64 maps, one process (no Ray): each run takes seconds. Identities drawn at
# an age (the identity conditional, then the flow both ways) cover every step of the unconditioned draw too.
ARGS = ["num_samples=12", "render.image_size=64", "output.samples_per_shard=4", "runtime.progress=false",
        "runtime.executor=local", "preview_samples=0", "sampler.age_months=[0,36]"]  # fmt: skip

# What runs before synth in the child process.
NUMPY_FIRST = "import numpy\n"
UNPINNED = "import torch; torch.ones(8, 8) @ torch.ones(8, 8)  # MKL and ATen start before synth\n"
COMMAND = "from synth.cli import command\ncommand()\n"  # the `synth` console script
API = "import sys\nfrom synth.cli import main\nsys.exit(main(sys.argv[1:]))\n"  # a Python caller

# Other machines, as the `synth` command meets them (it pins over them).
OTHER_BLAS = ["Haswell", "Zen", "Nehalem", "Prescott"] + (["SkylakeX"] if "avx512f" in cpu_flags() else [])
OTHER_SETTINGS = {"MKL_CBWR": "AUTO", "ATEN_CPU_CAPABILITY": "default", "NPY_DISABLE_CPU_FEATURES": "",
                  "OPENBLAS_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "ALL"}  # fmt: skip
EMULATIONS = {
    "older CPU for MKL (SSE4.2)": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, ""),
    "machine with other library settings": (OTHER_SETTINGS, ""),
    "NumPy imported before synth": ({}, NUMPY_FIRST),
    **{f"OpenBLAS on {core} kernels": ({"OPENBLAS_CORETYPE": core}, "") for core in OTHER_BLAS},
}
skip_unpinnable = pytest.mark.skipif(
    not pinned_env(), reason="this CPU has no AVX2 + FMA: synth cannot pin it"
)


def _child(script: str, args: list[str], env_extra: dict[str, str], cwd: Path) -> str:
    env = {**os.environ, **env_extra}
    for key in PINNED_ENV:  # the test runner's pins must not leak into the child: it pins (or not) itself
        if key not in env_extra:
            env.pop(key, None)
    command = [sys.executable, "-c", script, *args]
    run = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


def _generate(
    model_dir: Path, out: Path, env_extra: dict[str, str], preamble: str, entry: str = COMMAND,
    extra: tuple[str, ...] = (),
) -> dict[str, bytes]:  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["generate", f"model.path={model_dir}", f"output.dir={out}", *ARGS, *extra]
    _child(preamble + entry, args, env_extra, out.parent)
    files = sorted([*out.glob("shard-*.tar"), *out.glob("index/*.parquet")])
    assert len(files) >= 4
    return {p.name: p.read_bytes() for p in files}


def _meta(root: Path) -> list[bytes]:
    """Every sample's meta.json (camera and light included)."""
    out = []
    for shard in sorted(root.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            out += [tar.extractfile(m).read() for m in sorted(tar.getmembers(), key=lambda m: m.name)
                    if m.name.endswith("meta.json")]  # fmt: skip
    return out


def _model_id(path: Path) -> str:
    return json.loads((Path(path) / "model.json").read_text())["model_id"]


@pytest.fixture(scope="module")
def baseline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path_factory.mktemp("cpu_baseline") / "ds"
    return out, _generate(tiny_model_dir, out, {}, "")


@skip_unpinnable
def test_this_process_runs_the_pinned_code_path() -> None:
    """The test runner pins itself (tests/conftest.py) like the `synth` command; the key names it all."""
    path = code_path()
    assert pinned(), path
    assert path["mkl"] == "COMPATIBLE,STRICT" and path["aten"] == "AVX2" and path["numpy"] == "X86_V3"
    assert path["openblas"] and all(lib.endswith(" sandybridge x1") for lib in path["openblas"])
    assert path["key"] == pinned_key()
    assert "/ openblas " in path["key"] and "/ onednn AVX2 /" in path["key"]


def test_importing_synth_changes_nothing_in_the_callers_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    script = (
        "import os, sys\n"
        "import cv2  # noqa: F401  (OpenCV sets LD_LIBRARY_PATH on import: not synth's doing)\n"
        "before = dict(os.environ)\n"
        "import synth, synth.records, synth.facemodel, synth.pipeline.run, synth.cli\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "from synth.cpu import pinned\nassert not pinned()\n"
    )
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


@skip_unpinnable
@pytest.mark.parametrize("name", sorted(EMULATIONS))
def test_emulated_cpu_writes_the_same_bytes(name, tiny_model_dir, baseline, tmp_path) -> None:
    _, reference = baseline
    env_extra, preamble = EMULATIONS[name]
    assert _generate(tiny_model_dir, tmp_path / "ds", env_extra, preamble) == reference
    run = json.loads((tmp_path / "ds" / RUN_FILE).read_text())
    assert [p["key"] for p in run["code_paths"]] == [pinned_key()]


@skip_unpinnable
def test_an_unpinned_driver_with_pinned_ray_workers_write_the_same_bytes(
    tiny_model_dir, baseline, tmp_path
) -> None:
    """A Python caller that imported NumPy and ran torch first: the Ray workers compute every byte."""
    _, reference = baseline
    preamble = NUMPY_FIRST + UNPINNED
    extra = ("runtime.executor=ray", "runtime.num_workers=1")
    assert _generate(tiny_model_dir, tmp_path / "ds", {}, preamble, API, extra) == reference


@skip_unpinnable
def test_unpinned_processes_differ_within_the_tolerance(tiny_model_dir, baseline, tmp_path) -> None:
    """The controls: a Python caller's process running the in-process executor, with MKL and ATen
    unpinned, or with only OpenBLAS on other kernels, rounds differently (so the emulations above can
    fail), says so once, records its key, and stays within the documented tolerance (docs/architecture.md,
    Determinism)."""
    ref_dir, reference = baseline

    def meshes(root: Path) -> np.ndarray:
        out = []
        for shard in sorted(root.glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    if member.name.endswith("mesh.npy"):
                        out.append(np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False))
        return np.stack(out)

    blas_only = {**PINNED_ENV, "OPENBLAS_CORETYPE": "Haswell"}  # FMA kernels: other rounding
    for name, env_extra, preamble in (("mkl", {}, UNPINNED), ("openblas", blas_only, "")):
        out = tmp_path / name / "ds"
        other = _generate(tiny_model_dir, out, env_extra, preamble, API)
        assert other.keys() == reference.keys()
        assert other != reference, f"unpinned {name} gave the pinned bytes: the emulations show nothing"
        diff = np.abs(meshes(ref_dir) - meshes(out)).max()
        assert diff <= 1e-6  # metres: 1 micrometre
        assert diff > 0  # OpenBLAS: the decoder's GEMMs
        run = json.loads((out / RUN_FILE).read_text())
        assert [p["key"] for p in run["code_paths"]] == [run["code_paths"][0]["key"]] != [pinned_key()]
    assert _meta(ref_dir) != _meta(tmp_path / "openblas" / "ds"), "OpenBLAS does not reach meta.json"


@skip_unpinnable
def test_the_tiny_model_id_does_not_depend_on_the_cpu_or_the_caller(tiny_model_dir, tmp_path) -> None:
    """The same tiny model from the `synth` command on other CPUs and from a Python caller that imported
    NumPy first (the build runs in a pinned child); the control, a build forced into a process with
    OpenBLAS on other kernels, differs."""
    reference = _model_id(tiny_model_dir)
    build = ["build-model", "model=tiny"]
    other_cpu = {"OPENBLAS_CORETYPE": "Prescott", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    _child(COMMAND, [*build, f"model.out={tmp_path / 'cli'}"], other_cpu, tmp_path)
    assert _model_id(tmp_path / "cli") == reference
    _child(NUMPY_FIRST + UNPINNED + API, [*build, f"model.out={tmp_path / 'api'}"], {}, tmp_path)
    assert _model_id(tmp_path / "api") == reference
    control = {**PINNED_ENV, "OPENBLAS_CORETYPE": "Prescott", PINNED_CHILD: "1"}  # no pinned child
    _child(API, [*build, f"model.out={tmp_path / 'control'}"], control, tmp_path)
    assert _model_id(tmp_path / "control") != reference


def test_a_worker_on_another_code_path_is_refused() -> None:
    check_code_path(code_path()["key"])
    with pytest.raises(SynthError, match="code path"):
        check_code_path("torch 0.0 / aten DEFAULT / mkl AUTO / numpy 0.0 baseline")


def test_resume_on_another_code_path_is_recorded_and_said(tmp_path, caplog) -> None:
    here = code_path()
    elsewhere = {**here, "key": "torch 0.0 / aten DEFAULT / mkl AUTO / numpy 0.0 baseline", "cpu": "other"}
    write_run_file(tmp_path, {"a": 1}, {"a": 1}, here)
    write_run_file(tmp_path, {"a": 1}, {"a": 1}, here)  # same code path: nothing to say
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        write_run_file(tmp_path, {"a": 1}, {"a": 1}, elsewhere)
    assert "not byte for byte" in caplog.text
    run = json.loads((tmp_path / RUN_FILE).read_text())
    assert [p["key"] for p in run["code_paths"]] == [here["key"], elsewhere["key"]]
