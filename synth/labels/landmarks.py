"""The 23 anatomical landmarks of BabyFlow (Appendix A) as barycentric points of a mesh topology.

A landmark is a weighted sum of vertices (for the Anny head: one vertex each), so it follows any mesh of
the topology (identity, expression, pose), moves rigidly with rigid motion, and does not depend on how
the topology's quads are split into triangles.
The Anny head definition ships in `synth/labels/data/landmarks_anny_head.json`; it is derived from
the Anny template by `derive_anny_head_landmarks` (`python -m synth.labels.landmarks` rewrites it),
with one note per landmark saying how it was located.

Frame of the Anny head: metres, z up, the face looks towards -y, the subject's left is +x.
"""

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from synth.atomic import atomic_write_text
from synth.errors import SynthError
from synth.facemodel.topology import connectivity_hash

if TYPE_CHECKING:
    from synth.facemodel.model import FaceModel

log = logging.getLogger(__name__)

LANDMARK_NAMES: tuple[str, ...] = (
    "exR", "enR", "n", "enL", "exL",
    "aR", "acR", "prn", "aL", "acL", "sn",
    "chR", "cphR", "ls", "chL", "cphL", "li", "sl", "pg",
    "tR", "oiR", "tL", "oiL",
)  # fmt: skip
# BabyFlow Appendix A: "For facial expression recognition, we focus on the 19 central landmarks,
# excluding those located in the ears" (tR, oiR, tL, oiL).
EAR_LANDMARKS: tuple[str, ...] = ("tR", "oiR", "tL", "oiL")
CENTRAL_LANDMARKS: tuple[str, ...] = tuple(n for n in LANDMARK_NAMES if n not in EAR_LANDMARKS)
CENTRAL_INDICES: tuple[int, ...] = tuple(LANDMARK_NAMES.index(n) for n in CENTRAL_LANDMARKS)

ANNY_HEAD_FILE = "landmarks_anny_head.json"
# 2: landmarks as weighted vertices, tied to a triangulation-independent connectivity hash (1 keyed them
# to triangle ids and a hash of the exact triangles, which differ between CPUs for Anny's head).
FORMAT_VERSION = 2


