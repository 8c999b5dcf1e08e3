"""`synth generate` on a real multi-node Ray cluster writing to a real S3 API server, no shared disk.

The cluster (tests/raycluster.py): a head with 0 CPUs and two 1-CPU worker nodes on 127.0.0.1, each with
its own temp dir and its own empty SYNTH_CACHE_DIR; the model reaches them through the object store and
the shards go to s3://. Drivers run as subprocesses (as a user's `synth generate` would).
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth.cli import main as synth_main
from synth.cli._hydra import compose_config
from synth.pipeline.run import generate
from synth.records.storage import Store
from synth.records.validate import validate_dataset
from tests.raycluster import Cluster, cluster_env

pytestmark = pytest.mark.slow

SYNTH = str(Path(sys.executable).parent / "synth")
GEOMETRY = ["render.image_size=64", "output.samples_per_shard=4", "runtime.progress=false"]


def _run_args(model_dir: Path, out: str, num_samples: int, *extra: str) -> list[str]:
    return [f"model.path={model_dir}", f"output.dir={out}", f"num_samples={num_samples}", *GEOMETRY, *extra]


def _shard_bytes(location: str | Path) -> dict[str, bytes]:
    store = Store.of(location)
    names = [n for n in store.listing() if n.startswith(("shard-", "index/"))]
    return {n: store.read_bytes(n) for n in names}


@pytest.fixture(scope="module")
def cluster(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    c = Cluster(root=root, env=cluster_env({}))
    try:
        c.start_head(dashboard=True)
        c.start_worker("w1")  # one after the other: concurrent starts overload 2 cores
        c.start_worker("w2")
        c.wait_for_cpus(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 samples by the in-process loop on a local disk: what every cluster run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    generate(compose_config("generate", _run_args(tiny_model_dir, str(out), 32, "runtime.executor=local")))
    return out


def _driver(cluster: Cluster, args: list[str], cache: Path) -> list[str]:
    cache.mkdir(exist_ok=True)
    return [SYNTH, "generate", f"runtime.address={cluster.address}", *args]


def _env(cluster: Cluster, cache: Path) -> dict[str, str]:
    return {**cluster.env, "SYNTH_CACHE_DIR": str(cache)}


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """`synth <args>` in this process (no Ray involved: validate, preview); returns the exit code."""
    monkeypatch.setattr(sys, "argv", ["synth", *args])
    try:
        return synth_main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_driver_sigkill_then_rerun_on_s3_equals_a_local_run(
    cluster: Cluster,
    reference: Path,
    tiny_model_dir: Path,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Two nodes, S3 output, the driver SIGKILLed mid-run and rerun: the result is a local run's bytes."""
    out = f"{s3_bucket}/ds"
    cache = tmp_path / "driver-cache"
    cmd = _driver(cluster, _run_args(tiny_model_dir, out, 32), cache)
    env = _env(cluster, cache)
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL)
    store = Store.of(out)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline:
        if sum(n.endswith(".parquet") for n in store.listing()) >= 2:
            break
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    done_before = sum(n.endswith(".parquet") for n in store.listing())
    assert 0 < done_before < 8 and "manifest.json" not in store.listing()

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    assert _shard_bytes(out) == _shard_bytes(reference)  # 8 tars + 8 index parts, byte for byte
    assert len(_shard_bytes(out)) == 16
    report = validate_dataset(out)
    assert report.ok, [str(p) for p in report.problems]  # includes: no key in two shards
    assert report.num_samples == 32
    manifest = json.loads(store.read_bytes("manifest.json"))
    assert manifest["timings"]["storage_retries"] == 0
    assert {"README.md", "preview.png", "run.json", "card/au.png"} <= set(store.listing())
    # The workers had empty caches and no shared disk: each node that ran shards unpacked the shipped model.
    shipped = [n for n in cluster.nodes if (n.cache_dir / "shipped").is_dir()]
    assert shipped and all(n.name != "head" for n in shipped)
    assert not (cache / "shipped").exists()  # the driver itself does not unpack its own model
    # synth validate / preview read the same URL.
    assert _cli(["validate", out], monkeypatch) == 0
    assert "32 samples in 8 shards: OK" in capsys.readouterr().out
    assert _cli(["preview", out, "-n", "4", "-o", f"{out}/small.png"], monkeypatch) == 0
    assert store.read_bytes("small.png").startswith(b"\x89PNG")


def test_a_worker_node_killed_mid_run_still_ends_complete(
    cluster: Cluster, reference: Path, tiny_model_dir: Path, s3_bucket: str, tmp_path: Path
) -> None:
    victim = cluster.start_worker("w3")  # killed below; the module's two nodes stay up
    cluster.wait_for_cpus(3)
    out = f"{s3_bucket}/ds"
    cache = tmp_path / "driver-cache"
    cmd = _driver(cluster, _run_args(tiny_model_dir, out, 48), cache)
    run = subprocess.Popen(cmd, env=_env(cluster, cache), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    store = Store.of(out)
    deadline = time.monotonic() + 240
    while run.poll() is None and time.monotonic() < deadline:
        if sum(n.endswith(".parquet") for n in store.listing()) >= 3:
            break
        time.sleep(0.2)
    assert run.poll() is None, "the run finished before the node could be killed"
    victim.kill()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    report = validate_dataset(out)
    assert report.ok, [str(p) for p in report.problems]  # includes: no key in two shards
    assert (report.num_samples, report.num_shards) == (48, 12)
    got = _shard_bytes(out)
    assert {k: got[k] for k in _shard_bytes(reference)} == _shard_bytes(reference)  # the 8 shared shards


def test_submit_ray_job_script_end_to_end(
    cluster: Cluster, tiny_model_dir: Path, s3_bucket: str, tmp_path: Path
) -> None:
    """jobs/submit_ray_job.sh through `ray job submit` (the `cluster` extra: ray[default], a dashboard)."""
    out = f"{s3_bucket}/job"
    script = Path(__file__).resolve().parents[2] / "jobs" / "submit_ray_job.sh"
    env = {**cluster.env, "RAY_ADDRESS": f"http://127.0.0.1:{cluster.dashboard_port}", "SUBMISSION_ID": "t16"}
    args = _run_args(tiny_model_dir, out, 16, "runtime.threads_per_worker=1")
    run = subprocess.run(["bash", str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "succeeded" in run.stdout + run.stderr
    report = validate_dataset(out)
    assert report.ok and report.num_samples == 16, [str(p) for p in report.problems]
