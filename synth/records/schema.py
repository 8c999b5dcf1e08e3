"""The one sample schema: every record member, the meta.json / manifest.json JSON Schemas, the Parquet index.

Writer, reader, validator and the generated files in `schemas/v<SCHEMA_VERSION>/` all derive from the tables
in this module; `python -m synth.records.schema [ROOT]` regenerates those files and a test checks that they
are up to date.

Symbolic dimensions (their values for one dataset are in `manifest.json["dims"]`):
    N   vertices of the topology (`faces.npy` indexes them)
    A   action units (`manifest.json["au_names"]`, 46 for the default model)
    L   landmarks (`landmarks.json`)
    Zi, Ze   latent dims of the identity / expression flows (z space)
    I, E     bilinear weight dims of identity / expression (w space)
    H, W     conditioning-map height and width in pixels (= `meta.camera.height`, `meta.camera.width`)
    S        side of the square RGB images in pixels
    K        RGB images per sample (0 when diffusion is off)
"""

import json
import logging
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from synth.atomic import atomic_write_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
KEY_DIGITS = 9
KEY_PATTERN = rf"^[0-9]{{{KEY_DIGITS}}}$"
SHARD_PATTERN = r"^shard-[0-9]{6}\.tar$"
# Every tar member carries this mtime (2020-01-01T00:00:00Z) so that shards are byte-reproducible.
TAR_MTIME = 1577836800
LATENT_NAMES = ("z_id", "z_ex", "w_id", "w_ex")
LATENT_DIMS = {"z_id": "Zi", "z_ex": "Ze", "w_id": "I", "w_ex": "E"}
# Once-per-dataset files, relative to the dataset directory; the manifest is written last.
MANIFEST = "manifest.json"
FACES = "faces.npy"
LANDMARKS = "landmarks.json"
AU_NAMES = "au_names.json"
DATASET_FILES = (FACES, LANDMARKS, AU_NAMES)
# Depth is stored as uint16 millimetres: the largest representable depth in metres.
DEPTH_MAX_M = 65.535


def sample_key(index: int) -> str:
    """The WebDataset key of global sample `index`: zero-padded, no dots."""
    if index < 0 or index >= 10**KEY_DIGITS:
        raise ValueError(f"sample index must be in [0, {10**KEY_DIGITS}), got {index}")
    return f"{index:0{KEY_DIGITS}d}"


def shard_name(shard_id: int) -> str:
    """The file name of shard `shard_id` (`shard-000000.tar`)."""
    if not 0 <= shard_id < 10**6:
        raise ValueError(f"shard id must be in [0, 1000000), got {shard_id}")
    return f"shard-{shard_id:06d}.tar"


def index_part_name(shard_id: int) -> str:
    """The Parquet index part of shard `shard_id`, relative to the dataset directory."""
    return f"index/{shard_name(shard_id).removesuffix('.tar')}.parquet"


class Encoding(Enum):
    """How a member's array becomes bytes in the tar."""

    NPY = "npy"  # numpy .npy, little-endian, no pickle
    NPZ = "npz"  # numpy .npz (uncompressed) of named 1-D arrays
    PNG16 = "png16"  # 16-bit grayscale PNG
    PNG_RGB8 = "png_rgb8"  # 8-bit RGB PNG
    PNG8 = "png8"  # 8-bit grayscale PNG
    PNG1 = "png1"  # 1-bit (bilevel) PNG
    JPEG = "jpeg"  # baseline JPEG, RGB, quality from OutputConfig.jpeg_quality
    JSON = "json"  # UTF-8 JSON object


@dataclass(frozen=True)
class Member:
    """One record member: its file name in the tar and what the decoded array is.

    `dtype` and `shape` describe the array the writer takes and the loader returns (for `latents`: each of
    its arrays; for `rgb`: each image). `stored_dtype` is what the file holds when the encoding quantises.
    """

    name: str
    ext: str
    encoding: Encoding
    dtype: str
    shape: tuple[str | int, ...]
    unit: str
    low: float | None
    high: float | None
    required: bool
    description: str
    stored_dtype: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.ext}"


