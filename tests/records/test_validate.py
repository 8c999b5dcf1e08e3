"""synth validate: intact data passes; truncation, alteration, missing pieces are named by shard + key."""

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from synth.cli import main as synth_main
from synth.records.validate import validate_dataset


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def _member_offset(tar_path: Path, name: str) -> tuple[int, int]:
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(name)
        return info.offset_data, info.size


def flip_byte(tar_path: Path, member: str, at: float = 0.5) -> None:
    """Flip one byte inside `member`'s data (not its header)."""
    offset, size = _member_offset(tar_path, member)
    data = bytearray(tar_path.read_bytes())
    data[offset + int(size * at)] ^= 0xFF
    tar_path.write_bytes(bytes(data))


def _messages(root: Path) -> list[str]:
    return [str(p) for p in validate_dataset(root).problems]


def test_intact_dataset_passes_and_cli_exits_0(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert synth_main(["validate", str(dataset)]) == 0
    assert "10 samples in 3 shards: OK" in capsys.readouterr().out
    assert synth_main(["validate", "--quick", str(dataset)]) == 0


def test_altered_member_is_named_by_shard_and_key(dataset: Path, tmp_path: Path, capsys) -> None:
    root = _copy(dataset, tmp_path)
    flip_byte(root / "shard-000001.tar", "000000006.depth.png")
    messages = _messages(root)
    assert any(m.startswith("shard-000001.tar: sha256 differs") for m in messages), messages
    assert any(m.startswith("shard-000001.tar key 000000006: depth.png: CRC-32") for m in messages), messages
    assert synth_main(["validate", str(root)]) == 1
    assert "key 000000006" in capsys.readouterr().out


def test_parallel_validation_reports_the_same(dataset: Path, tmp_path: Path) -> None:
    root = _copy(dataset, tmp_path)
    flip_byte(root / "shard-000001.tar", "000000006.depth.png")
    (root / "shard-000002.tar").unlink()
    serial = validate_dataset(root)
    parallel = validate_dataset(root, jobs=2)
    assert parallel.problems == serial.problems and len(serial.problems) >= 3
    assert (parallel.num_shards, parallel.num_samples) == (serial.num_shards, serial.num_samples) == (3, 8)


def test_truncated_shard_is_named_by_shard_and_key(dataset: Path, tmp_path: Path) -> None:
    root = _copy(dataset, tmp_path)
    offset, _ = _member_offset(root / "shard-000002.tar", "000000009.depth.png")
    with open(root / "shard-000002.tar", "r+b") as f:
        f.truncate(offset + 100)
    messages = _messages(root)
    assert any("shard-000002.tar: size" in m and "truncated" in m for m in messages), messages
    expected = "shard-000002.tar key 000000009: truncated or corrupt tar"
    assert any(m.startswith(expected) for m in messages), messages


def test_truncation_at_a_sample_boundary_is_noticed(dataset: Path, tmp_path: Path) -> None:
    root = _copy(dataset, tmp_path)
    target = root / "shard-000000.tar"
    with tarfile.open(dataset / "shard-000000.tar") as src, tarfile.open(target, "w") as dst:
        for info in src.getmembers():
            if not info.name.startswith("000000003."):
                dst.addfile(info, src.extractfile(info))
    messages = _messages(root)
    assert "shard-000000.tar key 000000003: sample in the index but not in the tar" in messages


def test_missing_pieces(dataset: Path, tmp_path: Path) -> None:
    root = _copy(dataset, tmp_path)
    (root / "shard-000002.tar").unlink()
    (root / "faces.npy").write_bytes(b"not numpy")
    shutil.copy(root / "shard-000000.tar", root / "shard-000007.tar")
    shutil.copy(root / "index" / "shard-000000.parquet", root / "index" / "shard-000007.parquet")
    messages = _messages(root)
    assert "index part index/shard-000007.parquet is not in the manifest (left from another run?)" in messages
    assert "shard-000002.tar: shard listed in the manifest is missing" in messages
    assert "shard-000007.tar: shard on disk but not in the manifest" in messages
    assert "dataset file faces.npy: sha256 differs from the manifest" in messages
    (root / "manifest.json").unlink()
    assert len(_messages(root)) == 1 and "manifest.json is missing" in _messages(root)[0]


def test_manifest_and_meta_schema_violations(dataset: Path, tmp_path: Path) -> None:
    root = _copy(dataset, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["num_samples"] = 11
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert "manifest num_samples 11 != sum over shards 10" in _messages(root)
    del manifest["shards"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert "'shards' is a required property" in _messages(root)[0]
    manifest["schema_version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert "schema_version 99" in _messages(root)[0]


def test_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert synth_main(["validate", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert synth_main(["validate", str(tmp_path)]) == 1  # an empty directory is an incomplete dataset
