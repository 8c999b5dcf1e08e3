"""Writing a dataset: tar shards, Parquet index parts, once-per-dataset files, and the manifest (last).

Every file is written to a temporary name, fsynced and renamed (`synth.atomic`); a shard counts as
complete when its tar AND its index part exist (the index part is written second: it is the shard's
completion marker), and the dataset is complete when `manifest.json` exists (written last).

The dataset directory may also be an object-store URL (s3://, gs://, any fsspec protocol; see
`synth.records.storage`): a shard is then written to a local temporary directory and sent with one
upload per file, tar first, index part second, so the same completion rule holds and one listing tells
which shards are complete. Shard bytes depend only on the samples: members
are sorted, tar headers carry a fixed mtime, owner and mode, and the encoders are deterministic.

A sample handed to `write_shard` is a dict (the pipeline's output for one global sample index):
    index: int                      -> key f"{index:09d}"
    mesh: (N, 3) float32 metres     latents: {"z_id", "z_ex", "w_id", "w_ex"} 1-D float32
    au: (A,) float32 in [0, 1]      lmk2d: (L, 3) float32 (x px, y px, visible)   lmk3d: (L, 3) float32 m
    depth: (H, W) float32 metres    normal: (H, W, 3) float32 unit   mask: (H, W) bool
    canny, shaded: (H, W) uint8     rgb: list of K (S, S, 3) uint8 (may be empty)
    meta: JSON-able dict (numpy values allowed), see `schemas/v1/meta.schema.json`; the writer adds
          key, index and quality.
"""

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from synth.atomic import atomic_open, atomic_write_bytes
from synth.records import codecs
from synth.records.config import OutputConfig
from synth.records.schema import (
    AU_NAMES,
    DATASET_FILES,
    FACES,
    LANDMARKS,
    LATENT_DIMS,
    LATENT_NAMES,
    MANIFEST,
    MEMBER_BY_NAME,
    REQUIRED_MEMBERS,
    SCHEMA_VERSION,
    TAR_MTIME,
    check_array,
    index_part_name,
    index_schema,
    manifest_json_schema,
    meta_json_schema,
    rgb_filenames,
    sample_key,
    shard_name,
)
from synth.records.storage import Store

log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^shard-([0-9]{6})\.tar$")
# Parquet key-value metadata of an index part: enough to rebuild its ShardInfo without reading the tar.
_META_KEY = b"synth_shard"

_meta_validator = jsonschema.Draft202012Validator(meta_json_schema())


@dataclass(frozen=True)
class ShardInfo:
    """A written shard: what the manifest lists for it, plus the dims and members it holds."""

    shard_id: int
    name: str
    index_part: str
    num_samples: int
    first_index: int
    last_index: int
    bytes: int
    sha256: str
    index_sha256: str
    dims: dict[str, int] = field(default_factory=dict)
    members: tuple[str, ...] = ()

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index_part": self.index_part,
            "num_samples": self.num_samples,
            "first_index": self.first_index,
            "last_index": self.last_index,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "index_sha256": self.index_sha256,
        }