MEMBERS: tuple[Member, ...] = (
    Member("mesh", "npy", Encoding.NPY, "float32", ("N", 3), "m", None, None, True,
           "vertex positions in the model/world frame (z up, face towards -y); triangles in faces.npy"),
    Member("latents", "npz", Encoding.NPZ, "float32", (), "1", None, None, True,
           "flow latents z_id (Zi,), z_ex (Ze,) and bilinear weights w_id (I,), w_ex (E,)"),
    Member("au", "npy", Encoding.NPY, "float32", ("A",), "intensity", 0.0, 1.0, True,
           "FACS action-unit intensities; names in manifest.json au_names. meta.au_source says what they "
           "are: 'generating' = the AU vector the sample was made from (exact), 'generating_clipped' = that "
           "vector clipped to [0, 1], 'nnls' = the NNLS estimate from the mesh (flow / catalogue samples)"),
    Member("au_nnls", "npy", Encoding.NPY, "float32", ("A",), "intensity", 0.0, 1.0, False,
           "NNLS estimate of the AU intensities from the mesh (the label for samples not made from an AU "
           "vector); its relative residual in meta.au_nnls_residual"),
    Member("lmk2d", "npy", Encoding.NPY, "float32", ("L", 3), "px, px, flag", None, None, False,
           "landmarks projected to the image: x, y in pixels (pixel centres at integer + 0.5), "
           "visible flag in {0, 1}"),
    Member("lmk3d", "npy", Encoding.NPY, "float32", ("L", 3), "m", None, None, False,
           "3D landmarks in the world frame; definitions in landmarks.json"),
    Member("depth", "png", Encoding.PNG16, "float32", ("H", "W"), "m", 0.0, None, False,
           "camera-frame z; stored as uint16 millimetres (nearest mm, foreground >= 1 mm, clipped at "
           "65.535 m), 0 = background",
           stored_dtype="uint16"),
    Member("normal", "png", Encoding.PNG_RGB8, "float32", ("H", "W", 3), "1", -1.0, 1.0, False,
           "camera-space unit normals (OpenCV axes); stored as round((n + 1) * 127.5) per channel, "
           "(0, 0, 0) = background; decoded renormalised to unit length, background as the zero vector",
           stored_dtype="uint8"),
    Member("mask", "png", Encoding.PNG1, "bool", ("H", "W"), "1", None, None, False,
           "face foreground; stored as a 1-bit PNG", stored_dtype="uint8"),
    Member("canny", "png", Encoding.PNG8, "uint8", ("H", "W"), "1", 0, 255, False,
           "Canny edges of the shaded render (ControlNet canny condition)"),
    Member("shaded", "png", Encoding.PNG8, "uint8", ("H", "W"), "1", 0, 255, False,
           "grayscale Lambertian render under the sampled light"),
    Member("rgb", "jpg", Encoding.JPEG, "uint8", ("S", "S", 3), "1", 0, 255, False,
           "diffusion images: rgb.jpg when K = 1, rgb_0.jpg .. rgb_{K-1}.jpg when K > 1; "
           "prompts and seeds in meta.json"),
    Member("meta", "json", Encoding.JSON, "object", (), "", None, None, True,
           "per-sample metadata, see schemas/v1/meta.schema.json"),
)  # fmt: skip
MEMBER_BY_NAME: dict[str, Member] = {m.name: m for m in MEMBERS}
REQUIRED_MEMBERS = tuple(m.name for m in MEMBERS if m.required)
OPTIONAL_MEMBERS = tuple(m.name for m in MEMBERS if not m.required)


def rgb_filenames(count: int) -> list[str]:
    """Tar member names of `count` RGB images of one sample (`rgb.jpg`, or `rgb_0.jpg`.. when several)."""
    if count == 1:
        return ["rgb.jpg"]
    return [f"rgb_{k}.jpg" for k in range(count)]


def member_of(filename: str) -> Member | None:
    """The member a tar member name (without key) belongs to, or None for an unknown name."""
    if filename.startswith("rgb") and filename.endswith(".jpg"):
        stem = filename[: -len(".jpg")]
        if stem == "rgb" or (stem.startswith("rgb_") and stem[4:].isdigit()):
            return MEMBER_BY_NAME["rgb"]
        return None
    member = MEMBER_BY_NAME.get(filename.split(".", 1)[0])
    return member if member is not None and member.filename == filename else None