@dataclass(frozen=True)
class LandmarkDefinition:
    """Landmarks as weighted sums of vertices of one topology (any triangulation of it).

    names: L landmark names (LANDMARK_NAMES order for the BabyFlow set).
    vertex_ids: (L, K) int64 vertices of each landmark (K = 1 when every landmark is a vertex).
    weights: (L, K) float64 convex weights over those vertices (rows sum to 1, >= 0).
    notes: L one-line notes on how each landmark was located.
    topology: name of the topology; n_vertices: its vertex count; connectivity: its
        `synth.facemodel.topology.connectivity_hash` (the same for every split of its quads).
    """

    names: tuple[str, ...]
    vertex_ids: np.ndarray
    weights: np.ndarray
    notes: tuple[str, ...]
    topology: str
    n_vertices: int
    connectivity: str

    def __post_init__(self) -> None:
        n = len(self.names)
        if (
            self.vertex_ids.ndim != 2
            or self.vertex_ids.shape[0] != n
            or self.weights.shape != self.vertex_ids.shape
            or len(self.notes) != n
        ):
            raise ValueError(
                f"landmark definition: {n} names need vertex_ids (L, K), weights (L, K) and L notes, got "
                f"{self.vertex_ids.shape}, {self.weights.shape}, {len(self.notes)}"
            )
        if (self.weights < -1e-9).any() or not np.allclose(self.weights.sum(1), 1.0, atol=1e-6):
            raise ValueError("landmark definition: vertex weights must be >= 0 and sum to 1")
        if self.vertex_ids.size and not 0 <= self.vertex_ids.min() <= self.vertex_ids.max() < self.n_vertices:
            raise ValueError(f"landmark definition: vertex ids outside [0, {self.n_vertices})")

    def index(self, name: str) -> int:
        return self.names.index(name)

    @property
    def main_vertices(self) -> np.ndarray:
        """(L,) int64 the vertex of largest weight of each landmark."""
        return self.vertex_ids[np.arange(len(self.names)), self.weights.argmax(1)]

    def matches(self, faces: np.ndarray, n_vertices: int) -> bool:
        """Whether a mesh of `n_vertices` with triangles `faces` (F, 3) is this definition's topology."""
        return n_vertices == self.n_vertices and connectivity_hash(faces, n_vertices) == self.connectivity

    def check_topology(self, faces: np.ndarray, n_vertices: int) -> None:
        """Raise ValueError when a mesh (`n_vertices`, triangles (F, 3)) is not this definition's topology."""
        if not self.matches(faces, n_vertices):
            raise ValueError(
                f"landmark definition is for topology {self.topology!r} ({self.n_vertices} vertices, "
                f"connectivity {self.connectivity}), the mesh has {n_vertices} vertices and connectivity "
                f"{connectivity_hash(faces, n_vertices)}; derive landmarks for it (e.g. transfer them with "
                "synth.sources.correspondence)"
            )

    def matrix(self) -> sp.csr_matrix:
        """(L, N) sparse matrix of the weights: landmarks = matrix @ vertices (N, 3)."""
        rows = np.repeat(np.arange(len(self.names)), self.vertex_ids.shape[1])
        return sp.csr_matrix(
            (self.weights.ravel(), (rows, self.vertex_ids.ravel())), shape=(len(self.names), self.n_vertices)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "topology": self.topology,
            "n_vertices": self.n_vertices,
            "connectivity": self.connectivity,
            "frame": "metres, z up, face looks towards -y, subject's left is +x",
            "landmarks": [
                {
                    "name": n,
                    "vertices": [int(v) for v, w in zip(vs, ws, strict=True) if w > 0],
                    "weights": [round(float(w), 9) for w in ws if w > 0],
                    "note": note,
                }
                for n, vs, ws, note in zip(self.names, self.vertex_ids, self.weights, self.notes, strict=True)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LandmarkDefinition":
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"landmark file format_version {data.get('format_version')} != {FORMAT_VERSION}")
        rows = data["landmarks"]
        k = max(len(r["vertices"]) for r in rows)
        # Pad to K vertices per landmark with weight 0 on the landmark's first vertex.
        ids = np.array([r["vertices"] + [r["vertices"][0]] * (k - len(r["vertices"])) for r in rows])
        weights = np.array([r["weights"] + [0.0] * (k - len(r["weights"])) for r in rows], dtype=np.float64)
        return cls(
            names=tuple(r["name"] for r in rows),
            vertex_ids=ids.astype(np.int64),
            weights=weights / weights.sum(1, keepdims=True),
            notes=tuple(r["note"] for r in rows),
            topology=data["topology"],
            n_vertices=int(data["n_vertices"]),
            connectivity=data["connectivity"],
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LandmarkDefinition":
        return cls.from_json(json.loads(Path(path).read_text()))


@lru_cache(maxsize=1)
def load_anny_head_landmarks() -> LandmarkDefinition:
    """The shipped definition of the 23 landmarks on the Anny head topology (4538 vertices)."""
    text = resources.files("synth.labels").joinpath("data", ANNY_HEAD_FILE).read_text()
    return LandmarkDefinition.from_json(json.loads(text))


def landmarks(vertices: np.ndarray | torch.Tensor, definition: LandmarkDefinition):
    """Landmark positions of a batch of meshes.

    vertices: (n, N, 3) or (N, 3), numpy or torch (any float dtype, any device), in the definition's
    topology. Returns (n, L, 3) (or (L, 3)) of the same array type, dtype and device, same units.
    """
    vid = definition.vertex_ids  # (L, K)
    if isinstance(vertices, torch.Tensor):
        idx = torch.as_tensor(vid, device=vertices.device)
        w = torch.as_tensor(definition.weights, dtype=vertices.dtype, device=vertices.device)
        return torch.einsum("...lkd,lk->...ld", vertices[..., idx, :], w)  # (..., L, K, 3) -> (..., L, 3)
    vertices = np.asarray(vertices)
    w = definition.weights.astype(vertices.dtype, copy=False)
    return np.einsum("...lkd,lk->...ld", vertices[..., vid, :], w)


def model_landmarks(model: "FaceModel", vertices: torch.Tensor) -> torch.Tensor:
    """The 23 BabyFlow landmarks (B, 23, 3) of meshes (B, N, 3) of `model`'s topology, with the shipped
    Anny head definition; SynthError when the model's topology is not the one it was defined on."""
    definition = load_anny_head_landmarks()
    try:
        definition.check_topology(model.faces.detach().cpu().numpy(), model.n_vertices)
    except ValueError as err:
        raise SynthError(f"face model: {err}") from None
    return landmarks(vertices, definition)


# --- derivation on the Anny template --------------------------------------------------------------------


def _support(blendshapes: np.ndarray, labels: list[str], prefixes: tuple[str, ...], rel: float) -> np.ndarray:
    """bool (N,): vertices moved by any local-change blendshape whose name starts with a prefix, by more
    than `rel` times that blendshape's largest displacement (drops the fall-off rim of each target)."""
    mask = np.zeros(blendshapes.shape[1], dtype=bool)
    for k, label in enumerate(labels):
        if label.startswith(tuple(f"local_change:{p}" for p in prefixes)):
            norm = np.linalg.norm(blendshapes[k], axis=1)  # (N,)
            if norm.max() > 0:
                mask |= norm > rel * norm.max()
    return mask


def _mirror_vertex(vertices: np.ndarray, v: int, among: np.ndarray) -> int:
    """The vertex of `among` nearest to the x-mirror image of vertex v (the Anny head is symmetric)."""
    target = vertices[v] * np.array([-1.0, 1.0, 1.0])
    return int(among[np.argmin(np.linalg.norm(vertices[among] - target, axis=1))])


def _concavity(vertices: np.ndarray, candidates: np.ndarray, a: int, b: int) -> int:
    """Among midline candidates, the one farthest behind (+y side of) the straight profile line a-b."""
    pa, pb = vertices[a, 1:], vertices[b, 1:]  # (y, z) profile points
    d = pb - pa
    normal = np.array([d[1], -d[0]]) / np.linalg.norm(d)
    if normal[0] < 0:  # make it point backwards (+y), into the face
        normal = -normal
    depth = (vertices[candidates, 1:] - pa) @ normal
    return int(candidates[np.argmax(depth)])


def derive_landmark_vertices(
    vertices: np.ndarray,
    skin: np.ndarray,
    eye_margin_left: np.ndarray,
    mouth_margin: np.ndarray,
    nose: np.ndarray,
    alae: np.ndarray,
    ear_left: np.ndarray,
) -> tuple[dict[str, int], dict[str, str]]:
    """Locate the 23 landmarks as vertices of a symmetric head (z up, looking towards -y, left = +x).

    vertices: (N, 3). skin: (S,) skin vertex ids. eye_margin_left: eyelid-margin vertex ids of the left
    eye; mouth_margin: lip-line vertex ids; nose / alae / ear_left: bool (N,) region masks. Returns the vertex
    of each landmark and a note on how it was located. Right-side landmarks mirror the left ones.
    """
    v = vertices
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    ids: dict[str, int] = {}
    notes: dict[str, str] = {}
    skin_mask = np.zeros(len(v), dtype=bool)
    skin_mask[skin] = True
    # Eyes: extremes of the eyelid margin (skin/eye-cavity border) along x.
    ids["enL"] = int(eye_margin_left[np.argmin(x[eye_margin_left])])
    notes["enL"] = (
        "eyelid margin (skin/eye-cavity border of Anny's segmentation), most medial vertex (min |x|)"
    )
    ids["exL"] = int(eye_margin_left[np.argmax(x[eye_margin_left])])
    notes["exL"] = "eyelid margin (skin/eye-cavity border), most lateral vertex (max |x|)"
    iod = 2.0 * x[ids["exL"]]  # outer intercanthal width: the length unit of the search windows below
    eye_z = 0.5 * (z[ids["enL"]] + z[ids["exL"]])
    # Facial midline: x = 0 skin vertices in front of the eyes' depth + IOW/2 (not the back of the head).
    mid = skin[(np.abs(x[skin]) < 1e-6) & (y[skin] < y[ids["enL"]] + 0.5 * iod)]

    # Mouth: lip line = skin/mouth-cavity border.
    ids["chL"] = int(mouth_margin[np.argmax(x[mouth_margin])])
    notes["chL"] = "lip line (skin/mouth-cavity border of Anny's segmentation), most lateral vertex"
    stomion_z = float(z[mouth_margin[np.abs(x[mouth_margin]) < 1e-6]].mean())

    nose_mid = mid[nose[mid]]
    ids["prn"] = int(nose_mid[np.argmin(y[nose_mid])])
    notes["prn"] = (
        "midline vertex of the nose region (support of Anny's nose-* local changes), most anterior (min y)"
    )

    band = mid[(z[mid] > eye_z - 0.05 * iod) & (z[mid] < eye_z + 0.25 * iod)]
    ids["n"] = int(band[np.argmax(y[band])])
    notes["n"] = (
        "midline vertex in the eye band [eye z - 0.05 IOW, eye z + 0.25 IOW], deepest (max y) point"
        " of the nasal bridge"
    )

    upper = mid[(z[mid] > stomion_z) & (z[mid] < stomion_z + 0.5 * (z[ids["prn"]] - stomion_z))]
    ids["ls"] = int(upper[np.argmin(y[upper])])
    notes["ls"] = "midline vertex in the lower half between stomion and pronasale, most anterior (upper lip)"

    between = mid[(z[mid] > z[ids["ls"]]) & (z[mid] < z[ids["prn"]])]
    ids["sn"] = _concavity(v, between, ids["ls"], ids["prn"])
    notes["sn"] = (
        "midline vertex between labiale superius and pronasale farthest behind the ls-prn line "
        "(deepest concavity)"
    )

    lower = mid[(z[mid] < stomion_z) & (z[mid] > stomion_z - 0.3 * iod)]
    ids["li"] = int(lower[np.argmin(y[lower])])
    notes["li"] = "midline vertex within 0.3 IOW below stomion, most anterior (lower lip)"

    chin = mid[(z[mid] < z[ids["li"]] - 0.25 * iod) & (z[mid] > stomion_z - 1.0 * iod)]
    ids["pg"] = int(chin[np.argmin(y[chin])])
    notes["pg"] = "midline vertex 0.25-1.0 IOW below the lower lip, most anterior (chin)"

    fold = mid[(z[mid] < z[ids["li"]]) & (z[mid] > z[ids["pg"]])]
    ids["sl"] = _concavity(v, fold, ids["li"], ids["pg"])
    notes["sl"] = (
        "midline vertex between labiale inferius and pogonion farthest behind the li-pg line "
        "(labiomental fold)"
    )

    # Upper-lip column at a quarter of the mouth half-width: the Cupid's bow peak (crista philtri).
    cx = 0.3 * x[ids["chL"]]
    near_cx = np.abs(x[skin] - cx) < 0.1 * x[ids["chL"]]
    col = skin[near_cx & (z[skin] > stomion_z) & (z[skin] < z[ids["sn"]])]
    ids["cphL"] = int(col[np.argmin(y[col])])
    notes["cphL"] = "upper-lip vertex near x = 0.3 x(chL), between stomion and subnasale, most anterior"

    # Nose wing: most lateral vertex of the alae (support of nose-flaring) at nostril height.
    wing = skin[alae[skin] & (x[skin] > 0) & (z[skin] > z[ids["sn"]]) & (z[skin] < z[ids["prn"]])]
    ids["aL"] = int(wing[np.argmax(x[wing])])
    notes["aL"] = (
        "ala vertex (support of Anny's nose-flaring local change) between subnasale and pronasale "
        "height, most lateral"
    )
    base = skin[alae[skin] & (x[skin] > 0.5 * x[ids["aL"]]) & (z[skin] <= z[ids["aL"]])]
    ids["acL"] = int(base[np.argmax(y[base])])
    notes["acL"] = (
        "ala vertex (nose-flaring support) lateral of x(aL)/2 and not above alare, most posterior (alar base)"
    )

    # Ear: the auricle, moved by the shape (not placement) local changes l-ear-wing/flap/lobe.
    ear = skin[ear_left[skin]]
    ear_h = z[ear].max() - z[ear].min()
    tband = ear[(z[ear] > z[ear].min() + 0.35 * ear_h) & (z[ear] < z[ear].min() + 0.65 * ear_h)]
    ids["tL"] = int(tband[np.argmin(y[tband])])
    notes["tL"] = (
        "auricle vertex (support of l-ear-wing/flap/lobe local changes) in the middle third of its "
        "height, most anterior"
    )
    low = ear[z[ear] < z[ear].min() + 0.2 * ear_h]
    ids["oiL"] = int(low[np.argmin(y[low])])
    notes["oiL"] = "auricle vertex in the lowest fifth of its height, most anterior (earlobe attachment)"

    for left in ("enL", "exL", "chL", "cphL", "aL", "acL", "tL", "oiL"):
        right = left[:-1] + "R"
        ids[right] = _mirror_vertex(v, ids[left], skin)
        notes[right] = f"mirror image (x -> -x) of {left}"
    return ids, notes


def derive_anny_head_landmarks(model: Any = None) -> LandmarkDefinition:
    """Derive the 23-landmark definition from the Anny head template (reproducible, no hand picking).

    model: an `anny.Anny(rig="makehuman-head", topology="head", phenotypes="all", local_changes="all",
    ...)` instance, built when None (~7 s with a warm Anny cache).
    """
    import synth.quiet_warp  # noqa: F401  (before anny, which initialises Warp on import)

    # isort: split
    import anny  # heavy; only needed to (re)derive the shipped file
    from anny.face_segmentation import get_face_segmentation_mask

    if model is None:
        model = anny.Anny(
            rig="makehuman-head", topology="head", facial_actions="all", phenotypes="all", local_changes="all"
        )
    vertices = model.template_vertices.detach().cpu().numpy().astype(np.float64)  # (N, 3)
    faces = model.faces.detach().cpu().numpy().astype(np.int64)  # (F, 3)
    blendshapes = model.blendshapes.detach().cpu().numpy()  # (B, N, 3)

    def region_faces(label: str) -> np.ndarray:
        return get_face_segmentation_mask(model, [label]).cpu().numpy()

    skin_faces = region_faces("head")
    skin = np.unique(faces[skin_faces])
    eye_left = np.intersect1d(skin, np.unique(faces[region_faces("eye_cavity.L")]))
    mouth = np.intersect1d(skin, np.unique(faces[region_faces("mouth_cavity")]))
    labels = list(model.blendshape_labels)
    nose = _support(blendshapes, labels, ("nose-",), 0.2)
    auricle = ("l-ear-wing", "l-ear-flap", "l-ear-lobe")
    ear_left = _support(blendshapes, labels, auricle, 0.3) & (vertices[:, 0] > 0)
    alae = _support(blendshapes, labels, ("nose-flaring",), 0.2)
    ids, notes = derive_landmark_vertices(vertices, skin, eye_left, mouth, nose, alae, ear_left)
    return LandmarkDefinition(
        names=LANDMARK_NAMES,
        vertex_ids=np.array([[ids[name]] for name in LANDMARK_NAMES], dtype=np.int64),
        weights=np.ones((len(LANDMARK_NAMES), 1)),
        notes=tuple(notes[name] for name in LANDMARK_NAMES),
        topology="anny-head",
        n_vertices=len(vertices),
        connectivity=connectivity_hash(faces, len(vertices)),
    )


def main() -> None:
    """Rewrite the shipped Anny head landmark file from the template."""
    logging.basicConfig(level=logging.INFO)
    path = Path(__file__).parent / "data" / ANNY_HEAD_FILE
    derive_anny_head_landmarks().save(path)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
