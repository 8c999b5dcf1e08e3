"""The model shipped to workers without a shared disk: pack, unpack into a per-node cache, sha256 checks."""

from pathlib import Path

import pytest

from synth.errors import SynthError
from synth.pipeline.shipping import cached_model, files_sha256, pack_model, shipped_root, unpack_model


def _model_dir(root: Path) -> Path:
    (root / "flows").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"\x00\x01weights" * 100)
    (root / "meta.json").write_text('{"id": "m"}')
    (root / "flows" / "id.safetensors").write_bytes(b"flow")
    return root


def test_round_trip_into_an_empty_cache(tmp_path: Path) -> None:
    package = pack_model(_model_dir(tmp_path / "model"))
    assert sorted(package.files) == ["flows/id.safetensors", "meta.json", "model.safetensors"]
    cache = tmp_path / "node-cache"
    assert cached_model(package.sha256, cache) is None
    path = unpack_model(package, cache)
    assert path == cache / package.sha256
    assert (path / "flows" / "id.safetensors").read_bytes() == b"flow"
    assert cached_model(package.sha256, cache) == path
    assert [p.name for p in cache.iterdir()] == [package.sha256]  # no temporary directory left
    assert unpack_model(package, cache) == path  # filled once: a second worker reuses it


def test_a_changed_cache_or_package_is_not_trusted(tmp_path: Path) -> None:
    package = pack_model(_model_dir(tmp_path / "model"))
    cache = tmp_path / "cache"
    path = unpack_model(package, cache)
    (path / "meta.json").write_text('{"id": "other"}')
    assert cached_model(package.sha256, cache) is None
    assert unpack_model(package, cache) == path and (path / "meta.json").read_text() == '{"id": "m"}'
    damaged = type(package)(package.sha256, {**package.files, "meta.json": b"{}"})
    with pytest.raises(SynthError, match="do not match its sha256"):
        unpack_model(damaged, tmp_path / "cache2")
    assert files_sha256({"a": b"bc"}) != files_sha256({"ab": b"c"})  # names and bytes cannot blur
    with pytest.raises(SynthError, match="missing or empty"):
        pack_model(tmp_path / "absent")


def test_cache_root_follows_synth_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path))
    assert shipped_root() == tmp_path / "shipped"
