"""Pinhole cameras and directional lights, batched, in the dataset's OpenCV convention.

Convention (DESIGN section 6, what `meta.json` stores): a world point X maps to camera coordinates
`X_cam = R @ X + t` (world-to-camera), with camera axes x right, y down, z forward (OpenCV). Pixel
coordinates are `u = K[0,0] * x / z + K[0,2]`, `v = K[1,1] * y / z + K[1,2]` with the centre of pixel
(column i, row j) at (i + 0.5, j + 0.5); so a centred camera has `K[0,2] = width / 2`.

World frame (the Anny head topology and every `synth` mesh): metres, z up, the face looks towards -y.
A frontal camera therefore sits on the -y side of the face and looks along +y.

Sampling is per sample: each sample gets its own `np.random.Generator` (from
`synth.seeding.numpy_rng(run_seed, index, Stage.CAMERA)` / `Stage.LIGHT`), so a sample's camera and light do
not depend on the batch it is rendered in.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from synth.render.config import RenderConfig

# Frontal world-to-camera rotation: camera x = world +x, camera y (down) = world -z, camera z = world +y.
_R_FRONTAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras.

    K: (B, 3, 3) float64 pixel intrinsics; R: (B, 3, 3) float64 world-to-camera rotations; t: (B, 3) float64
    translations in metres; width, height: image size in pixels (shared by the batch).
    """

    K: Tensor
    R: Tensor
    t: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        b = self.K.shape[0]
        if self.K.shape != (b, 3, 3) or self.R.shape != (b, 3, 3) or self.t.shape != (b, 3):
            raise ValueError(
                f"Cameras expects K (B,3,3), R (B,3,3), t (B,3); got {tuple(self.K.shape)}, "
                f"{tuple(self.R.shape)}, {tuple(self.t.shape)}"
            )

    def __len__(self) -> int:
        return self.K.shape[0]

    def to(self, device: torch.device | str) -> "Cameras":
        """The same cameras with their tensors on `device`."""
        return Cameras(self.K.to(device), self.R.to(device), self.t.to(device), self.width, self.height)

    def intrinsics(self) -> Tensor:
        """(B, 4) float32 `(fx, fy, cx, cy)` in pixels (zero skew, the only kind `synth` makes)."""
        k = self.K
        return torch.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], dim=-1).float()

    def world_to_camera(self, points: Tensor) -> Tensor:
        """points: (B, P, 3) world metres -> (B, P, 3) camera coordinates (same dtype as `points`)."""
        r = self.R.to(points.device, torch.float64)
        t = self.t.to(points.device, torch.float64)
        cam = torch.einsum("bij,bpj->bpi", r, points.double()) + t[:, None, :]  # (B, P, 3)
        return cam.to(points.dtype)

    def project(self, points: Tensor) -> Tensor:
        """points: (B, P, 3) world metres -> (B, P, 3) `(u, v, z)`: pixel coordinates and camera depth (m)."""
        cam = self.world_to_camera(points.double())  # (B, P, 3)
        k = self.K.to(points.device, torch.float64)
        z = cam[..., 2]
        u = k[:, None, 0, 0] * cam[..., 0] / z + k[:, None, 0, 2]
        v = k[:, None, 1, 1] * cam[..., 1] / z + k[:, None, 1, 2]
        return torch.stack([u, v, z], dim=-1).to(points.dtype)

    def to_meta(self, i: int) -> dict:
        """Camera `i` in the `meta.json` convention: K, R (nested lists), t (list), width, height."""
        return {
            "K": self.K[i].double().cpu().tolist(),
            "R": self.R[i].double().cpu().tolist(),
            "t": self.t[i].double().cpu().tolist(),
            "width": int(self.width),
            "height": int(self.height),
            "convention": "opencv",
        }


@dataclass(frozen=True)
class Lights:
    """A batch of directional lights in camera coordinates.

    direction: (B, 3) float64 unit vectors from the surface towards the light, camera frame (OpenCV axes);
    ambient: (B,) float64 ambient term in [0, 1] (diffuse weight 1 - ambient).
    """

    direction: Tensor
    ambient: Tensor

    def as_array(self) -> np.ndarray:
        """(B, 4) float32 `(dx, dy, dz, ambient)`: the per-sample light stored with each record."""
        return torch.cat([self.direction, self.ambient[:, None]], dim=1).float().cpu().numpy()

    @staticmethod
    def from_array(light: np.ndarray) -> "Lights":
        """The inverse of `as_array`: light (B, 4) -> Lights."""
        light = np.asarray(light, dtype=np.float64)
        return Lights(torch.from_numpy(light[:, :3].copy()), torch.from_numpy(light[:, 3].copy()))


