"""write_shard / write_manifest: round trip of every member, byte-reproducible shards, bad input, resume."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.records import load_webdataset
from synth.records.config import OutputConfig
from synth.records.schema import LATENT_NAMES, index_schema
from synth.records.validate import validate_dataset
from synth.records.writer import complete_shards, read_shard_info, write_shard
from tests.records.conftest import N_VERTS, make_sample, write_dataset


def _expected_depth(depth: np.ndarray) -> np.ndarray:
    return (
        np.where(depth > 0, np.maximum(np.rint(depth.astype(np.float64) * 1000), 1), 0).astype(np.float32)
        / 1000
    )


def test_round_trip_write_validate_load_every_member(dataset: Path) -> None:
    report = validate_dataset(dataset)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.num_shards, report.num_samples) == (3, 10)
    loaded = {s["__key__"]: s for s in load_webdataset(dataset)}
    assert sorted(loaded) == [f"{i:09d}" for i in range(10)]
    for i in range(10):
        want, got = make_sample(i), loaded[f"{i:09d}"]
        for name in ("mesh", "au", "lmk2d", "lmk3d", "mask", "canny", "shaded"):
            assert got[name].numpy().dtype == want[name].dtype, name
            assert np.array_equal(got[name].numpy(), want[name]), name
        for name in LATENT_NAMES:
            assert np.array_equal(got["latents"][name].numpy(), want["latents"][name])
        assert np.array_equal(got["depth"].numpy(), _expected_depth(want["depth"]))
        assert np.abs(got["depth"].numpy() - want["depth"]).max() <= 0.0005 + 1e-6
        normal, want_normal = got["normal"].numpy(), want["normal"]
        assert np.array_equal(normal.any(-1), want_normal.any(-1))
        assert np.abs(normal - want_normal).max() <= 0.01
        assert got["rgb"].shape == (1, 64, 64, 3)
        assert np.abs(got["rgb"][0].numpy().astype(int) - want["rgb"][0]).mean() < 2.0
        meta = got["meta"]
        assert meta["key"] == f"{i:09d}" and meta["index"] == i
        assert np.allclose(meta["camera"]["K"], want["meta"]["camera"]["K"])
        assert meta["quality"]["mask_fraction"] == pytest.approx(want["mask"].mean())
        assert meta["phenotype"] == want["meta"]["phenotype"]


def test_shards_are_readable_without_synth(dataset: Path) -> None:
    """Plain tarfile + numpy + PIL read the same arrays as the loader."""
    keys = ["depth", "normal", "mask", "rgb", "mesh"]
    loaded = {s["__key__"]: s for s in load_webdataset(dataset, keys=keys)}
    with tarfile.open(dataset / "shard-000001.tar") as tar:
        names = tar.getnames()
        assert names == sorted(names)
        for info in tar.getmembers():
            assert info.mtime == 1577836800 and info.uname == "synth"
        member = {name: tar.extractfile(name).read() for name in names}
    key = "000000005"
    got = loaded[key]
    mesh = np.load(io.BytesIO(member[f"{key}.mesh.npy"]), allow_pickle=False)
    assert np.array_equal(mesh, got["mesh"].numpy())
    depth_mm = np.asarray(Image.open(io.BytesIO(member[f"{key}.depth.png"])))
    assert depth_mm.dtype == np.uint16
    assert np.array_equal(depth_mm.astype(np.float32) / 1000, got["depth"].numpy())
    normal8 = np.asarray(Image.open(io.BytesIO(member[f"{key}.normal.png"])).convert("RGB"))
    assert np.array_equal(normal8.any(-1), got["normal"].numpy().any(-1))
    mask = np.asarray(Image.open(io.BytesIO(member[f"{key}.mask.png"])))
    assert np.array_equal(mask.astype(bool), got["mask"].numpy())
    rgb = np.asarray(Image.open(io.BytesIO(member[f"{key}.rgb.jpg"])).convert("RGB"))
    assert np.abs(rgb.astype(int) - got["rgb"][0].numpy()).max() <= 1  # same JPEG, another decoder
    meta = json.loads(member[f"{key}.meta.json"])
    assert meta["camera"]["width"] == 64


def test_index_parts_follow_the_schema(dataset: Path) -> None:
    table = pq.read_table(dataset / "index" / "shard-000000.parquet")
    assert table.schema.equals(index_schema(), check_metadata=False)
    for column in index_schema():
        if not column.nullable:
            assert table[column.name].null_count == 0, column.name
    row = table.to_pylist()[1]
    want = make_sample(1)
    assert row["key"] == "000000001" and row["shard"] == "shard-000000.tar"
    assert row["split"] == want["meta"]["split"] and row["identity_id"] == 0
    assert np.array_equal(np.float32(row["au"]), want["au"])
    assert np.array_equal(np.float32(row["w_ex"]), want["latents"]["w_ex"])
    assert row["camera_K"] == pytest.approx(np.ravel(want["meta"]["camera"]["K"]).tolist())
    assert row["num_rgb"] == 1 and row["prompts"] == ["portrait 0"]
    assert {p["name"] for p in row["phenotype"]} == {"age", "gender"}
    assert row["members"] == sorted(row["members"]) and len(row["crc32"]) == len(row["members"]) == 13


def test_shards_are_byte_reproducible(tmp_path: Path) -> None:
    cfg = OutputConfig(dir=str(tmp_path))
    samples = [make_sample(i, n_rgb=2) for i in range(8, 12)]
    a = write_shard(tmp_path / "a", 2, samples, cfg)
    b = write_shard(tmp_path / "b", 2, list(reversed(samples)), cfg)
    assert a == b
    for rel in ("shard-000002.tar", "index/shard-000002.parquet"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert read_shard_info(tmp_path / "a", 2) == a
    with tarfile.open(tmp_path / "a" / "shard-000002.tar") as tar:
        assert "000000008.rgb_1.jpg" in tar.getnames()


def test_multiple_rgb_and_no_rgb(tmp_path: Path) -> None:
    two = write_dataset(tmp_path / "two", num_samples=3, samples_per_shard=2, n_rgb=2)
    none = write_dataset(tmp_path / "none", num_samples=3, samples_per_shard=2, n_rgb=0)
    assert validate_dataset(two).ok and validate_dataset(none).ok
    sample = next(iter(load_webdataset(two)))
    assert sample["rgb"].shape == (2, 64, 64, 3)
    assert "rgb" not in next(iter(load_webdataset(none)))
    assert json.loads((none / "manifest.json").read_text())["dims"]["K"] == 0


def test_optional_members_can_be_left_out(tmp_path: Path) -> None:
    cfg = OutputConfig(dir=str(tmp_path), members=["depth"])
    write_shard(tmp_path, 0, [make_sample(0)], cfg)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert sorted(n.split(".", 1)[1] for n in tar.getnames()) == [
            "au.npy", "depth.png", "latents.npz", "mesh.npy", "meta.json"
        ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(mesh=s["mesh"].astype(np.float64)), "mesh: dtype float64"),
        (lambda s: s.update(mesh=s["mesh"][:, :2]), "mesh: axis 1"),
        (lambda s: s["mesh"].__setitem__((0, 0), np.nan), "mesh: non-finite"),
        (lambda s: s.update(au=s["au"] + 1.5), "au: values above 1"),
        (lambda s: s.update(depth=s["depth"][:32]), "axis 0 \\(H\\)"),
        (lambda s: s["meta"]["camera"].update(width=32), "camera says"),
        (lambda s: s["meta"].pop("split"), "'split' is a required property"),
        (lambda s: s["meta"].update(split="training"), "meta.json split"),
        (lambda s: s["lmk2d"].__setitem__((0, 2), 0.5), "visible flags"),
        (lambda s: s.pop("normal"), "missing member"),
        (lambda s: s["latents"].update(z_id=s["latents"]["z_id"].astype(np.float64)), "latents.z_id"),
        (lambda s: s.update(rgb=[s["rgb"][0][:, :32]]), "rgb: axis 1"),
    ],
)
def test_bad_samples_are_refused_before_writing(tmp_path: Path, change, message: str) -> None:
    sample = make_sample(3)
    change(sample)
    with pytest.raises(ValueError, match=message) as info:
        write_shard(tmp_path, 0, [make_sample(2), sample], OutputConfig(dir=str(tmp_path)))
    assert "000000003" in str(info.value)
    assert not list(tmp_path.rglob("*"))


def test_a_model_without_landmarks_writes_empty_landmark_arrays(tmp_path: Path) -> None:
    sample = make_sample(0)
    sample["lmk2d"] = np.zeros((0, 3), np.float32)
    sample["lmk3d"] = np.zeros((0, 3), np.float32)
    write_shard(tmp_path, 0, [sample], OutputConfig(dir=str(tmp_path)))
    got = next(iter(load_webdataset([str(tmp_path / "shard-000000.tar")], keys=["lmk2d", "meta"])))
    assert got["lmk2d"].shape == (0, 3)
    assert got["meta"]["quality"]["visible_landmarks"] is None


def test_inconsistent_dims_across_samples_are_refused(tmp_path: Path) -> None:
    other = make_sample(1)
    other["mesh"] = np.zeros((N_VERTS + 1, 3), np.float32)
    with pytest.raises(ValueError, match="N = 41"):
        write_shard(tmp_path, 0, [make_sample(0), other], OutputConfig(dir=str(tmp_path)))


def test_complete_shards_ignores_and_cleans_partial_writes(tmp_path: Path) -> None:
    cfg = OutputConfig(dir=str(tmp_path))
    write_shard(tmp_path, 0, [make_sample(0)], cfg)
    write_shard(tmp_path, 1, [make_sample(1)], cfg)
    (tmp_path / "index" / "shard-000001.parquet").unlink()  # killed between tar and index part
    (tmp_path / ".shard-000002.tar.abc.tmp").write_bytes(b"partial")
    (tmp_path / "index" / ".shard-000002.parquet.x.tmp").write_bytes(b"partial")
    assert complete_shards(tmp_path, clean=False) == [0]
    assert (tmp_path / "shard-000001.tar").exists()
    assert complete_shards(tmp_path) == [0]
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["shard-000000.parquet", "shard-000000.tar"]
    assert complete_shards(tmp_path / "absent") == []
