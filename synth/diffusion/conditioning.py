"""ControlNet conditioning images from the render stage's maps.

Depth follows the convention the SD 1.5 depth ControlNet was trained on (MiDaS relative inverse depth):
near is bright, normalised per image, background black. Over the foreground we take inverse depth 1/z,
min-max normalise it to [FOREGROUND_MIN, 1] (nearest point = 1) and leave background at 0; the floor keeps
the face's farthest rim distinguishable from the background, so the silhouette survives. Canny is the
render stage's uint8 0/255 edge map, replicated to three channels.
"""

import cv2
import numpy as np

FOREGROUND_MIN = 0.1
"""Brightness of the farthest foreground point in the depth conditioning image."""


def depth_condition(depth: np.ndarray, foreground_min: float = FOREGROUND_MIN) -> np.ndarray:
    """depth: (B, H, W) float32 metres, 0 = background -> (B, H, W) float32 in [0, 1], near bright.

    An image without foreground is all zeros; a foreground at one depth is all ones.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 3:
        raise ValueError(f"depth must be (B, H, W), got shape {depth.shape}")
    fg = depth > 0
    inv = np.where(fg, 1.0 / np.where(fg, depth, 1.0), 0.0).astype(np.float32)  # (B, H, W) 1/m
    big = np.float32(np.finfo(np.float32).max)
    lo = np.where(fg, inv, big).min(axis=(1, 2), keepdims=True)  # (B, 1, 1) farthest foreground
    hi = np.where(fg, inv, 0.0).max(axis=(1, 2), keepdims=True)  # (B, 1, 1) nearest foreground
    span = hi - lo
    unit = np.where(span > 0, (inv - lo) / np.where(span > 0, span, 1.0), 1.0)  # (B, H, W) in [0, 1]
    out = foreground_min + (1.0 - foreground_min) * unit
    return np.where(fg, out, 0.0).astype(np.float32)


def canny_condition(canny: np.ndarray) -> np.ndarray:
    """canny: (B, H, W) uint8 0/255 -> (B, H, W) float32 in [0, 1]."""
    canny = np.asarray(canny)
    if canny.ndim != 3 or canny.dtype != np.uint8:
        raise ValueError(f"canny must be (B, H, W) uint8, got shape {canny.shape} dtype {canny.dtype}")
    return canny.astype(np.float32) / 255.0


def to_control_images(maps: np.ndarray, size: int) -> np.ndarray:
    """maps: (B, H, W) float32 in [0, 1] -> (B, 3, size, size) float32, the ControlNet image layout.

    Resizing (only when H or W differs from `size`) uses area averaging when shrinking and bilinear
    interpolation when enlarging, so thin Canny edges fade rather than vanish.
    """
    b, h, w = maps.shape
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        resized = [cv2.resize(m, (size, size), interpolation=interp) for m in maps]
        maps = np.stack(resized) if b else np.zeros((0, size, size), np.float32)
    return np.ascontiguousarray(np.repeat(maps[:, None], 3, axis=1), dtype=np.float32)
