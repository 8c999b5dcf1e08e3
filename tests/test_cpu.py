"""The dataset's bytes do not depend on the CPU: another CPU emulated inside the suite (synth.cpu).

One machine cannot run on an Intel and an AMD chip, but it can make MKL, ATen and NumPy behave as they
would elsewhere: `MKL_ENABLE_INSTRUCTIONS` caps the instruction set MKL dispatches to (an older CPU),
and an environment that already sets the libraries' own knobs stands for a machine configured otherwise.
Each emulation runs `synth generate` in a fresh process and must write the same shard bytes. A control
run that starts MKL before synth can pin it (so the pins are not in force) must differ: the emulation is
sensitive to the code path, so a CPU-dependent result fails here on any machine.
"""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synth.cpu import PINNED_ENV, code_path, pinned
from synth.pipeline.plan import RUN_FILE, write_run_file
from synth.pipeline.stages import check_code_path

pytestmark = pytest.mark.slow

# 12 samples in 3 shards, 64 x 64 maps, one process (no Ray): each run takes seconds. Identities drawn at
# an age (the identity conditional, then the flow both ways) cover every step of the unconditioned draw too.
ARGS = ["num_samples=12", "render.image_size=64", "output.samples_per_shard=4", "runtime.progress=false",
        "runtime.executor=local", "preview_samples=0", "sampler.age_months=[0,36]"]  # fmt: skip

# What runs before synth in the child process.
PINNED = ""
UNPINNED = "import torch; torch.ones(8, 8) @ torch.ones(8, 8)  # MKL and ATen start before synth pins them\n"

EMULATIONS = {
    "older CPU for MKL (SSE4.2)": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "machine with other library settings": {
        "MKL_CBWR": "AUTO",
        "ATEN_CPU_CAPABILITY": "default",
        "NPY_DISABLE_CPU_FEATURES": "",
    },
}


def _generate(model_dir: Path, out: Path, env_extra: dict[str, str], preamble: str) -> dict[str, bytes]:
    script = f"{preamble}import sys\nfrom synth.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, **env_extra}
    for key in PINNED_ENV:  # the parent's pins must not leak into the child: it pins (or not) by itself
        if key not in env_extra:
            env.pop(key, None)
    args = ["generate", f"model.path={model_dir}", f"output.dir={out}", *ARGS]
    run = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=out.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    files = sorted([*out.glob("shard-*.tar"), *out.glob("index/*.parquet")])
    assert len(files) >= 4
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def baseline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path_factory.mktemp("cpu_baseline") / "ds"
    return out, _generate(tiny_model_dir, out, {}, PINNED)


def test_this_process_runs_the_pinned_code_path() -> None:
    path = code_path()
    assert pinned(), path
    assert path["mkl"] == "COMPATIBLE,STRICT" and path["aten"] == "AVX2" and path["numpy"] == "X86_V3"


@pytest.mark.parametrize("name", sorted(EMULATIONS))
def test_emulated_cpu_writes_the_same_bytes(name, tiny_model_dir, baseline, tmp_path) -> None:
    _, reference = baseline
    assert _generate(tiny_model_dir, tmp_path / "ds", EMULATIONS[name], PINNED) == reference
    run = json.loads((tmp_path / "ds" / RUN_FILE).read_text())
    assert [p["key"] for p in run["code_paths"]] == [code_path()["key"]]


def test_another_code_path_differs_within_the_tolerance(tiny_model_dir, baseline, tmp_path) -> None:
    """The control: unpinned MKL rounds differently (so the emulations above can fail), and the documented
    tolerance between code paths (docs/architecture.md, Determinism) holds."""
    import tarfile

    ref_dir, reference = baseline
    other = _generate(tiny_model_dir, tmp_path / "ds", {}, UNPINNED)
    assert other.keys() == reference.keys()
    assert other != reference, "unpinned MKL gave the pinned bytes: the emulations show nothing"

    def meshes(root: Path) -> np.ndarray:
        out = []
        for shard in sorted(root.glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    if member.name.endswith("mesh.npy"):
                        out.append(np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False))
        return np.stack(out)

    diff = np.abs(meshes(ref_dir) - meshes(tmp_path / "ds")).max()
    assert 0 < diff <= 1e-6  # metres: 1 micrometre
    run = json.loads((tmp_path / "ds" / RUN_FILE).read_text())
    assert not run["code_paths"][0]["mkl"].startswith("COMPATIBLE")


def test_a_worker_on_another_code_path_is_refused() -> None:
    check_code_path(code_path()["key"])
    with pytest.raises(RuntimeError, match="code path"):
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
