"""End-to-end `synth generate`: Ray and local execution, determinism, resume after SIGKILL, refusal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from synth.cli import main as synth_main
from synth.cli._hydra import compose_config
from synth.pipeline.plan import RUN_FILE
from synth.pipeline.run import generate
from synth.records.validate import validate_dataset

pytestmark = pytest.mark.slow

# A small geometry-only run: 48 samples in 12 shards of 4, 64 x 64 maps.
GEOMETRY = ["num_samples=48", "render.image_size=64", "output.samples_per_shard=4", "runtime.progress=false"]
SYNTH = str(Path(sys.executable).parent / "synth")


def _overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.path={model_dir}", f"output.dir={out}", *GEOMETRY, *extra]


def _dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every shard tar and index part of a dataset: what must be byte-identical across runs."""
    files = sorted([*root.glob("shard-*.tar"), *root.glob("index/*.parquet")])
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> int:
    """`synth <args>` in this process (joins the test's Ray); returns the exit code."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["synth", *args])
    try:
        return synth_main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The geometry-only dataset made by the in-process loop (the comparison baseline)."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    generate(compose_config("generate", _overrides(tiny_model_dir, out, "runtime.executor=local")))
    return out


def test_end_to_end_with_tiny_diffusion_validates_and_loads(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_session: None
) -> None:
    from synth.records import load_webdataset, read_index

    out = tmp_path / "ds"
    args = [
        "generate",
        "model=tiny",
        f"model.path={tiny_model_dir}",  # the session's build of model=tiny (not rebuilt in the cache)
        "diffusion=tiny",
        "num_samples=64",
        "render.image_size=64",
        "output.samples_per_shard=16",
        f"output.dir={out}",
        "sampler=identity_sets",
        "runtime.progress=false",
    ]
    assert _cli(args, monkeypatch, tmp_path) == 0
    report = validate_dataset(out)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.num_samples, report.num_shards) == (64, 4)
    samples = list(load_webdataset(out, keys=("mesh", "au", "rgb", "depth", "meta")))
    assert sorted(int(s["__key__"]) for s in samples) == list(range(64))
    assert samples[0]["rgb"].shape == (1, 64, 64, 3)
    assert samples[0]["meta"]["prompts"][0].startswith("Realistic frontal view portrait")
    index = read_index(out).to_pandas()
    assert [list(e) for e in index["ethnicities"]] == [[e] for e in index["ethnicity"]]  # one image each
    assert set(index["ethnicity"]) <= {"Black", "Chinese", "Indian", "Filipino", "White", "Hispanic"}
    # identity_sets: groups of 5 share one identity and one split; step 0 is the neutral twin.
    assert index.groupby("identity_id")["split"].nunique().max() == 1
    assert (index.set_index("index").loc[[0, 5, 10], "expression"] == "neutral").all()
    assert (out / "preview.png").stat().st_size > 10_000
    card = (out / "README.md").read_text()
    assert "| split | samples | identities |" in card and (out / "card" / "au.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing in the working directory


def test_geometry_is_byte_identical_across_workers_batches_and_executors(
    tiny_model_dir: Path, reference: Path, tmp_path: Path, ray_session: None
) -> None:
    expected = _dataset_bytes(reference)
    assert len(expected) == 24
    for workers, batch in ((1, 16), (2, 5)):
        out = tmp_path / f"w{workers}b{batch}"
        extra = (f"runtime.num_workers={workers}", f"runtime.batch_size={batch}")
        generate(compose_config("generate", _overrides(tiny_model_dir, out, *extra)))
        assert _dataset_bytes(out) == expected, f"num_workers={workers} batch_size={batch}"


def test_resume_after_sigkill_is_byte_identical(
    tiny_model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    # The in-process loop keeps the killed run to one process group (an embedded Ray's helper processes
    # would outlive a SIGKILLed driver; docs/operations.md).
    cmd = [SYNTH, "generate", *_overrides(tiny_model_dir, out, "runtime.executor=local")]
    first = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("shard-000002.tar")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    done_before = len(list(out.glob("shard-*.tar")))
    assert 0 < done_before < 12
    assert not (out / "manifest.json").exists()

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr
    assert _dataset_bytes(out) == _dataset_bytes(reference)  # the uninterrupted run's bytes
    keys = pq.read_table(out / "index", columns=["key"]).column("key").to_pylist()
    assert sorted(keys) == [f"{i:09d}" for i in range(48)]  # every sample once, no duplicate keys
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary files left
    report = validate_dataset(out)
    assert report.ok, [str(p) for p in report.problems]


def test_a_different_config_on_the_same_directory_is_refused(
    tiny_model_dir: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    args = ["generate", *_overrides(tiny_model_dir, reference, "seed=3", "runtime.executor=local")]
    assert _cli(args, monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config (differs in: seed)" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before  # untouched
    # The same config again: nothing left to do, the dataset stays byte-identical.
    expected = _dataset_bytes(reference)
    generate(compose_config("generate", _overrides(tiny_model_dir, reference, "runtime.executor=local")))
    assert _dataset_bytes(reference) == expected
    assert (reference / RUN_FILE).is_file()


def test_random_sampler_matches_face_model_sample(tiny_model_dir: Path) -> None:
    from synth.facemodel.model import FaceModel
    from synth.pipeline.stages import GeometryStage

    model = FaceModel.load(tiny_model_dir)
    expected = model.sample_indices([0, 17, 47], seed=0)
    cfg = compose_config("generate", [f"model.path={tiny_model_dir}", "sampler=random"])
    got = GeometryStage(model, cfg)({"index": np.array([0, 17, 47])})
    np.testing.assert_allclose(got["z_id"], expected["z_id"].numpy(), atol=0)
    np.testing.assert_allclose(got["vertices"], expected["vertices"].numpy(), atol=1e-6)
    assert set(got["au_source"]) == {"nnls"}  # flow samples: the labels are estimated from the mesh
    np.testing.assert_array_equal(got["au"], got["au_nnls"])


def test_the_default_labels_are_the_generating_au_vectors(tiny_model_dir: Path, reference: Path) -> None:
    """Exact labels round trip: au.npy of the written dataset is the sampler's AU vector, bit for bit."""
    from synth.facemodel.model import FaceModel
    from synth.pipeline.stages import sampler_for
    from synth.records import load_webdataset

    cfg = compose_config("generate", _overrides(tiny_model_dir, reference))
    plan = sampler_for(cfg, FaceModel.load(tiny_model_dir)).plan(np.arange(48))
    assert plan.use_aus.all()
    table = pq.read_table(reference / "index").sort_by("index")
    assert set(table.column("au_source").to_pylist()) == {"generating"}
    au = np.asarray(table.column("au").to_pylist(), np.float32)
    np.testing.assert_array_equal(au, plan.aus)
    nnls = np.asarray(table.column("au_nnls").to_pylist(), np.float32)
    assert np.abs(nnls - au).mean() < 0.02  # the tiny model makes its few AUs exactly
    assert np.isfinite(table.column("log_prob_ex").to_numpy()).all()
    assert table.column("expression").to_pylist() == plan.expression
    for sample in load_webdataset(reference, keys=("au", "au_nnls", "meta")):
        index = int(sample["__key__"])
        np.testing.assert_array_equal(sample["au"].numpy(), plan.aus[index])
        assert sample["meta"]["au_source"] == "generating" and "log_prob_ex" in sample["meta"]
    card = (reference / "README.md").read_text()  # the card shows the prior's figures
    assert "## Expressions against the expression prior" in card and "neutral faces:" in card
    for figure in ("aus_per_sample", "base_rates", "cooccurrence", "prototypes"):
        assert (reference / "card" / f"{figure}.png").stat().st_size > 1000, figure