def check_array(member: Member, array: np.ndarray, dims: dict[str, int], bind: bool = False) -> list[str]:
    """Problems of one decoded member array (or one RGB image) against the member table; [] when fine.

    dims: values of the symbolic dims; with `bind`, a symbol not yet in `dims` takes this array's size
    (the writer binds from the first member it sees), otherwise unknown symbols are not checked.
    """
    if str(array.dtype) != member.dtype:
        return [f"dtype {array.dtype}, expected {member.dtype}"]
    if array.ndim != len(member.shape):
        return [f"shape {array.shape}, expected {member.shape}"]
    problems = []
    for axis, (size, symbol) in enumerate(zip(array.shape, member.shape, strict=True)):
        if isinstance(symbol, int):
            expected: int | None = symbol
        elif symbol in dims or bind:
            expected = dims.setdefault(symbol, size)
        else:
            expected = None
        if expected is not None and size != expected:
            problems.append(f"axis {axis} ({symbol}) has size {size}, expected {expected}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        problems.append("non-finite values")
    elif array.size and member.low is not None and array.min() < member.low:
        problems.append(f"values below {member.low} (min {array.min()})")
    elif array.size and member.high is not None and array.max() > member.high:
        problems.append(f"values above {member.high} (max {array.max()})")
    if member.name == "lmk2d" and array.size and not np.isin(array[:, 2], (0.0, 1.0)).all():
        problems.append("visible flags (column 2) not in {0, 1}")
    return problems


# ---------------------------------------------------------------------------------------------- meta.json


def _matrix(rows: int, cols: int) -> dict[str, Any]:
    row = {"type": "array", "items": {"type": "number"}, "minItems": cols, "maxItems": cols}
    return {"type": "array", "items": row, "minItems": rows, "maxItems": rows}


def _vector(n: int | None, item: str = "number") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": {"type": item}}
    if n is not None:
        out |= {"minItems": n, "maxItems": n}
    return out


META_FIELDS: dict[str, tuple[bool, dict[str, Any], str]] = {
    # name: (required, JSON Schema, description)
    "key": (True, {"type": "string", "pattern": KEY_PATTERN}, "WebDataset key (added by the writer)"),
    "index": (True, {"type": "integer", "minimum": 0}, "global sample index (added by the writer)"),
    "split": (True, {"enum": list(SPLITS)}, "identity-disjoint split"),
    "identity_id": (True, {"type": "integer", "minimum": 0}, "identity number (same identity, same w_id)"),
    "expression": (True, {"type": "string"}, "expression name, or the sampler's label for random draws"),
    "model_id": (True, {"type": "string"}, "id of the face model that made the mesh"),
    "seed": (True, {"type": "integer", "minimum": 0}, "run seed; with index it regenerates the sample"),
    "camera": (
        True,
        {
            "type": "object",
            "required": ["K", "R", "t", "width", "height"],
            "properties": {
                "K": _matrix(3, 3),
                "R": _matrix(3, 3),
                "t": _vector(3),
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
            },
        },
        "pinhole camera, OpenCV convention: K pixel intrinsics, R, t world-to-camera, image width/height "
        "in pixels of the conditioning maps",
    ),
    "light": (False, {"type": "object"}, "light parameters of the shaded render (renderer-specific)"),
    "au_source": (
        False,
        {"enum": ["generating", "generating_clipped", "nnls"]},
        "what au.npy holds: the AU vector that made the sample (exact), that vector clipped to [0, 1], or "
        "the NNLS estimate from the mesh",
    ),
    "au_nnls_residual": (
        False,
        {"type": "number", "minimum": 0},
        "relative residual ||d - B c|| / ||d|| of the NNLS estimate (au_nnls.npy) on the expression "
        "deformation d from the identity's neutral (0 = explained exactly; 0 for a neutral face)",
    ),
    "log_prob_ex": (
        False,
        {"type": "number"},
        "log-density of w_ex under the expression flow (nats, PCA coordinates); low values flag "
        "expressions far from the model's training codes",
    ),
    "prompts": (False, _vector(None, "string"), "one diffusion prompt per RGB image (rgb_k <- prompts[k])"),
    "negative_prompt": (False, {"type": ["string", "null"]}, "diffusion negative prompt"),
    "ethnicity": (False, {"type": ["string", "null"]}, "ethnicity token of the first RGB image's prompt"),
    "ethnicities": (
        False,
        _vector(None, "string"),
        "ethnicity token of each RGB image's prompt (rgb_k <- ethnicities[k]; they differ when sampled)",
    ),
    "diffusion_seeds": (False, _vector(None, "integer"), "one diffusion seed per RGB image"),
    "phenotype": (
        False,
        {"type": "object", "additionalProperties": {"type": "number"}},
        "phenotype parameters of the identity (e.g. Anny age, gender, weight; model-specific)",
    ),
    "age_months": (
        False,
        {"type": ["number", "null"], "minimum": 0},
        "the identity's age in months: the sampler's conditioning target, else estimated from the identity "
        "latent (age_sex_estimated; error in docs/anthropometry.md); null without a labelled model",
    ),
    "sex": (
        False,
        {"enum": ["female", "male", None]},
        "the identity's sex (target or estimate, as age_months)",
    ),
    "age_sex_estimated": (
        False,
        {"type": "boolean"},
        "age_months / sex are estimates, not conditioning targets",
    ),
    "head_circumference_mm": (
        False,
        {"type": ["number", "null"], "minimum": 0},
        "occipitofrontal head circumference of the identity's neutral mesh in mm (docs/anthropometry.md); "
        "null off the Anny head topology",
    ),
    "quality": (
        True,
        {
            "type": "object",
            "required": ["mask_fraction", "visible_landmarks", "depth_clipped"],
            "properties": {
                "mask_fraction": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "visible_landmarks": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "depth_clipped": {"type": "boolean"},
            },
        },
        "quality flags computed by the writer: foreground fraction of the image, fraction of visible "
        "landmarks (null without mask / lmk2d), whether depth beyond 65.535 m was clipped",
    ),
}


def meta_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a sample's `meta.json`. Extra keys are allowed (sampler extras)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"synth/schemas/v{SCHEMA_VERSION}/meta.schema.json",
        "title": "synth sample meta.json",
        "type": "object",
        "required": [k for k, (req, _, _) in META_FIELDS.items() if req],
        "properties": {k: {**s, "description": d} for k, (_, s, d) in META_FIELDS.items()},
        "additionalProperties": True,
    }


