"""The bring-your-own tensor file: a `FaceTensor` as a plain `.npz` (no pickles).

Fields (documented for users in docs/bring-your-own-model.md):

| field            | dtype          | shape              | required | meaning |
|------------------|----------------|--------------------|----------|----------|
| vertices         | float32/64     | (n_id, n_ex, N, 3) | yes      | metres, one common aligned frame |
| faces            | any integer    | (F, 3)             | yes      | triangles, 0-based vertex indices |
| expression_names | unicode        | (n_ex,)            | yes      | index 0 must be "neutral" |
| au_names         | unicode        | (A,)               | yes      | AU label names |
| expression_aus   | float32/64     | (n_ex, A)          | yes      | nominal AU intensities in [0, 1] |
| identity_ids     | unicode        | (n_id,)            | no       | default "id-0000", "id-0001", ... |
| source_json      | unicode scalar | ()                 | no       | JSON object with provenance |
| format           | unicode scalar | ()                 | no       | "synth.face_tensor" (written by synth) |
| format_version   | integer scalar | ()                 | no       | 1 |

Strings are numpy unicode arrays (`np.array(names, dtype=str)`), never object arrays, so the file loads
with `allow_pickle=False`.
"""

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from synth.atomic import atomic_open
from synth.errors import SynthError
from synth.facemodel.tensor import FaceTensor

FORMAT = "synth.face_tensor"
FORMAT_VERSION = 1
REQUIRED = ("vertices", "faces", "expression_names", "au_names", "expression_aus")
OPTIONAL = ("identity_ids", "source_json", "format", "format_version")


def save_tensor_npz(path: str | os.PathLike, tensor: FaceTensor) -> Path:
    """Write `tensor` to `path` (.npz, uncompressed, atomic). Returns the path."""
    path = Path(path)
    arrays = {
        "vertices": np.ascontiguousarray(tensor.vertices, dtype=np.float32),
        "faces": np.ascontiguousarray(tensor.faces, dtype=np.int64),
        "expression_names": np.array(tensor.expression_names, dtype=str),
        "au_names": np.array(tensor.au_names, dtype=str),
        "expression_aus": np.ascontiguousarray(tensor.expression_aus, dtype=np.float32),
        "identity_ids": np.array(tensor.identity_ids, dtype=str),
        "source_json": np.array(json.dumps(tensor.source, sort_keys=True)),
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
    }
    with atomic_open(path) as f:
        np.savez(f, **arrays)
    return path


def _strings(path: Path, name: str, value: np.ndarray, ndim: int = 1) -> np.ndarray:
    if value.dtype.kind != "U" or value.ndim != ndim:
        shape = "a scalar" if ndim == 0 else "a 1-D array"
        raise SynthError(
            f"{path}: field {name!r} must be {shape} of unicode strings (np.array([...], dtype=str)), "
            f"got dtype {value.dtype} shape {value.shape}"
        )
    return value


def load_tensor_npz(path: str | os.PathLike) -> FaceTensor:
    """Read a tensor file written by `save_tensor_npz` or by hand (see the module doc for the fields).

    Raises SynthError naming the file and the missing or mismatched field.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthError(f"{path}: tensor file not found; give the path of an existing .npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as e:  # object arrays need pickles: refused
        raise SynthError(f"{path}: cannot read without pickles ({e}); store strings with dtype=str") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise SynthError(f"{path}: not a readable .npz file ({e})") from None

    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise SynthError(f"{path}: missing field(s) {missing}; required: {list(REQUIRED)}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise SynthError(f"{path}: unknown field(s) {unknown}; allowed: {list(REQUIRED + OPTIONAL)}")
    if "format" in data and str(_strings(path, "format", data["format"], 0)) != FORMAT:
        raise SynthError(f"{path}: field 'format' is {str(data['format'])!r}, expected {FORMAT!r}")
    if "format_version" in data and int(data["format_version"]) != FORMAT_VERSION:
        raise SynthError(
            f"{path}: field 'format_version' is {int(data['format_version'])}; this synth reads "
            f"{FORMAT_VERSION}"
        )

    vertices, faces, aus = data["vertices"], data["faces"], data["expression_aus"]
    if vertices.dtype.kind != "f" or vertices.ndim != 4 or vertices.shape[-1] != 3:
        raise SynthError(
            f"{path}: field 'vertices' must be float (n_id, n_ex, N, 3), "
            f"got {vertices.dtype} {vertices.shape}"
        )
    if faces.dtype.kind not in "iu" or faces.ndim != 2 or faces.shape[1] != 3:
        raise SynthError(f"{path}: field 'faces' must be integer (F, 3), got {faces.dtype} {faces.shape}")
    if aus.dtype.kind != "f":
        raise SynthError(f"{path}: field 'expression_aus' must be float, got {aus.dtype}")
    expression_names = _strings(path, "expression_names", data["expression_names"]).tolist()
    au_names = _strings(path, "au_names", data["au_names"]).tolist()
    n_id, n_ex = vertices.shape[:2]
    if "identity_ids" in data:
        identity_ids = _strings(path, "identity_ids", data["identity_ids"]).tolist()
    else:
        identity_ids = [f"id-{i:04d}" for i in range(n_id)]
    source: dict = {}
    if "source_json" in data:
        try:
            source = json.loads(str(_strings(path, "source_json", data["source_json"], 0)))
        except json.JSONDecodeError as e:
            raise SynthError(f"{path}: field 'source_json' is not valid JSON ({e})") from None
        if not isinstance(source, dict):
            raise SynthError(f"{path}: field 'source_json' must hold a JSON object")

    if len(expression_names) != n_ex:
        raise SynthError(
            f"{path}: field 'expression_names' has {len(expression_names)} names for the {n_ex} expressions "
            "of 'vertices' (axis 1)"
        )
    if not expression_names or expression_names[0] != "neutral":
        raise SynthError(
            f"{path}: field 'expression_names' must start with 'neutral', got {expression_names[:1]}"
        )
    if aus.shape != (n_ex, len(au_names)):
        raise SynthError(
            f"{path}: field 'expression_aus' must be (n_ex, A) = ({n_ex}, {len(au_names)}), got {aus.shape}"
        )
    if aus.size and (np.nanmin(aus) < 0 or np.nanmax(aus) > 1):
        raise SynthError(f"{path}: field 'expression_aus' must lie in [0, 1]")
    if len(identity_ids) != n_id:
        raise SynthError(
            f"{path}: field 'identity_ids' has {len(identity_ids)} ids for the {n_id} identities "
            "of 'vertices'"
        )
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[2]):
        raise SynthError(f"{path}: field 'faces' indexes outside [0, {vertices.shape[2]}) (0-based indices?)")
    if not np.isfinite(vertices).all():
        raise SynthError(f"{path}: field 'vertices' contains NaN or inf")
    for name, values in (
        ("expression_names", expression_names),
        ("au_names", au_names),
        ("identity_ids", identity_ids),
    ):
        if len(set(values)) != len(values):
            dup = sorted({v for v in values if values.count(v) > 1})
            raise SynthError(f"{path}: field {name!r} has duplicates {dup[:5]}")

    return FaceTensor(
        vertices=vertices.astype(np.float32, copy=False),
        faces=faces.astype(np.int64, copy=False),
        expression_names=expression_names,
        au_names=au_names,
        expression_aus=aus.astype(np.float32, copy=False),
        identity_ids=identity_ids,
        source=source,
    )
