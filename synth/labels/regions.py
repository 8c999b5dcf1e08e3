"""A segmentation of a face topology into mouth, eyes, nose and the rest, derived from its landmarks.

Each region is the set of vertices within a radius of the region's landmark skeleton: polylines through
the BabyFlow landmarks (Appendix A) of the mouth (cheilion - crista philtri - labiale superius, cheilion -
labiale inferius - sublabiale), the eyes (exocanthion - endocanthion) and the nose (nasion - pronasale -
subnasale, alare - pronasale, alar crest - subnasale). Radii are fractions of the region's own width
(mouth width, eye width, nose width), so the segmentation follows the face's proportions and works on any
topology with a landmark definition; nothing is hand-picked by vertex id. A vertex within reach of several
regions goes to the one it is relatively closest to (distance / radius).
"""

import itertools
from collections.abc import Mapping

import numpy as np

from synth.labels.landmarks import LANDMARK_NAMES, LandmarkDefinition, landmarks

REGIONS: tuple[str, ...] = ("mouth", "eyes", "nose", "rest")

# Region -> (polylines of landmark names, landmark pair whose distance is the width, radius / width).
_SKELETONS: dict[str, tuple[tuple[tuple[str, ...], ...], tuple[str, str], float]] = {
    "mouth": (
        (("chR", "cphR", "ls", "cphL", "chL"), ("chR", "li", "chL"), ("li", "sl")),
        ("chR", "chL"),
        0.3,
    ),
    "eyes": ((("exR", "enR"), ("enL", "exL")), ("exL", "enL"), 0.45),
    "nose": ((("n", "prn", "sn"), ("aR", "prn", "aL"), ("acR", "sn", "acL")), ("aR", "aL"), 0.35),
}


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (N, 3) to the segment a-b (3,) -> (N,)."""
    ab = b - a
    t = np.clip((points - a) @ ab / max(float(ab @ ab), 1e-30), 0.0, 1.0)  # (N,)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def regions_from_landmarks(vertices: np.ndarray, points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Region masks of a mesh: vertices (N, 3), points: landmark name -> (3,) position.

    Returns {region: bool (N,)} for REGIONS; the masks partition the vertices.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    scores = []
    for name in REGIONS[:-1]:
        lines, (p, q), frac = _SKELETONS[name]
        radius = frac * np.linalg.norm(points[p] - points[q])
        dist = np.full(len(vertices), np.inf)
        for line in lines:
            for a, b in itertools.pairwise(line):
                dist = np.minimum(dist, _segment_distance(vertices, points[a], points[b]))
        scores.append(dist / radius)
    scores = np.stack(scores, 1)  # (N, 3) relative distance to each region
    best = scores.argmin(1)
    label = np.where(scores[np.arange(len(vertices)), best] <= 1.0, best, len(REGIONS) - 1)
    return {name: label == k for k, name in enumerate(REGIONS)}


def face_regions(vertices: np.ndarray, definition: LandmarkDefinition) -> dict[str, np.ndarray]:
    """Region masks of a topology from its landmark definition, on a reference mesh (N, 3) (e.g. the
    model's mean shape, neutral-ish): {region: bool (N,)}."""
    pts = landmarks(np.asarray(vertices, dtype=np.float64), definition)  # (L, 3)
    return regions_from_landmarks(vertices, {n: pts[definition.index(n)] for n in LANDMARK_NAMES})
