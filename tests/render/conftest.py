"""Fixtures of the render tests: the Anny infant head, loaded once per session."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def anny_head() -> tuple[np.ndarray, np.ndarray]:
    """(vertices (4538, 3) float32 metres, faces (9014, 3) int64) of a newborn Anny head (z up, faces -y)."""
    import anny

    model = anny.Anny(
        rig="makehuman-head", topology="head", facial_actions="all", phenotypes="all", local_changes="all"
    )
    with torch.no_grad():
        out = model(phenotype_kwargs={"age": torch.tensor([0.0], dtype=torch.float64)})
    verts = out["vertices"][0].float().numpy()
    faces = model.get_triangular_faces().to(torch.int64).numpy()
    return verts, faces
