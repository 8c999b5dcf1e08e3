"""Configuration of the render stage: image, camera pose ranges, light ranges, edge thresholds, backend.

Ranges are closed intervals `(low, high)` sampled uniformly per sample; `low == high` fixes the value.
Angles are in degrees, lengths in metres. Validation happens once, in `__post_init__`, and names the key.
"""

import math
import re
from dataclasses import dataclass
from enum import Enum


class RasterBackend(Enum):
    """Which rasterizer makes the fragments (see `synth.render.raster`).

    auto: PyTorch3D on CUDA when it is importable, else Warp (the measured fastest here, docs/rendering.md).
    warp: an NVIDIA Warp kernel, same code on CPU and CUDA (the default by measurement).
    torch: pure PyTorch reference (slow; for cross-checks).
    pytorch3d: `pytorch3d.renderer.mesh.rasterize_meshes` (needs the optional `pytorch3d` package).
    """

    auto = "auto"
    warp = "warp"
    torch = "torch"
    pytorch3d = "pytorch3d"


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _pair(name: str, value: object) -> tuple[float, float]:
    """A validated `(low, high)` range; Hydra hands tuples over as lists."""
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"render.{name}={value!r} must be a pair [low, high] of numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"render.{name}={value!r} must be a finite range with low <= high")
    return low, high


@dataclass
class RenderConfig:
    """Render settings.

    image_size: square image side in pixels.
    fov_deg: full field of view of the pinhole camera (both axes, the image is square).
    yaw_deg: camera orbit about the world z (up) axis through the face centre; 0 = frontal (camera on -y).
    pitch_deg: camera elevation; positive = camera above the face, looking down.
    roll_deg: camera rotation about its optical axis; positive = image content turns clockwise.
    distance_m: distance from the camera centre to the face centre, metres.
    translation_jitter_m: uniform shift of the face in the camera x / y plane within +-this, metres.
    light_azimuth_deg / light_elevation_deg: directional light relative to the camera; (0, 0) = a light at
        the camera; positive azimuth = light from the image right, positive elevation = from above.
    ambient: ambient term of the Lambert shading, in [0, 1]; diffuse weight is 1 - ambient.
    canny_low / canny_high: hysteresis thresholds of `cv2.Canny` on the shaded 8-bit image.
    landmark_depth_tol_m: a landmark is visible when it lies at most this far behind the z-buffer.
    backend: rasterizer (`RasterBackend`).
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    """

    image_size: int = 512
    fov_deg: float = 30.0
    yaw_deg: tuple[float, float] = (-30.0, 30.0)
    pitch_deg: tuple[float, float] = (-15.0, 15.0)
    roll_deg: tuple[float, float] = (-10.0, 10.0)
    distance_m: tuple[float, float] = (0.34, 0.44)
    translation_jitter_m: float = 0.01
    light_azimuth_deg: tuple[float, float] = (-45.0, 45.0)
    light_elevation_deg: tuple[float, float] = (0.0, 45.0)
    ambient: tuple[float, float] = (0.2, 0.4)
    canny_low: int = 50
    canny_high: int = 150
    landmark_depth_tol_m: float = 0.004
    backend: RasterBackend = RasterBackend.auto
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"render.image_size={self.image_size} must be in [16, 4096] pixels")
        if not 1.0 <= self.fov_deg <= 150.0:
            raise ValueError(f"render.fov_deg={self.fov_deg} must be in [1, 150] degrees")
        self.yaw_deg = _pair("yaw_deg", self.yaw_deg)
        self.pitch_deg = _pair("pitch_deg", self.pitch_deg)
        self.roll_deg = _pair("roll_deg", self.roll_deg)
        self.distance_m = _pair("distance_m", self.distance_m)
        self.light_azimuth_deg = _pair("light_azimuth_deg", self.light_azimuth_deg)
        self.light_elevation_deg = _pair("light_elevation_deg", self.light_elevation_deg)
        self.ambient = _pair("ambient", self.ambient)
        for name, limit in (("yaw_deg", 180.0), ("roll_deg", 180.0), ("light_azimuth_deg", 180.0)):
            low, high = getattr(self, name)
            if low < -limit or high > limit:
                raise ValueError(
                    f"render.{name}={[low, high]} must lie within [-{limit:g}, {limit:g}] degrees"
                )
        for name in ("pitch_deg", "light_elevation_deg"):
            low, high = getattr(self, name)
            if low < -89.0 or high > 89.0:
                raise ValueError(f"render.{name}={[low, high]} must lie within [-89, 89] degrees")
        if self.distance_m[0] <= 0.05 or self.distance_m[1] > 100.0:
            raise ValueError(f"render.distance_m={list(self.distance_m)} must lie within (0.05, 100] metres")
        if not 0.0 <= self.translation_jitter_m <= 1.0:
            raise ValueError(f"render.translation_jitter_m={self.translation_jitter_m} must be in [0, 1] m")
        if self.ambient[0] < 0.0 or self.ambient[1] > 1.0:
            raise ValueError(f"render.ambient={list(self.ambient)} must lie within [0, 1]")
        if not 0 <= self.canny_low <= self.canny_high <= 1000:
            raise ValueError(
                f"render.canny_low={self.canny_low}, render.canny_high={self.canny_high} "
                "must satisfy 0 <= low <= high <= 1000"
            )
        if not 0.0 < self.landmark_depth_tol_m <= 0.1:
            raise ValueError(f"render.landmark_depth_tol_m={self.landmark_depth_tol_m} must be in (0, 0.1] m")
        if not isinstance(self.backend, RasterBackend):
            try:
                self.backend = RasterBackend(self.backend)
            except ValueError:
                allowed = ", ".join(b.value for b in RasterBackend)
                raise ValueError(f"render.backend={self.backend!r} must be one of {allowed}") from None
        if not _DEVICE.match(self.device):
            raise ValueError(f"render.device={self.device!r} must be auto, cpu, cuda or cuda:N")
