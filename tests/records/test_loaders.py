"""load_webdataset / read_index / select: exactly once per epoch, filters, seeded shuffles, damaged data."""

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from synth.errors import SynthError
from synth.records import collate, load_webdataset, read_index, select
from synth.records.loaders import RecordWarning
from synth.records.reader import RecordError
from tests.records.conftest import make_sample, write_dataset
from tests.records.test_validate import flip_byte


@pytest.fixture(scope="module")
def five_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """17 samples in 5 shards (4, 4, 4, 4, 1), no RGB."""
    return write_dataset(tmp_path_factory.mktemp("five"), num_samples=17, samples_per_shard=4, n_rgb=0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_exactly_once_per_epoch_with_two_workers(five_shards: Path, shuffle: bool) -> None:
    ds = load_webdataset(five_shards, keys=["mesh", "au"], shuffle=shuffle, shuffle_buffer=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    for epoch in range(2):
        ds.set_epoch(epoch)
        keys = Counter(sample["__key__"] for sample in loader)
        assert sorted(keys) == [f"{i:09d}" for i in range(17)] and set(keys.values()) == {1}


def test_batches_with_collate(five_shards: Path) -> None:
    loader = DataLoader(load_webdataset(five_shards), batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["__key__"]) for b in batches) == 17
    first = batches[0]
    n = len(first["__key__"])
    assert first["mesh"].shape == (n, 40, 3) and first["mesh"].dtype == torch.float32
    assert first["depth"].shape == (n, 64, 64) and first["mask"].dtype == torch.bool
    assert first["latents"]["w_id"].shape == (n, 9)
    assert isinstance(first["meta"], list) and first["meta"][0]["camera"]["width"] == 64


def test_shuffle_is_seeded_per_epoch(five_shards: Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        ds = load_webdataset(five_shards, keys=["au"], shuffle=True, seed=seed, shuffle_buffer=8)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(0, 0)) == [s["__key__"] for s in load_webdataset(five_shards, keys=["au"])]


def test_split_filter_via_index_and_via_meta(five_shards: Path, tmp_path: Path) -> None:
    by_split = {s: {x["__key__"] for x in load_webdataset(five_shards, keys=["au"], split=s)} for s in
                ("train", "val", "test")}  # fmt: skip
    assert sum(len(v) for v in by_split.values()) == 17
    assert all(make_sample(int(k)).get("meta")["split"] == s for s, keys in by_split.items() for k in keys)
    # Shard files alone (no index next to them): the split comes from meta.json.
    for i in range(5):
        shutil.copy(five_shards / f"shard-{i:06d}.tar", tmp_path)
    pattern = str(tmp_path / "shard-{000000..000004}.tar")
    assert {x["__key__"] for x in load_webdataset(pattern, keys=["au"], split="val")} == by_split["val"]


def test_read_index_and_select(five_shards: Path, tmp_path: Path) -> None:
    table = read_index(five_shards)
    assert table.num_rows == 17 and table["index"].to_pylist() == list(range(17))
    stale = Path(shutil.copytree(five_shards, tmp_path / "stale"))
    shutil.copy(stale / "index" / "shard-000000.parquet", stale / "index" / "shard-000009.parquet")
    assert read_index(stale).num_rows == 17  # only the parts the manifest lists
    (stale / "manifest.json").unlink()
    assert read_index(stale).num_rows == 21  # no manifest yet: every part
    train = read_index(five_shards, columns=["key", "split"], filters=[("split", "=", "train")])
    assert train.column_names == ["key", "split"] and set(train["split"].to_pylist()) == {"train"}

    sel = select(five_shards, identity=[1, 2])  # identity = index // 4: samples 4..11 in shards 1 and 2
    assert sel.shards == ("shard-000001.tar", "shard-000002.tar") and len(sel) == 8
    keys = [s["__key__"] for s in load_webdataset(five_shards, keys=["mesh"], selection=sel)]
    assert sorted(keys) == [f"{i:09d}" for i in range(4, 12)]

    sel = select(five_shards, expression="smile", au_min={"AU12": 0.5})
    expected = {f"{i:09d}" for i in range(17) if i % 4 == 1 and make_sample(i)["au"][11] >= 0.5}
    assert set(sel.keys) == expected and len(expected) > 0
    assert {s["__key__"] for s in load_webdataset(five_shards, keys=["au"], selection=sel)} == expected
    n_test = sum(1 for i in range(17) if make_sample(i)["meta"]["split"] == "test")
    assert len(select(five_shards, split="test")) == n_test


def test_bad_arguments(five_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="unknown member"):
        load_webdataset(five_shards, keys=["mesh", "colour"])
    with pytest.raises(SynthError, match="were not written"):
        load_webdataset(five_shards, keys=["rgb"])
    with pytest.raises(SynthError, match="unknown split"):
        load_webdataset(five_shards, split="training")
    with pytest.raises(SynthError, match="on_error"):
        load_webdataset(five_shards, on_error="ignore")
    with pytest.raises(SynthError, match=r"manifest\.json is missing"):
        load_webdataset(tmp_path)
    with pytest.raises(SynthError, match="unknown AU"):
        select(five_shards, au_min={"AU99": 0.1})


def _damaged(five_shards: Path, tmp_path: Path) -> Path:
    root = Path(shutil.copytree(five_shards, tmp_path / "damaged"))
    flip_byte(root / "shard-000001.tar", "000000006.mesh.npy", at=0.9)  # npy still loads: only the CRC knows
    with open(root / "shard-000003.tar", "r+b") as f:
        f.truncate(5000)
    return root


def test_damaged_shards_raise_naming_shard_and_key(five_shards: Path, tmp_path: Path) -> None:
    root = _damaged(five_shards, tmp_path)
    with pytest.raises(RecordError, match=r"shard-000001\.tar key 000000006: mesh\.npy: CRC-32"):
        list(load_webdataset(root, keys=["mesh"]))
    with pytest.raises(RecordError, match=r"shard-000003\.tar key 0000000\d\d: truncated or corrupt tar"):
        list(load_webdataset([str(root / "shard-000003.tar")], keys=["mesh"]))


def test_damaged_shards_are_skipped_with_a_warning(five_shards: Path, tmp_path: Path) -> None:
    root = _damaged(five_shards, tmp_path)
    with pytest.warns(RecordWarning) as caught:
        keys = [s["__key__"] for s in load_webdataset(root, keys=["mesh"], on_error="warn")]
    assert len(keys) == len(set(keys))
    intact = {f"{i:09d}" for i in (*range(0, 6), 7, *range(8, 12), 16)}  # shards 0, 1 (but 6), 2, 4
    assert intact <= set(keys) <= intact | {f"{i:09d}" for i in range(12, 16)}
    assert len(set(keys) - intact) < 4  # the truncated shard 3 lost samples
    text = " | ".join(str(w.message) for w in caught)
    assert "shard-000001.tar key 000000006" in text and "shard-000003.tar" in text


def test_undecodable_member_without_index(five_shards: Path, tmp_path: Path) -> None:
    shutil.copy(five_shards / "shard-000000.tar", tmp_path)
    flip_byte(tmp_path / "shard-000000.tar", "000000002.depth.png", at=0.5)
    with pytest.raises(RecordError, match=r"shard-000000\.tar key 000000002: depth\.png: not a valid PNG"):
        list(load_webdataset([str(tmp_path / "shard-000000.tar")], keys=["depth"]))


def test_raw_bytes_mode(five_shards: Path) -> None:
    raw = next(iter(load_webdataset(five_shards, keys=["mesh", "depth"], decode=False)))
    assert sorted(k for k in raw if not k.startswith("__")) == ["depth.png", "mesh.npy"]
    assert isinstance(raw["mesh.npy"], bytes) and raw["__key__"] == "000000000"


def _damage_header(path: Path, member: str) -> None:
    """Overwrite the name field of `member`'s tar header (its checksum no longer matches)."""
    import tarfile

    with tarfile.open(path) as tar:
        header = tar.getmember(member).offset
    data = bytearray(path.read_bytes())
    data[header : header + 4] = b"XXXX"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("via_pipe", [False, True], ids=["file", "pipe"])
def test_damaged_header_is_not_taken_for_the_end(five_shards: Path, tmp_path: Path, via_pipe: bool) -> None:
    """tarfile alone stops silently at a bad header; we report it (seekable file and non-seekable pipe)."""
    shutil.copy(five_shards / "shard-000001.tar", tmp_path)
    path = tmp_path / "shard-000001.tar"
    url = f"pipe:cat {path}" if via_pipe else str(path)
    assert len(list(load_webdataset([url], keys=["mesh"]))) == 4  # intact: all read, either way
    _damage_header(path, "000000006.mesh.npy")
    with pytest.raises(RecordError, match=r"key 000000006: truncated or corrupt tar \(damaged tar header"):
        list(load_webdataset([url], keys=["mesh"]))


def test_truncation_at_a_member_boundary_without_index(five_shards: Path, tmp_path: Path) -> None:
    import tarfile

    with tarfile.open(five_shards / "shard-000000.tar") as tar:
        end = tar.getmember("000000002.shaded.png").offset  # header of the next member
    (tmp_path / "shard-000000.tar").write_bytes((five_shards / "shard-000000.tar").read_bytes()[:end])
    with pytest.raises(RecordError, match="no end-of-archive marker"):
        list(load_webdataset([str(tmp_path / "shard-000000.tar")], keys=["au"]))
