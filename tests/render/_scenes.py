"""Analytic meshes, cameras and lights for the render tests."""

import numpy as np
import torch

from synth.render.camera import Cameras, Lights, intrinsic_matrix


def head_center(verts: np.ndarray) -> np.ndarray:
    """(3,) bounding-box centre of a mesh."""
    return 0.5 * (verts.min(0) + verts.max(0)).astype(np.float64)


def camera(size: int, fov_deg: float = 40.0, r=None, t=None, batch: int = 1) -> Cameras:
    """Identical cameras: centred K, world-to-camera R (default identity), t (default 0)."""
    k = intrinsic_matrix(size, fov_deg)
    r = np.eye(3) if r is None else np.asarray(r, dtype=np.float64)
    t = np.zeros(3) if t is None else np.asarray(t, dtype=np.float64)
    return Cameras(
        K=torch.from_numpy(np.repeat(k[None], batch, 0)),
        R=torch.from_numpy(np.repeat(r[None], batch, 0)),
        t=torch.from_numpy(np.repeat(t[None], batch, 0)),
        width=size,
        height=size,
    )


def headlight(batch: int = 1, ambient: float = 0.0) -> Lights:
    """A light at the camera (direction -z in the camera frame)."""
    return Lights(
        direction=torch.tensor([[0.0, 0.0, -1.0]] * batch, dtype=torch.float64),
        ambient=torch.full((batch,), ambient, dtype=torch.float64),
    )


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices (N, 3) float64 on the sphere, faces (F, 3) int64, CCW seen from outside."""
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def cube() -> tuple[np.ndarray, np.ndarray]:
    """Unit cube [-0.5, 0.5]^3, 4 vertices per side (24 in all), so vertex normals equal the face normal."""
    verts, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u, v = [a for a in range(3) if a != axis]
            quad = []
            for a, b in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
                p = np.zeros(3)
                p[axis], p[u], p[v] = 0.5 * sign, a, b
                quad.append(p)
            base = len(verts)
            verts.extend(quad)
            tri = [[0, 1, 2], [0, 2, 3]]
            # wind counter-clockwise seen from outside: flip when (u x v) points inwards
            normal = np.cross(quad[1] - quad[0], quad[2] - quad[0])
            if np.dot(normal, np.eye(3)[axis] * sign) < 0:
                tri = [[0, 2, 1], [0, 3, 2]]
            faces.extend([[base + i for i in t] for t in tri])
    return np.array(verts), np.array(faces, dtype=np.int64)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of an OpenCV camera at `eye` looking at `target` (image up ~ `up`)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, (1.0, 0.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    return r, -r @ eye