# ------------------------------------------------------------------------------------------ manifest.json


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a dataset's `manifest.json`."""
    sha = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    shard = {
        "type": "object",
        "required": ["name", "index_part", "num_samples", "first_index", "last_index", "bytes", "sha256",
                     "index_sha256"],
        "properties": {
            "name": {"type": "string", "pattern": SHARD_PATTERN},
            "index_part": {"type": "string"},
            "num_samples": {"type": "integer", "minimum": 1},
            "first_index": {"type": "integer", "minimum": 0},
            "last_index": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0},
            "sha256": sha,
            "index_sha256": sha,
        },
        "additionalProperties": False,
    }  # fmt: skip
    dims = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"synth/schemas/v{SCHEMA_VERSION}/manifest.schema.json",
        "title": "synth dataset manifest.json (written last: its presence marks a complete dataset)",
        "type": "object",
        "required": ["schema_version", "code_version", "config", "model", "au_names", "dims", "members",
                     "num_samples", "samples_per_shard", "shards", "dataset_files", "timings"],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "code_version": {
                "type": "object",
                "required": ["synth"],
                "properties": {"synth": {"type": "string"}, "git_commit": {"type": ["string", "null"]}},
            },
            "created_utc": {"type": "string"},
            "config": {"type": "object", "description": "the resolved run configuration"},
            "model": {
                "type": "object",
                "required": ["id", "path", "hash"],
                "properties": {k: {"type": "string"} for k in ("id", "path", "hash")},
            },
            "au_names": _vector(None, "string"),
            "dims": {**dims, "description": "values of the symbolic dims N, A, L, Zi, Ze, I, E, H, W, S, K"},
            "members": {**_vector(None, "string"), "description": "member names present in every sample"},
            "num_samples": {"type": "integer", "minimum": 0},
            "samples_per_shard": {"type": "integer", "minimum": 1},
            "shards": {"type": "array", "items": shard},
            "dataset_files": {"type": "object", "additionalProperties": sha,
                              "description": "sha256 of the once-per-dataset files"},
            "timings": {"type": "object", "additionalProperties": {"type": "number"},
                        "description": "wall-clock seconds per stage"},
        },
        "additionalProperties": True,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- Parquet


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    description: str


