"""The member table, the JSON Schemas and the Parquet schema agree with each other and with schemas/."""

import json
from pathlib import Path

import jsonschema
import pytest

from synth.records.schema import (
    INDEX_COLUMNS,
    MEMBERS,
    SCHEMA_VERSION,
    index_schema,
    manifest_json_schema,
    member_of,
    meta_json_schema,
    rgb_filenames,
    sample_key,
    schema_files,
    shard_name,
)

ROOT = Path(__file__).resolve().parents[2]


def test_schema_files_are_up_to_date() -> None:
    """schemas/ is generated; regenerate with `python -m synth.records.schema` after changing the module."""
    for rel, text in schema_files().items():
        path = ROOT / "schemas" / rel
        assert path.is_file(), f"{path} missing: run python -m synth.records.schema"
        assert path.read_text() == text, f"{path} is stale: run python -m synth.records.schema"


@pytest.mark.parametrize("schema", [meta_json_schema(), manifest_json_schema()], ids=["meta", "manifest"])
def test_json_schemas_are_valid_draft_2020_12(schema: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)


def test_member_table() -> None:
    filenames = [m.filename for m in MEMBERS]
    assert len(set(filenames)) == len(filenames)
    assert all("." not in m.name for m in MEMBERS)
    assert {m.name for m in MEMBERS if m.required} == {"mesh", "latents", "au", "meta"}
    for m in MEMBERS:
        assert member_of(m.filename) is m
    assert member_of("rgb_3.jpg").name == "rgb"
    assert member_of("rgb_x.jpg") is None
    assert member_of("mesh.png") is None
    assert rgb_filenames(1) == ["rgb.jpg"]
    assert rgb_filenames(3) == ["rgb_0.jpg", "rgb_1.jpg", "rgb_2.jpg"]
    assert rgb_filenames(0) == []


def test_keys_and_names() -> None:
    assert sample_key(12) == "000000012"
    assert "." not in sample_key(999_999_999)
    assert shard_name(3) == "shard-000003.tar"
    with pytest.raises(ValueError):
        sample_key(-1)
    with pytest.raises(ValueError):
        sample_key(10**9)


def test_index_schema_matches_columns_and_description() -> None:
    schema = index_schema()
    assert schema.names == [c.name for c in INDEX_COLUMNS]
    assert schema.metadata[b"synth_schema_version"] == str(SCHEMA_VERSION).encode()
    described = json.loads(schema_files()[f"v{SCHEMA_VERSION}/index.schema.json"])
    assert [c["name"] for c in described["columns"]] == schema.names
