"""Datasets on an object store (a real S3 API server on 127.0.0.1): same bytes as local, whole objects
only, resume by one listing, retries counted, bad locations refused in one line, streaming loads."""

from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from synth.errors import SynthError
from synth.pipeline.plan import resolve_output_dir
from synth.records import collate, load_webdataset, read_index, select, storage
from synth.records.config import OutputConfig
from synth.records.storage import Store
from synth.records.validate import validate_dataset
from synth.records.writer import complete_shards, read_shard_info, remove_dataset, write_shard
from tests.records.conftest import make_sample, write_dataset


def _files(store: Store) -> dict[str, bytes]:
    """Shards, index parts and dataset files (the manifest names its own location, so it is left out)."""
    return {n: store.read_bytes(n) for n in store.listing() if n != "manifest.json"}


def test_s3_dataset_is_byte_identical_to_local_and_validates(tmp_path: Path, s3_bucket: str) -> None:
    local = write_dataset(tmp_path / "ds")
    remote = write_dataset(f"{s3_bucket}/ds")  # type: ignore[arg-type]  # a URL works wherever a dir does
    assert _files(Store.of(remote)) == _files(Store.of(local))
    assert sorted(_files(Store.of(remote))) == [
        "au_names.json", "faces.npy", "index/shard-000000.parquet", "index/shard-000001.parquet",
        "index/shard-000002.parquet", "landmarks.json", "shard-000000.tar", "shard-000001.tar",
        "shard-000002.tar",
    ]  # fmt: skip
    report = validate_dataset(f"{s3_bucket}/ds")
    assert report.ok, report.problems
    assert (report.num_shards, report.num_samples) == (3, 10)
    assert read_shard_info(remote, 1) == read_shard_info(local, 1)
    # Damage is found remotely as locally: one byte of a shard changed.
    tar = bytearray(Store.of(remote).read_bytes("shard-000001.tar"))
    tar[2000] ^= 0xFF
    Store.of(remote).write_bytes("shard-000001.tar", bytes(tar))
    problems = [str(p) for p in validate_dataset(remote).problems]
    assert any("shard-000001.tar: sha256 differs" in p for p in problems), problems


def test_streaming_load_from_s3_equals_local(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    local = write_dataset(tmp_path / "ds")
    remote = f"{s3_bucket}/ds"
    write_dataset(remote)  # type: ignore[arg-type]
    keys = ("mesh", "au", "depth", "rgb")

    def batches(source: str | Path, **kw: object) -> list[dict]:
        return [collate([s]) for s in load_webdataset(source, keys=keys, **kw)]

    a, b = batches(local), batches(remote)
    assert [x["__key__"] for x in a] == [x["__key__"] for x in b] and len(a) == 10
    for x, y in zip(a, b, strict=True):
        for k in keys:
            assert torch.equal(x[k], y[k])
    # Shard URLs instead of the dataset prefix, a split, and the index read through pyarrow + fsspec.
    urls = [f"{remote}/shard-00000{i}.tar" for i in range(3)]
    assert [x["__key__"] for x in batches(urls)] == [x["__key__"] for x in a]
    # Plain web URLs of the same objects (fsspec's HTTP filesystem; the index parts are found next to them).
    fs = Store.of(remote).fs
    for name in Store.of(remote).listing():
        fs.chmod(f"{remote.removeprefix('s3://')}/{name}", acl="public-read")  # anonymous web reads
    http = [u.replace("s3://", f"{s3_server}/") for u in urls]
    assert [x["__key__"] for x in batches(http)] == [x["__key__"] for x in a]
    assert read_index(remote).equals(read_index(local))
    selection = select(remote, split="train")
    assert len(selection) == len(select(local, split="train"))
    got = [s["__key__"] for s in load_webdataset(remote, keys=("au",), selection=selection)]
    assert sorted(got) == sorted(selection.keys)


def test_a_shard_without_its_marker_is_incomplete_and_cleaned(s3_bucket: str) -> None:
    store = Store.of(f"{s3_bucket}/ds")
    cfg = OutputConfig(dir=store.location, samples_per_shard=2)
    write_shard(store, 0, [make_sample(0), make_sample(1)], cfg)
    # A writer killed between the two uploads: the tar is there, its index part (the marker) is not.
    real_put = store.fs.put_file

    def put_tar_only(src: str, dst: str, **kw: object) -> None:
        if dst.endswith(".parquet"):
            raise PermissionError("killed")  # permanent: not retried
        real_put(src, dst, **kw)

    store.fs.put_file = put_tar_only
    with pytest.raises(PermissionError):
        write_shard(store, 1, [make_sample(2), make_sample(3)], cfg)
    store.fs.put_file = real_put
    assert "shard-000001.tar" in store.listing()
    assert complete_shards(store, clean=False) == [0]
    assert complete_shards(store) == [0]  # and the orphan tar is gone
    assert "shard-000001.tar" not in store.listing()
    remove_dataset(store)
    assert store.listing() == []


def test_transient_errors_are_retried_and_counted(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)
    store = Store.of(f"{s3_bucket}/ds")
    real_put = store.fs.put_file
    failures = iter([ConnectionResetError("reset by peer"), TimeoutError("slow"), None, None])

    def flaky(src: str, dst: str, **kw: object) -> None:
        err = next(failures)
        if err is not None:
            raise err
        real_put(src, dst, **kw)

    monkeypatch.setattr(store.fs, "put_file", flaky)
    before = storage.RETRIES[0]
    write_shard(store, 0, [make_sample(0)], OutputConfig(dir=store.location))
    assert storage.RETRIES[0] - before == 2
    assert complete_shards(store) == [0]
    # A bounded number of tries: an endless outage surfaces as the error.
    monkeypatch.setattr(store.fs, "put_file", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(ConnectionError):
        store.write_bytes("x", b"1")
    assert storage.RETRIES[0] - before == 2 + storage.ATTEMPTS - 1


def test_bad_locations_are_refused_in_one_line(s3_server: str, s3_bucket: str) -> None:
    with pytest.raises(ValueError, match=r"output\.dir=nosuch://b/x: unknown storage protocol 'nosuch'"):
        OutputConfig(dir="nosuch://b/x")
    with pytest.raises(SynthError, match=r"bucket 'no-such-bucket' does not exist") as err:
        resolve_output_dir("s3://no-such-bucket/ds")
    assert "\n" not in str(err.value)
    assert resolve_output_dir(f"{s3_bucket}/ds").remote
    assert fsspec.filesystem("s3").exists(s3_bucket.removeprefix("s3://"))
    np.testing.assert_equal(Store.of(f"{s3_bucket}/empty").listing(), [])
