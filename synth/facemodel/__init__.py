"""synth.facemodel: the disentangled face model and its maths, nothing else. `FaceModel` (sample, decode,
fit coefficients, save / load), the bilinear HOSVD model (`bilinear`), the RealNVP latent flows (`flows`),
the identity x expression training tensor type (`tensor`) and the flows' own configuration (`config`).
It imports no other synth package but the shared utilities (errors, atomic writes, seeding): where the
training tensors come from is `synth.sources`, how a model is built and cached is `synth.build`, labels
of its meshes are `synth.labels`.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # `from synth.facemodel import FaceModel` without importing torch/zuko for the data-only modules.
    if name == "FaceModel":
        from synth.facemodel.model import FaceModel

        return FaceModel
    raise AttributeError(f"module 'synth.facemodel' has no attribute {name!r}")
