"""`synth validate DIR`: is a dataset complete, intact and true to its schema?

Checks, in order: the manifest (present, schema-valid, version), the once-per-dataset files (sha256,
topology), every shard listed (present, size, sha256, index part sha256 and schema, no unlisted shards),
then every sample of every shard: members as the index lists them with matching CRC-32, each member
decodes to the dtype / shape / range of the member table, finite values, mesh vertex count = the
topology's, images as large as the camera says, meta.json valid and consistent with its index row.
Problems are collected (not raised) and each names the shard and key where it applies.
"""

import concurrent.futures
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow.parquet as pq

from synth.records import codecs
from synth.records.reader import RecordError, check_crc, decode_raw, iter_raw_samples
from synth.records.schema import (
    AU_NAMES,
    FACES,
    LATENT_DIMS,
    LATENT_NAMES,
    MANIFEST,
    MEMBER_BY_NAME,
    SCHEMA_VERSION,
    check_array,
    index_schema,
    manifest_json_schema,
    meta_json_schema,
)
from synth.records.storage import Store

log = logging.getLogger(__name__)

_meta_validator = jsonschema.Draft202012Validator(meta_json_schema())
_manifest_validator = jsonschema.Draft202012Validator(manifest_json_schema())
_MAP_MEMBERS = ("depth", "normal", "mask", "canny", "shaded")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; `shard` and `key` are None when it is not about one shard/sample."""

    message: str
    shard: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = " ".join(p for p in (self.shard, f"key {self.key}" if self.key else None) if p)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class Report:
    """The outcome of `validate_dataset`."""

    problems: list[Problem]
    num_shards: int = 0
    num_samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_dataset(dataset_dir: str | Path | Store, decode: bool = True, jobs: int = 1) -> Report:
    """Validate the dataset in `dataset_dir` (a directory or an object-store URL such as s3://b/ds).

    decode: False checks files, checksums and CRCs only (fast). jobs: processes checking shards in
    parallel (problems are reported in shard order whatever the number).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    root = Store.of(dataset_dir)
    report = Report(problems=[])
    problems = report.problems
    manifest = _load_manifest(root, problems)
    if manifest is None:
        return report
    dims: dict[str, int] = dict(manifest["dims"])
    _check_dataset_files(root, manifest, dims, problems)

    listed = {s["name"]: s for s in manifest["shards"]}
    names = root.listing()
    on_disk = {n for n in names if n.startswith("shard-") and n.endswith(".tar") and "/" not in n}
    for name in sorted(on_disk - set(listed)):
        problems.append(Problem("shard on disk but not in the manifest", shard=name))
    listed_parts = {s["index_part"] for s in manifest["shards"]}
    for part in [n for n in names if n.startswith("index/") and n.endswith(".parquet") and n.count("/") == 1]:
        if part not in listed_parts:
            problems.append(Problem(f"index part {part} is not in the manifest (left from another run?)"))
    total = sum(s["num_samples"] for s in manifest["shards"])
    if total != manifest["num_samples"]:
        problems.append(Problem(f"manifest num_samples {manifest['num_samples']} != sum over shards {total}"))

    tasks = [(root, entry, manifest, dims, decode) for entry in manifest["shards"]]
    if jobs == 1:
        results = map(_check_shard, tasks)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(jobs)
        results = pool.map(_check_shard, tasks)
    try:
        seen_keys: set[str] = set()
        for entry, (shard_problems, keys, num_samples) in zip(manifest["shards"], results, strict=True):
            report.num_shards += 1
            problems.extend(shard_problems)
            for key in keys:
                if key in seen_keys:
                    problems.append(
                        Problem("key appears in more than one shard", shard=entry["name"], key=key)
                    )
                seen_keys.add(key)
            report.num_samples += num_samples
    finally:
        if jobs > 1:
            pool.shutdown()
    return report


_ShardTask = tuple[Store, dict, dict, dict[str, int], bool]


def _check_shard(task: _ShardTask) -> tuple[list[Problem], list[str], int]:
    """Check one shard (files, then samples): (problems, index keys, samples read). Runs in a worker."""
    root, entry, manifest, dims, decode = task
    problems: list[Problem] = []
    rows = _check_shard_files(root, entry, problems)
    if rows is None:
        return problems, [], 0
    num_samples = _check_samples(root, entry, rows, manifest, dims, decode, problems)
    return problems, list(rows), num_samples


def _load_manifest(root: Store, problems: list[Problem]) -> dict[str, Any] | None:
    if not root.exists(MANIFEST):
        problems.append(
            Problem(f"{root.url(MANIFEST)} is missing: the dataset is incomplete (the run did not finish)")
        )
        return None
    try:
        manifest = json.loads(root.read_bytes(MANIFEST).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(Problem(f"{MANIFEST} is not valid JSON: {err}"))
        return None
    if isinstance(manifest, dict) and manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version")
        problems.append(Problem(f"schema_version {found!r}; this synth reads version {SCHEMA_VERSION}"))
        return None
    error = jsonschema.exceptions.best_match(_manifest_validator.iter_errors(manifest))
    if error is not None:
        where = "/".join(map(str, error.path)) or "(root)"
        problems.append(Problem(f"{MANIFEST} {where}: {error.message}"))
        return None
    if manifest["dims"].get("A") != len(manifest["au_names"]):
        problems.append(
            Problem(f"dims.A {manifest['dims'].get('A')} != {len(manifest['au_names'])} au_names")
        )
    return manifest


def _check_dataset_files(root: Store, manifest: dict[str, Any], dims: dict[str, int], problems: list) -> None:
    files = manifest["dataset_files"]
    for name, sha in files.items():
        if not root.exists(name):
            problems.append(Problem(f"dataset file {name} is missing"))
        elif hashlib.sha256(root.read_bytes(name)).hexdigest() != sha:
            problems.append(Problem(f"dataset file {name}: sha256 differs from the manifest"))
    if FACES not in files:
        problems.append(Problem(f"{FACES} (the topology) is not listed in the manifest"))
    elif root.exists(FACES):
        try:
            faces = codecs.decode_npy(root.read_bytes(FACES))
        except codecs.DecodeError as err:
            problems.append(Problem(f"{FACES}: {err}"))
        else:
            if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
                problems.append(
                    Problem(f"{FACES}: expected (F, 3) integers, got {faces.dtype} {faces.shape}")
                )
            elif "N" in dims and (faces.min() < 0 or faces.max() >= dims["N"]):
                problems.append(Problem(f"{FACES} indexes vertices outside [0, N={dims['N']})"))
    if root.exists(AU_NAMES):
        try:
            names = json.loads(root.read_bytes(AU_NAMES).decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            names = None
        if names != manifest["au_names"]:
            problems.append(Problem(f"{AU_NAMES} differs from the manifest's au_names"))


def _check_shard_files(root: Store, entry: dict[str, Any], problems: list[Problem]) -> dict[str, dict] | None:
    """Check a shard's tar and index part; return its index rows by key (None if the index is unusable)."""
    name = entry["name"]
    if not root.exists(name):
        problems.append(Problem("shard listed in the manifest is missing", shard=name))
        return None
    size = root.size(name)
    if size != entry["bytes"]:
        problems.append(
            Problem(f"size {size} bytes, manifest says {entry['bytes']} (truncated?)", shard=name)
        )
    if _sha256(root, name) != entry["sha256"]:
        problems.append(Problem("sha256 differs from the manifest (altered or truncated)", shard=name))
    if not root.exists(entry["index_part"]):
        problems.append(Problem(f"index part {entry['index_part']} is missing", shard=name))
        return None
    data = root.read_bytes(entry["index_part"])
    if hashlib.sha256(data).hexdigest() != entry["index_sha256"]:
        problems.append(
            Problem(f"index part {entry['index_part']}: sha256 differs from the manifest", shard=name)
        )
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as err:  # pyarrow raises several types for a damaged file; report any
        problems.append(Problem(f"index part {entry['index_part']} unreadable: {err}", shard=name))
        return None
    if not table.schema.equals(index_schema(), check_metadata=False):
        problems.append(
            Problem(f"index part {entry['index_part']}: schema differs from v{SCHEMA_VERSION}", shard=name)
        )
        return None
    rows = {row["key"]: row for row in table.to_pylist()}
    if len(rows) != entry["num_samples"] or table.num_rows != entry["num_samples"]:
        problems.append(
            Problem(f"index has {table.num_rows} rows, manifest says {entry['num_samples']}", shard=name)
        )
    if any(row["shard"] != name for row in rows.values()):
        problems.append(Problem("index rows name another shard", shard=name))
    return rows


def _sha256(root: Store, name: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with root.open(name) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_samples(
    root: Store,
    entry: dict[str, Any],
    rows: dict[str, dict],
    manifest: dict[str, Any],
    dims: dict[str, int],
    decode: bool,
    problems: list[Problem],
) -> int:
    """Stream one shard and check every sample; returns the number of samples read."""
    name = entry["name"]
    seen: list[str] = []
    try:
        with root.open(name) as stream:
            for raw in iter_raw_samples(stream, name):
                key = raw["__key__"]
                if seen and key <= seen[-1]:
                    problems.append(Problem("keys are not in increasing order", shard=name, key=key))
                seen.append(key)
                row = rows.get(key)
                if row is None:
                    problems.append(Problem("sample not in the index", shard=name, key=key))
                    continue
                try:
                    check_crc(raw, row["members"], row["crc32"])
                except RecordError as err:
                    problems.append(Problem(err.message, shard=name, key=key))
                    continue
                if decode:
                    problems.extend(_check_sample(raw, row, manifest, dims))
    except RecordError as err:
        problems.append(Problem(err.message, shard=name, key=err.key))
    for key in sorted(set(rows) - set(seen)):
        problems.append(Problem("sample in the index but not in the tar", shard=name, key=key))
    if seen and (int(seen[0]), int(seen[-1])) != (entry["first_index"], entry["last_index"]):
        problems.append(Problem(f"index range {seen[0]}..{seen[-1]} differs from the manifest", shard=name))
    return len(seen)


def _check_sample(
    raw: dict[str, Any], row: dict[str, Any], manifest: dict, dims: dict[str, int]
) -> list[Problem]:
    shard, key = raw["__shard__"], raw["__key__"]
    out: list[Problem] = []

    def bad(message: str) -> None:
        out.append(Problem(message, shard=shard, key=key))

    try:
        sample = decode_raw(raw)
    except RecordError as err:
        return [Problem(err.message, shard=shard, key=key)]
    present = {n for n in MEMBER_BY_NAME if n in sample}
    expected = set(manifest["members"])
    if present != expected:
        bad(f"members {sorted(present)} differ from the manifest's {sorted(expected)}")
    for name in sorted(present - {"latents", "meta", "rgb"}):
        for problem in check_array(MEMBER_BY_NAME[name], sample[name], dims):
            bad(f"{MEMBER_BY_NAME[name].filename}: {problem}")
    if "rgb" in sample:
        if sample["rgb"].shape[0] != dims.get("K"):
            bad(f"{sample['rgb'].shape[0]} RGB images, dims.K = {dims.get('K')}")
        for k, image in enumerate(sample["rgb"]):
            for problem in check_array(MEMBER_BY_NAME["rgb"], image, dims):
                bad(f"rgb image {k}: {problem}")
    latents = sample.get("latents", {})
    if sorted(latents) != sorted(LATENT_NAMES):
        bad(f"latents.npz holds {sorted(latents)}, expected {sorted(LATENT_NAMES)}")
    for lname in sorted(set(latents) & set(LATENT_NAMES)):
        value = latents[lname]
        symbol = LATENT_DIMS[lname]
        if value.dtype != np.float32 or value.shape != (dims.get(symbol, value.shape[0]),):
            bad(f"latents.{lname}: {value.dtype} {value.shape}, expected float32 ({symbol},)")
        elif not np.isfinite(value).all():
            bad(f"latents.{lname}: non-finite values")
    meta = sample.get("meta")
    if meta is None:
        return out
    error = jsonschema.exceptions.best_match(_meta_validator.iter_errors(meta))
    if error is not None:
        bad(f"meta.json {'/'.join(map(str, error.path)) or '(root)'}: {error.message}")
        return out
    if meta["key"] != key:
        bad(f"meta.json key {meta['key']} differs from the tar key")
    camera = meta["camera"]
    for name in _MAP_MEMBERS:
        if name in sample and sample[name].shape[:2] != (camera["height"], camera["width"]):
            bad(f"{name} is {sample[name].shape[:2]} but the camera is {camera['height']}x{camera['width']}")
    for column in ("split", "identity_id", "expression", "model_id", "seed"):
        if row[column] != meta[column]:
            bad(f"index {column} {row[column]!r} differs from meta.json {meta[column]!r}")
    if "au" in sample and not np.array_equal(np.asarray(row["au"], np.float32), sample["au"]):
        bad("index au differs from au.npy")
    return out