class _HashingWriter:
    """A write-only stream that forwards to `f` and keeps the sha256 and size of what went through."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)


def jsonable(obj: Any) -> Any:
    """`obj` with numpy arrays / scalars and tuples turned into plain JSON types (dict keys as str)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def encode_sample(
    sample: Mapping[str, Any], members: Iterable[str], cfg: OutputConfig
) -> tuple[dict[str, bytes], dict[str, Any], dict[str, int]]:
    """Encode one sample.

    Returns (tar members {filename: bytes}, final meta dict, dims {symbol: size}). Raises ValueError
    naming the sample and member when an array has the wrong dtype, shape or range.
    """
    index = int(sample["index"])
    key = sample_key(index)
    wanted = set(REQUIRED_MEMBERS) | set(members)
    missing = sorted(m for m in wanted if m not in sample)
    if missing:
        raise ValueError(f"sample {key}: missing member(s) {missing} (output.members asks for them)")
    dims: dict[str, int] = {}
    files: dict[str, bytes] = {}
    depth_clipped = False

    def checked(name: str, array: Any) -> np.ndarray:
        array = np.asarray(array)
        problems = check_array(MEMBER_BY_NAME[name], array, dims, bind=True)
        if problems:
            raise ValueError(f"sample {key}: {name}: {'; '.join(problems)}")
        return array

    files["mesh.npy"] = codecs.encode_npy(checked("mesh", sample["mesh"]))
    latents = {}
    for name in LATENT_NAMES:
        value = np.asarray(sample["latents"][name])
        if value.ndim != 1 or value.dtype != np.float32 or not np.isfinite(value).all():
            raise ValueError(
                f"sample {key}: latents.{name} must be finite 1-D float32, got {value.dtype} {value.shape}"
            )
        dims = _bind(dims, LATENT_DIMS[name], value.shape[0], f"sample {key}: latents.{name}")
        latents[name] = value
    files["latents.npz"] = codecs.encode_latents(latents)
    files["au.npy"] = codecs.encode_npy(checked("au", sample["au"]))
    level = cfg.png_compression
    for name in ("lmk2d", "lmk3d", "au_nnls"):
        if name in wanted:
            files[f"{name}.npy"] = codecs.encode_npy(checked(name, sample[name]))
    if "depth" in wanted:
        files["depth.png"], depth_clipped = codecs.encode_depth(checked("depth", sample["depth"]), level)
    if "normal" in wanted:
        files["normal.png"] = codecs.encode_normal(checked("normal", sample["normal"]), level)
    if "mask" in wanted:
        files["mask.png"] = codecs.mask_to_png1(checked("mask", sample["mask"]), level)
    for name in ("canny", "shaded"):
        if name in wanted:
            files[f"{name}.png"] = codecs.gray_to_png8(checked(name, sample[name]), level)
    images = list(sample["rgb"]) if "rgb" in wanted else []
    if "rgb" in wanted:
        dims = _bind(dims, "K", len(images), f"sample {key}: rgb")
    for filename, image in zip(rgb_filenames(len(images)), images, strict=True):
        files[filename] = codecs.rgb_to_jpeg(checked("rgb", image), cfg.jpeg_quality)

    meta = jsonable(sample["meta"])
    if "index" in meta and meta["index"] != index:
        raise ValueError(f"sample {key}: meta.index {meta['index']} differs from the sample index {index}")
    lmk2d = np.asarray(sample["lmk2d"]) if "lmk2d" in wanted else None
    meta |= {
        "key": key,
        "index": index,
        "quality": {
            "mask_fraction": float(np.mean(sample["mask"])) if "mask" in wanted else None,
            # None without landmarks (no lmk2d member, or a model without landmark definitions: L = 0)
            "visible_landmarks": float(np.mean(lmk2d[:, 2])) if lmk2d is not None and len(lmk2d) else None,
            "depth_clipped": depth_clipped,
        },
    }
    error = jsonschema.exceptions.best_match(_meta_validator.iter_errors(meta))
    if error is not None:
        where = "/".join(map(str, error.path)) or "(root)"
        raise ValueError(f"sample {key}: meta.json {where}: {error.message}")
    camera = meta["camera"]
    has_maps = any(n in wanted for n in ("depth", "normal", "mask", "canny", "shaded"))
    if has_maps and (dims["H"], dims["W"]) != (camera["height"], camera["width"]):
        raise ValueError(
            f"sample {key}: maps are {dims['H']}x{dims['W']} but the camera says "
            f"{camera['height']}x{camera['width']} (height x width)"
        )
    n_prompts = len(meta.get("prompts", []))
    if images and n_prompts not in (0, len(images)):
        raise ValueError(f"sample {key}: {len(images)} RGB images but {n_prompts} prompts")
    files["meta.json"] = codecs.encode_json(meta)
    return files, meta, dims


def _bind(dims: dict[str, int], symbol: str, size: int, where: str) -> dict[str, int]:
    if dims.setdefault(symbol, size) != size:
        raise ValueError(f"{where}: {symbol} = {size} but {dims[symbol]} elsewhere in the sample")
    return dims


