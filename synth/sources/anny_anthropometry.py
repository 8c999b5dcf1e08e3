"""Anthropometry of the Anny head topology: which triangles a head circumference is measured on, and the
measurement of Anny identities and of meshes on that topology (`synth.analysis.anthropometry` math)."""

from functools import cache

import numpy as np

from synth.analysis.anthropometry import HeadTopology, Population, measure_population
from synth.facemodel.anny_source import IdentityParams, anny_head_model, anny_topology, neutral_meshes
from synth.facemodel.landmarks import _support, landmarks, load_anny_head_landmarks
from synth.sources.anny_calibration import sex_of

# The auricle: vertices moved by Anny's ear-shape targets (the rule of the ear landmarks). A tape above the
# ears does not touch them, so they are left out of the head-circumference section.
_AURICLE = tuple(f"{side}-ear-{part}" for side in "lr" for part in ("wing", "flap", "lobe"))


@cache
def anny_head_topology() -> HeadTopology:
    """Skin triangles (Anny's "head" segmentation) without the auricles, and the midline skin vertices
    (x = 0 on the symmetric template) of the Anny head topology."""
    from anny.face_segmentation import get_face_segmentation_mask

    model = anny_head_model()
    faces = anny_topology().faces
    template = model.template_vertices.numpy().astype(np.float64)
    skin_faces = faces[get_face_segmentation_mask(model, ["head"]).cpu().numpy()]
    auricle = _support(model.blendshapes.numpy(), list(model.blendshape_labels), _AURICLE, 0.3)
    skin = np.unique(skin_faces)
    return HeadTopology(
        faces=skin_faces[~auricle[skin_faces].any(axis=1)],
        midline=skin[np.abs(template[skin, 0]) < 1e-6],
    )


def measure_meshes(vertices: np.ndarray, age_months: np.ndarray, sex: np.ndarray) -> Population:
    """Measure neutral meshes (n, N, 3) metres on the Anny head topology (common frame)."""
    definition = load_anny_head_landmarks()
    faces = anny_topology().faces
    n_vertices = int(faces.max()) + 1
    if vertices.shape[-2] != n_vertices:
        raise ValueError(
            f"anthropometry: meshes have {vertices.shape[-2]} vertices, Anny's head {n_vertices}"
        )
    points = landmarks(vertices, faces, definition)
    return measure_population(vertices, points, definition.names, anny_head_topology(), age_months, sex)


def measure_identities(params: IdentityParams) -> Population:
    """Measure Anny identities (their aligned neutral meshes): exact ages and sexes from the parameters."""
    gender = params.phenotypes[:, params.phenotype_labels.index("gender")]
    return measure_meshes(neutral_meshes(params), params.age_months, sex_of(gender))
