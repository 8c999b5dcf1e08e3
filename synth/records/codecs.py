"""Bytes <-> arrays for every member encoding of `synth.records.schema`.

The depth and normal quantisations are the renderer's (`synth.render.maps`, one place for each
convention); they are imported when first used, so that `synth validate` without depth/normal members and
the schema tools do not import torch and Warp.

PNG and JPEG go through OpenCV (libpng / libjpeg-turbo): it is the fastest encoder and decoder installed
here, and its output is a plain PNG / JPEG that PIL, imageio or any browser reads the same way. OpenCV
orders colour channels BGR, so the RGB members are flipped on the way in and out.
"""

import io
import json
import zipfile
from typing import Any

import cv2
import numpy as np

from synth.records.schema import DEPTH_MAX_M, LATENT_NAMES, Encoding

# Decoders run inside DataLoader workers: one OpenCV thread each, the workers give the parallelism.
cv2.setNumThreads(1)


class DecodeError(ValueError):
    """A member's bytes are not a valid file of its encoding."""


def encode_npy(array: np.ndarray) -> bytes:
    """`.npy` bytes of a numeric array (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise DecodeError(f"not a valid .npy file: {err}") from None


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Uncompressed `.npz` bytes of named arrays: sorted names, fixed 1980-01-01 timestamps.

    Written member by member instead of with `np.savez`, which stamps the current time into the zip.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, encode_npy(arrays[name]))
    return buf.getvalue()


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, EOFError, OSError, KeyError) as err:
        raise DecodeError(f"not a valid .npz file: {err}") from None


def encode_latents(latents: dict[str, np.ndarray]) -> bytes:
    """`latents.npz` from {z_id, z_ex, w_id, w_ex} 1-D float32 arrays."""
    if set(latents) != set(LATENT_NAMES):
        raise ValueError(f"latents must have exactly {LATENT_NAMES}, got {sorted(latents)}")
    return encode_npz({k: np.asarray(latents[k], dtype=np.float32) for k in LATENT_NAMES})


def encode_depth(depth: np.ndarray, compression: int = 1) -> tuple[bytes, bool]:
    """depth (H, W) float metres, 0 = background -> (16-bit PNG bytes of millimetres, clipped flag).

    The quantisation is the renderer's (`synth.render.maps.depth_to_png16_mm`: nearest millimetre,
    foreground at least 1 mm, at most 65535); `clipped` says whether a depth beyond 65.535 m was clipped.
    """
    from synth.render.maps import depth_to_png16_mm

    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if not np.isfinite(depth).all() or (depth < 0).any():
        raise ValueError("depth must be finite and >= 0 (0 = background)")
    return _png(depth_to_png16_mm(depth), compression), bool((depth > DEPTH_MAX_M).any())


def decode_depth(data: bytes) -> np.ndarray:
    """16-bit millimetre PNG -> depth (H, W) float32 metres (0 = background)."""
    from synth.render.maps import png16_mm_to_depth

    return png16_mm_to_depth(_unpng(data, np.uint16, 2))


def encode_normal(normal: np.ndarray, compression: int = 1) -> bytes:
    """normal (H, W, 3) float camera-space unit vectors, 0 = background -> 8-bit RGB PNG bytes.

    The quantisation is the renderer's (`synth.render.maps.normals_to_png8`: round((n + 1) * 127.5) per
    channel, background (0, 0, 0)).
    """
    from synth.render.maps import normals_to_png8

    normal = np.asarray(normal, dtype=np.float32)
    if normal.ndim != 3 or normal.shape[2] != 3:
        raise ValueError(f"normal must be (H, W, 3), got shape {normal.shape}")
    if not np.isfinite(normal).all():
        raise ValueError("normal must be finite")
    return _png(cv2.cvtColor(normals_to_png8(normal), cv2.COLOR_RGB2BGR), compression)


def decode_normal(data: bytes) -> np.ndarray:
    """8-bit RGB normal PNG -> (H, W, 3) float32 unit vectors (renormalised), background = 0."""
    from synth.render.maps import png8_to_normals

    return png8_to_normals(cv2.cvtColor(_unpng(data, np.uint8, 3), cv2.COLOR_BGR2RGB))


def mask_to_png1(mask: np.ndarray, compression: int = 1) -> bytes:
    """mask (H, W) bool -> 1-bit PNG bytes."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be (H, W) bool, got {mask.dtype} {mask.shape}")
    return _png(mask.astype(np.uint8) * np.uint8(255), compression, bilevel=True)


def png1_to_mask(data: bytes) -> np.ndarray:
    return _unpng(data, np.uint8, 2) > 127


def gray_to_png8(image: np.ndarray, compression: int = 1) -> bytes:
    """(H, W) uint8 -> 8-bit grayscale PNG bytes."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8, got {image.dtype} {image.shape}")
    return _png(image, compression)


def png8_to_gray(data: bytes) -> np.ndarray:
    return _unpng(data, np.uint8, 2)


def rgb_to_jpeg(image: np.ndarray, quality: int) -> bytes:
    """(S, S, 3) uint8 RGB -> baseline JPEG bytes (4:2:0, libjpeg-turbo: deterministic)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def jpeg_to_rgb(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3:
        raise DecodeError("not a valid JPEG file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_json(obj: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no NaN, UTF-8."""
    return json.dumps(obj, sort_keys=True, allow_nan=False, ensure_ascii=False).encode("utf-8")


def decode_json(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DecodeError(f"not valid UTF-8 JSON: {err}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


DECODERS = {
    Encoding.NPY: decode_npy,
    Encoding.NPZ: decode_npz,
    Encoding.PNG16: decode_depth,
    Encoding.PNG_RGB8: decode_normal,
    Encoding.PNG8: png8_to_gray,
    Encoding.PNG1: png1_to_mask,
    Encoding.JPEG: jpeg_to_rgb,
    Encoding.JSON: decode_json,
}


def _png(image: np.ndarray, compression: int, bilevel: bool = False) -> bytes:
    # The SUB row filter instead of libpng's adaptive choice: measured 1.3-2x faster encoding of our maps
    # at about the same size and decode speed (docs/performance.md, records).
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    if bilevel:
        params += [cv2.IMWRITE_PNG_BILEVEL, 1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _unpng(data: bytes, dtype: type, ndim: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DecodeError("not a valid PNG file")
    if image.dtype != dtype or image.ndim != ndim:
        expected = f"{np.dtype(dtype)} with {ndim} dims"
        raise DecodeError(f"PNG holds {image.dtype} with {image.ndim} dims, expected {expected}")
    return image
