"""synth.facemodel: the disentangled face model (`FaceModel`), its sources, and its build."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `from synth.facemodel import FaceModel` without importing torch/zuko for the data-only modules.
    if name == "FaceModel":
        from synth.facemodel.model import FaceModel

        return FaceModel
    raise AttributeError(f"module 'synth.facemodel' has no attribute {name!r}")