def test_preview_command_on_a_dataset(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    sheet = tmp_path / "sheet.png"
    assert _cli(["preview", str(reference), "-n", "6", "-o", str(sheet)], monkeypatch, tmp_path) == 0
    assert capsys.readouterr().out.strip() == str(sheet)
    image = Image.open(sheet)
    assert image.size == (4 * (4 * 128 + 6) + 6, 2 * (128 + 30 + 6) + 6)  # 6 tiles: 4 columns, 2 rows
    assert len(np.unique(np.asarray(image.convert("L")))) > 50  # renders, not blank panels


def test_a_dataset_grows_in_place_and_refuses_to_shrink(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def run(out: Path, n: int) -> None:
        over = _overrides(
            tiny_model_dir, out, f"num_samples={n}", "runtime.executor=local", "preview_samples=0"
        )
        generate(compose_config("generate", over))

    run(tmp_path / "grown", 10)  # shards of 4, 4, 2
    run(tmp_path / "grown", 14)  # shard 2 rewritten with 4 samples, shard 3 added
    run(tmp_path / "fresh", 14)
    assert _dataset_bytes(tmp_path / "grown") == _dataset_bytes(tmp_path / "fresh")
    assert validate_dataset(tmp_path / "grown").num_samples == 14
    args = [
        "generate",
        *_overrides(tiny_model_dir, tmp_path / "grown", "num_samples=6", "runtime.executor=local"),
    ]
    assert _cli(args, monkeypatch, tmp_path) == 2
    assert "cannot shrink" in capsys.readouterr().err


def test_gpu_layout_diffusion_actor_pool_writes_the_same_shards(
    tiny_model_dir: Path, tmp_path: Path, ray_session: None
) -> None:
    """The cluster layout (geometry tasks -> one packed row per shard -> diffusion actors -> write), forced
    on CPU, gives the in-process loop's bytes; RGB within a float tolerance (DESIGN: "diffusion: same
    seeds, fp tolerance" — the actor runs torch with another thread count)."""
    from synth.pipeline.plan import shard_units
    from synth.pipeline.ray_exec import run_ray
    from synth.pipeline.run import prepare
    from synth.records import codecs

    extra = ("num_samples=8", "diffusion=tiny", "diffusion.steps=2", "preview_samples=0")
    local = compose_config(
        "generate", _overrides(tiny_model_dir, tmp_path / "local", *extra, "runtime.executor=local")
    )
    generate(local)
    spec, resuming = prepare(
        compose_config("generate", _overrides(tiny_model_dir, tmp_path / "pool", *extra))
    )
    assert not resuming
    results = []
    run_ray(spec, shard_units(8, 4), results.append, diffusion_pool=True)
    assert sorted(r.shard_id for r in results) == [0, 1] and all("diffusion" in r.seconds for r in results)
    pool, ref = _members(tmp_path / "pool"), _members(tmp_path / "local")
    assert sorted(pool) == sorted(ref) and len(pool) == 8 * 13
    for name, data in ref.items():
        if name.endswith(".jpg"):
            diff = np.abs(codecs.jpeg_to_rgb(pool[name]).astype(int) - codecs.jpeg_to_rgb(data).astype(int))
            assert diff.max() <= 8 and diff.mean() < 0.5, name
        else:
            assert pool[name] == data, name


def _members(root: Path) -> dict[str, bytes]:
    """Every tar member of a dataset's shards by name (key.member)."""
    import tarfile

    found: dict[str, bytes] = {}
    for shard in sorted(root.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                found[member.name] = tar.extractfile(member).read()
    return found


def test_multirun_writes_one_dataset_per_job(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synth.records import load_webdataset

    out = tmp_path / "sweep"
    args = ["generate", "-m", *_overrides(tiny_model_dir, out, "num_samples=4", "runtime.executor=local")]
    args += ["sampler=au", "+sampler.targets.jaw_drop=1.0", "sampler.intensity=0.5,1.5", "preview_samples=0"]
    assert _cli(args, monkeypatch, tmp_path) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "multirun.yaml"]
    meshes = {}
    for job in ("0", "1"):
        assert validate_dataset(out / job).ok
        meshes[job] = {s["__key__"]: s for s in load_webdataset(out / job, keys=("mesh", "latents"))}
    a, b = meshes["0"]["000000003"], meshes["1"]["000000003"]
    np.testing.assert_array_equal(a["latents"]["w_id"].numpy(), b["latents"]["w_id"].numpy())  # same identity
    assert not np.allclose(a["mesh"].numpy(), b["mesh"].numpy())  # intensity 0.5 vs 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_bad_input_on_a_ray_worker_comes_back_as_one_line(
    tiny_model_dir: Path, tmp_path: Path, ray_session: None
) -> None:
    """E.g. a model that reaches the worker incomplete: a SynthError naming the file, not a Ray trace.

    (The model directory itself need not be visible on the worker's node: the driver ships it.)"""
    import shutil

    from synth.errors import SynthError
    from synth.pipeline.plan import shard_units
    from synth.pipeline.ray_exec import run_ray
    from synth.pipeline.run import prepare

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    spec, _ = prepare(compose_config("generate", _overrides(model, tmp_path / "ds", "num_samples=4")))
    (model / "flow_ex.safetensors").unlink()  # shipped without it
    with pytest.raises(SynthError, match=r"on a Ray worker: model file .*flow_ex\.safetensors is missing"):
        run_ray(spec, shard_units(4, 4), lambda result: None)


def test_expressions_command_reports_exact_labels(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    assert _cli(["expressions", str(reference)], monkeypatch, tmp_path) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 48 and report["au_vector_samples"] == 48
    assert report["label_mae"] == 0.0 and report["exclusive_violations"] == 0
    assert report["au_source"] == {"generating": 48}
    assert report["nnls_f1_micro"] > 0.9  # the tiny model makes its AUs exactly
    assert _cli(["expressions", str(tmp_path / "nowhere")], monkeypatch, tmp_path) == 2