def _index_row(meta: dict[str, Any], sample: Mapping[str, Any], shard: str, files: dict[str, bytes]) -> dict:
    camera = meta["camera"]
    names = sorted(files)
    return {
        "key": meta["key"],
        "index": meta["index"],
        "shard": shard,
        "split": meta["split"],
        "identity_id": meta["identity_id"],
        "expression": meta["expression"],
        "model_id": meta["model_id"],
        "seed": meta["seed"],
        "au": np.asarray(sample["au"], np.float32),
        "au_source": meta.get("au_source"),
        "au_nnls": np.asarray(sample["au_nnls"], np.float32) if "au_nnls.npy" in files else None,
        "au_nnls_residual": meta.get("au_nnls_residual"),
        "log_prob_ex": meta.get("log_prob_ex"),
        **{name: np.asarray(sample["latents"][name], np.float32) for name in LATENT_NAMES},
        "camera_K": np.ravel(camera["K"]).astype(np.float64),
        "camera_R": np.ravel(camera["R"]).astype(np.float64),
        "camera_t": np.ravel(camera["t"]).astype(np.float64),
        "width": camera["width"],
        "height": camera["height"],
        "prompts": list(meta.get("prompts", [])),
        "ethnicity": meta.get("ethnicity"),
        "ethnicities": list(meta.get("ethnicities", [])),
        "diffusion_seeds": list(meta.get("diffusion_seeds", [])),
        "num_rgb": sum(1 for f in names if f.startswith("rgb")),
        "phenotype": [{"name": k, "value": float(v)} for k, v in sorted(meta.get("phenotype", {}).items())],
        "age_months": meta.get("age_months"),
        "sex": meta.get("sex"),
        "head_circumference_mm": meta.get("head_circumference_mm"),
        "mask_fraction": meta["quality"]["mask_fraction"],
        "visible_landmarks": meta["quality"]["visible_landmarks"],
        "depth_clipped": meta["quality"]["depth_clipped"],
        "members": names,
        "crc32": [zlib.crc32(files[f]) for f in names],
    }


def write_shard(
    dataset_dir: str | os.PathLike | Store,
    shard_id: int,
    samples: Sequence[Mapping[str, Any]],
    cfg: OutputConfig,
) -> ShardInfo:
    """Write `shard-<id>.tar` and `index/shard-<id>.parquet` for `samples` (any order; sorted by index).

    dataset_dir: the dataset directory (created) or URL. cfg: output settings (members, JPEG/PNG settings).
    Every sample must hold the members `cfg.members` asks for, with the same dims and the same member set.
    Raises ValueError on bad input (naming the sample key and member) before anything is written.
    """
    store = Store.of(dataset_dir)
    if store.local is not None:
        return _write_shard_local(store.local, shard_id, samples, cfg)
    # An object store: write the finished files locally, then one upload each, tar before index part.
    with tempfile.TemporaryDirectory(prefix="synth-shard-") as tmp:
        info = _write_shard_local(Path(tmp), shard_id, samples, cfg)
        store.put_file(Path(tmp) / info.name, info.name)
        store.put_file(Path(tmp) / info.index_part, info.index_part)
    return info