def intrinsic_matrix(image_size: int, fov_deg: float) -> np.ndarray:
    """(3, 3) float64 K of a centred square pinhole camera with full field of view `fov_deg`."""
    f = 0.5 * image_size / math.tan(math.radians(fov_deg) / 2.0)
    c = 0.5 * image_size  # pixel centres at +0.5, so the optical axis crosses the image centre exactly
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def orbit_pose(
    yaw_deg: float, pitch_deg: float, roll_deg: float, distance_m: float, shift_m: Sequence[float], center
) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera `(R (3,3), t (3,))` of a camera orbiting `center` (3,) and looking at it.

    yaw: about world z through the centre (positive moves the camera towards world +x, the subject's left);
    pitch: positive = camera above, looking down; roll: positive = image content turns clockwise;
    shift_m: (dx, dy) shift of the scene in the camera x / y plane (metres, the "translation jitter").
    """
    # Rotations compose in the camera frame on the right (pitch, then roll about the optical axis) and in
    # the world frame on the left (yaw about world up), so the three angles act independently.
    r_c2w = _rot_z(math.radians(yaw_deg)) @ _R_FRONTAL.T @ _rot_x(-math.radians(pitch_deg))
    r_c2w = r_c2w @ _rot_z(-math.radians(roll_deg))
    centre = np.asarray(center, dtype=np.float64) + r_c2w @ np.array([0.0, 0.0, -distance_m])
    r = r_c2w.T
    t = -r @ centre + np.array([shift_m[0], shift_m[1], 0.0])
    return r, t


def sample_cameras(cfg: RenderConfig, rngs: Sequence[np.random.Generator], face_center) -> Cameras:
    """One camera per generator, orbiting the face.

    rngs: B generators, one per sample (`numpy_rng(run_seed, index, Stage.CAMERA)`); face_center: (3,) or
    (B, 3) world point the cameras look at (metres). Draw order per sample: yaw, pitch, roll, distance,
    shift x, shift y (fixed: datasets depend on it).
    """
    centers = np.broadcast_to(np.asarray(face_center, dtype=np.float64), (len(rngs), 3))
    k = intrinsic_matrix(cfg.image_size, cfg.fov_deg)
    rs, ts = [], []
    for rng, center in zip(rngs, centers, strict=True):
        yaw = rng.uniform(*cfg.yaw_deg)
        pitch = rng.uniform(*cfg.pitch_deg)
        roll = rng.uniform(*cfg.roll_deg)
        dist = rng.uniform(*cfg.distance_m)
        shift = rng.uniform(-cfg.translation_jitter_m, cfg.translation_jitter_m, size=2)
        r, t = orbit_pose(yaw, pitch, roll, dist, shift, center)
        rs.append(r)
        ts.append(t)
    b = len(rngs)
    return Cameras(
        K=torch.from_numpy(np.repeat(k[None], b, axis=0)),
        R=torch.from_numpy(np.stack(rs)) if b else torch.zeros(0, 3, 3, dtype=torch.float64),
        t=torch.from_numpy(np.stack(ts)) if b else torch.zeros(0, 3, dtype=torch.float64),
        width=cfg.image_size,
        height=cfg.image_size,
    )


def light_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(3,) unit vector towards a light at (azimuth, elevation) relative to the camera, camera frame.

    (0, 0) points at the camera (-z); positive azimuth towards image right (+x); positive elevation up (-y).
    """
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.sin(az) * math.cos(el), -math.sin(el), -math.cos(az) * math.cos(el)])


def sample_lights(cfg: RenderConfig, rngs: Sequence[np.random.Generator]) -> Lights:
    """One directional light per generator (`numpy_rng(run_seed, index, Stage.LIGHT)`).

    Draw order per sample: azimuth, elevation, ambient (fixed: datasets depend on it).
    """
    dirs, amb = [], []
    for rng in rngs:
        az = rng.uniform(*cfg.light_azimuth_deg)
        el = rng.uniform(*cfg.light_elevation_deg)
        amb.append(rng.uniform(*cfg.ambient))
        dirs.append(light_direction(az, el))
    return Lights(
        direction=torch.from_numpy(np.array(dirs, dtype=np.float64).reshape(len(rngs), 3)),
        ambient=torch.tensor(amb, dtype=torch.float64),
    )