_F32 = pa.list_(pa.float32())
_F64 = pa.list_(pa.float64())
INDEX_COLUMNS: tuple[Column, ...] = (
    Column("key", pa.string(), False, "WebDataset key (zero-padded global index)"),
    Column("index", pa.int64(), False, "global sample index"),
    Column("shard", pa.string(), False, "tar file holding the sample, relative to the dataset directory"),
    Column("split", pa.string(), False, "train / val / test (identity-disjoint)"),
    Column("identity_id", pa.int64(), False, "identity number"),
    Column("expression", pa.string(), False, "expression name or sampler label"),
    Column("model_id", pa.string(), False, "face model id"),
    Column("seed", pa.int64(), False, "run seed"),
    Column("au", _F32, False, "A action-unit intensities in [0, 1], order of manifest au_names"),
    Column(
        "au_source", pa.string(), True, "generating / generating_clipped / nnls: what the au column holds"
    ),
    Column("au_nnls", _F32, True, "NNLS estimate of the A AU intensities from the mesh (null without it)"),
    Column("au_nnls_residual", pa.float32(), True, "relative residual of the NNLS estimate"),
    Column("log_prob_ex", pa.float32(), True, "log p(w_ex) under the expression flow (nats)"),
    Column("z_id", _F32, False, "identity flow latent (Zi,)"),
    Column("z_ex", _F32, False, "expression flow latent (Ze,)"),
    Column("w_id", _F32, False, "identity bilinear weights (I,)"),
    Column("w_ex", _F32, False, "expression bilinear weights (E,)"),
    Column("camera_K", _F64, False, "3x3 pixel intrinsics, row-major (9,)"),
    Column("camera_R", _F64, False, "3x3 world-to-camera rotation, row-major (9,)"),
    Column("camera_t", _F64, False, "world-to-camera translation (3,), metres"),
    Column("width", pa.int32(), False, "conditioning-map width in pixels"),
    Column("height", pa.int32(), False, "conditioning-map height in pixels"),
    Column("prompts", pa.list_(pa.string()), False, "diffusion prompt per RGB image"),
    Column("ethnicity", pa.string(), True, "ethnicity token of the first RGB image's prompt"),
    Column("ethnicities", pa.list_(pa.string()), False, "ethnicity token per RGB image"),
    Column("diffusion_seeds", pa.list_(pa.int64()), False, "diffusion seed per RGB image"),
    Column("num_rgb", pa.int32(), False, "RGB images in the sample (K)"),
    Column(
        "phenotype",
        pa.list_(pa.struct([pa.field("name", pa.string()), pa.field("value", pa.float64())])),
        False,
        "phenotype parameters as (name, value) pairs",
    ),
    Column("age_months", pa.float32(), True, "identity age in months (target or estimate, see meta.json)"),
    Column("sex", pa.string(), True, "identity sex: female / male (target or estimate)"),
    Column("head_circumference_mm", pa.float32(), True, "identity's neutral head circumference, mm"),
    Column("mask_fraction", pa.float32(), True, "foreground fraction of the image (null without mask)"),
    Column("visible_landmarks", pa.float32(), True, "fraction of visible landmarks (null without lmk2d)"),
    Column("depth_clipped", pa.bool_(), False, "depth beyond 65.535 m was clipped"),
    Column("members", pa.list_(pa.string()), False, "tar member names of the sample (without key), sorted"),
    Column("crc32", pa.list_(pa.int64()), False, "zlib CRC-32 of each member's bytes, same order as members"),
)
INDEX_COLUMN_BY_NAME = {c.name: c for c in INDEX_COLUMNS}


def index_schema() -> pa.Schema:
    """The Arrow schema of every Parquet index part (`index/shard-*.parquet`)."""
    return pa.schema(
        [pa.field(c.name, c.type, nullable=c.nullable) for c in INDEX_COLUMNS],
        metadata={"synth_schema_version": str(SCHEMA_VERSION)},
    )


def index_schema_description() -> dict[str, Any]:
    """The Parquet index schema as JSON: column name, Arrow type, nullability, description."""
    return {
        "title": "synth Parquet index part (index/shard-NNNNNN.parquet): one row per sample",
        "schema_version": SCHEMA_VERSION,
        "columns": [
            {"name": c.name, "type": str(c.type), "nullable": c.nullable, "description": c.description}
            for c in INDEX_COLUMNS
        ],
    }


def members_description() -> dict[str, Any]:
    """The member table as JSON (the tar layout of one sample)."""
    return {
        "title": "synth WebDataset sample members (tar entries <key>.<member>)",
        "schema_version": SCHEMA_VERSION,
        "tar_mtime": TAR_MTIME,
        "members": [
            {
                "filename": m.filename,
                "encoding": m.encoding.value,
                "dtype": m.dtype,
                "stored_dtype": m.stored_dtype or m.dtype,
                "shape": list(m.shape),
                "unit": m.unit,
                "range": [m.low, m.high],
                "required": m.required,
                "description": m.description,
            }
            for m in MEMBERS
        ],
        "latents": {name: [LATENT_DIMS[name]] for name in LATENT_NAMES},
    }


def schema_files() -> dict[str, str]:
    """The generated files of `schemas/`: relative path -> text."""
    docs = {
        "meta.schema.json": meta_json_schema(),
        "manifest.schema.json": manifest_json_schema(),
        "index.schema.json": index_schema_description(),
        "members.json": members_description(),
    }
    return {f"v{SCHEMA_VERSION}/{name}": json.dumps(doc, indent=2) + "\n" for name, doc in docs.items()}


def write_schema_files(root: str | Path) -> list[Path]:
    """(Re)generate the schema files under `root` (the repository's `schemas/`)."""
    written = []
    for rel, text in schema_files().items():
        path = Path(root) / rel
        atomic_write_text(path, text)
        written.append(path)
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "schemas")
    for p in write_schema_files(target):
        log.info("wrote %s", p)