def _write_shard_local(
    dataset_dir: Path, shard_id: int, samples: Sequence[Mapping[str, Any]], cfg: OutputConfig
) -> ShardInfo:
    if not samples:
        raise ValueError(f"shard {shard_id}: no samples to write")
    name = shard_name(shard_id)
    part = index_part_name(shard_id)
    ordered = sorted(samples, key=lambda s: int(s["index"]))
    indices = [int(s["index"]) for s in ordered]
    if len(set(indices)) != len(indices):
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise ValueError(f"shard {name}: duplicate sample indices {dup}")

    encoded = []
    dims: dict[str, int] = {}
    member_set: tuple[str, ...] | None = None
    for sample in ordered:
        files, meta, sample_dims = encode_sample(sample, cfg.members, cfg)
        for symbol, size in sample_dims.items():
            _bind(dims, symbol, size, f"shard {name}: sample {meta['key']}")
        names = tuple(sorted({_member_name(f) for f in files}))
        if member_set is not None and names != member_set:
            raise ValueError(f"shard {name}: sample {meta['key']} has members {names}, others {member_set}")
        member_set = names
        encoded.append((files, meta, sample))

    with atomic_open(dataset_dir / name) as f:
        stream = _HashingWriter(f)
        writer = wds.TarWriter(
            stream, encoder=False, mtime=TAR_MTIME, user="synth", group="synth", mode=0o444
        )
        with writer:
            for files, meta, _ in encoded:
                writer.write({"__key__": meta["key"], **files})
        tar_sha, tar_bytes = stream.sha256.hexdigest(), stream.size

    rows = [_index_row(meta, sample, name, files) for files, meta, sample in encoded]
    info = ShardInfo(
        shard_id=shard_id,
        name=name,
        index_part=part,
        num_samples=len(rows),
        first_index=indices[0],
        last_index=indices[-1],
        bytes=tar_bytes,
        sha256=tar_sha,
        index_sha256="",
        dims=dict(sorted(dims.items())),
        members=member_set or (),
    )
    schema = index_schema().with_metadata(
        {**index_schema().metadata, _META_KEY: json.dumps(_shard_meta(info), sort_keys=True).encode()}
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue().to_pybytes()
    atomic_write_bytes(dataset_dir / part, data)
    index_sha = hashlib.sha256(data).hexdigest()
    log.debug("wrote %s (%d samples, %d bytes)", name, len(rows), tar_bytes)
    return _replace_index_sha(info, index_sha)


def _member_name(filename: str) -> str:
    return "rgb" if filename.startswith("rgb") else filename.split(".", 1)[0]


def _shard_meta(info: ShardInfo) -> dict[str, Any]:
    entry = info.manifest_entry()
    del entry["index_sha256"]
    return {**entry, "shard_id": info.shard_id, "dims": info.dims, "members": list(info.members)}


def _replace_index_sha(info: ShardInfo, index_sha: str) -> ShardInfo:
    return ShardInfo(**{**info.__dict__, "index_sha256": index_sha})


def read_shard_info(dataset_dir: str | os.PathLike | Store, shard_id: int) -> ShardInfo:
    """The ShardInfo of a complete shard already written (from its index part; the tar is not re-read)."""
    store = Store.of(dataset_dir)
    part = store.url(index_part_name(shard_id))
    data = store.read_bytes(index_part_name(shard_id))  # a few KB: read once for the schema and the sha256
    metadata = pq.read_schema(io.BytesIO(data)).metadata or {}
    if _META_KEY not in metadata:
        raise ValueError(f"{part}: not a synth index part (no {_META_KEY.decode()} metadata)")
    stored = json.loads(metadata[_META_KEY])
    return ShardInfo(
        shard_id=stored["shard_id"],
        name=stored["name"],
        index_part=stored["index_part"],
        num_samples=stored["num_samples"],
        first_index=stored["first_index"],
        last_index=stored["last_index"],
        bytes=stored["bytes"],
        sha256=stored["sha256"],
        index_sha256=hashlib.sha256(data).hexdigest(),
        dims=stored["dims"],
        members=tuple(stored["members"]),
    )


def complete_shards(dataset_dir: str | os.PathLike | Store, clean: bool = True) -> list[int]:
    """Ids of the complete shards in `dataset_dir` (tar and index part both present), sorted.

    One listing of the directory (or bucket prefix). With `clean`, temporary files left by killed local
    writers and tars without an index part are deleted: call it only while no writer is running on this
    dataset (at the start of a run or resume).
    """
    store = Store.of(dataset_dir)
    names = store.listing()
    present = set(names)
    if clean:
        temporary = [n for n in names if n.count("/") <= 1 and n.rsplit("/", 1)[-1].startswith(".")
                     and n.endswith(".tmp")]  # fmt: skip
        for name in temporary:
            log.info("removing temporary file %s", store.url(name))
        store.remove(temporary)
    done = []
    for name in names:
        match = _SHARD_RE.match(name)
        if match is None:
            continue
        shard_id = int(match.group(1))
        if index_part_name(shard_id) in present:
            done.append(shard_id)
        elif clean:
            log.info("removing %s: its index part is missing (the writer was killed in between)", name)
            store.remove([name])
    return done


def remove_dataset(dataset_dir: str | os.PathLike | Store) -> None:
    """Delete the files a synth dataset consists of (manifest first, so a half-deleted one is incomplete)."""
    store = Store.of(dataset_dir)
    store.remove([MANIFEST])
    names = store.listing()
    store.remove(
        [
            n
            for n in names
            if _SHARD_RE.match(n)
            or (n.startswith("index/") and n.endswith(".parquet"))
            or (n.count("/") <= 1 and n.rsplit("/", 1)[-1].startswith(".") and n.endswith(".tmp"))
        ]
    )
    store.remove([n for n in DATASET_FILES if n in names])


def write_dataset_files(
    dataset_dir: str | os.PathLike | Store,
    faces: np.ndarray,
    au_names: Sequence[str],
    landmarks: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write the once-per-dataset files; returns {filename: sha256} for the manifest.

    faces: (F, 3) integer triangles of the topology -> `faces.npy` (int64). au_names: the A AU names ->
    `au_names.json`. landmarks: the landmark definitions (JSON-able; e.g. barycentric points and names)
    -> `landmarks.json`, when given.
    """
    store = Store.of(dataset_dir)
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu" or faces.min() < 0:
        raise ValueError(f"faces must be (F, 3) non-negative integers, got {faces.dtype} {faces.shape}")
    if not au_names or not all(isinstance(n, str) and n for n in au_names):
        raise ValueError("au_names must be a non-empty list of non-empty strings")
    blobs = {
        FACES: codecs.encode_npy(faces.astype(np.int64)),
        AU_NAMES: (json.dumps(list(au_names), indent=1) + "\n").encode(),
    }
    if landmarks is not None:
        blobs[LANDMARKS] = (json.dumps(jsonable(landmarks), indent=1, sort_keys=True) + "\n").encode()
    for filename, data in blobs.items():
        store.write_bytes(filename, data)
    return {filename: hashlib.sha256(data).hexdigest() for filename, data in blobs.items()}


def code_version() -> dict[str, str | None]:
    """The installed synth version and, when run from a git checkout, its commit."""
    try:
        version = importlib.metadata.version("synth")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    return {"synth": version, "git_commit": commit}


def write_manifest(
    dataset_dir: str | os.PathLike | Store,
    shards: Sequence[ShardInfo],
    *,
    config: Mapping[str, Any],
    model: Mapping[str, str],
    au_names: Sequence[str],
    samples_per_shard: int,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write `manifest.json` — LAST, after every shard and dataset file: its presence marks completion.

    shards: ShardInfo of every shard (from `write_shard` or `read_shard_info`), any order.
    config: the resolved run config as a JSON-able dict. model: {"id", "path", "hash"}.
    extra: more top-level keys (e.g. config_hash); they may not shadow the schema's keys.
    Raises ValueError when shards disagree on dims or members, or a dataset file is missing.
    """
    store = Store.of(dataset_dir)
    ordered = sorted(shards, key=lambda s: s.shard_id)
    if len({s.shard_id for s in ordered}) != len(ordered):
        raise ValueError("write_manifest: a shard is listed twice")
    dims: dict[str, int] = {}
    members: tuple[str, ...] | None = None
    for info in ordered:
        for symbol, size in info.dims.items():
            _bind(dims, symbol, size, f"shard {info.name}")
        if members is not None and info.members != members:
            raise ValueError(f"shard {info.name} has members {info.members}, others {members}")
        members = info.members
    dims["A"] = _bind(dims, "A", len(au_names), "au_names")["A"]
    listed = set(store.listing())
    if FACES not in listed:
        raise ValueError(f"{store.url(FACES)} is missing: call write_dataset_files before write_manifest")
    present = [name for name in DATASET_FILES if name in listed]
    dataset_files = {name: hashlib.sha256(store.read_bytes(name)).hexdigest() for name in present}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": jsonable(config),
        "model": jsonable(model),
        "au_names": list(au_names),
        "dims": dict(sorted(dims.items())),
        "members": list(members or ()),
        "num_samples": sum(s.num_samples for s in ordered),
        "samples_per_shard": int(samples_per_shard),
        "shards": [s.manifest_entry() for s in ordered],
        "dataset_files": dataset_files,
        "timings": {k: float(v) for k, v in (timings or {}).items()},
    }
    for k, v in (extra or {}).items():
        if k in manifest:
            raise ValueError(f"write_manifest: extra key {k!r} would overwrite a manifest field")
        manifest[k] = jsonable(v)
    jsonschema.validate(manifest, manifest_json_schema(), cls=jsonschema.Draft202012Validator)
    store.write_text(MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return store.url(MANIFEST)
