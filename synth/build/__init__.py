"""synth.build: the recipe that turns a source into a face model directory. `config` says what to build
(`ModelConfig`: source, truncation, flows, seed; its hash keys the cache), `build` runs source tensor ->
HOSVD -> flows -> `FaceModel` -> model directory, keeps the model cache (`resolve_model`, `build_model`)
and gives the default infant model (`default_model()`), and `report` writes the model report of a build
(held-out reconstruction error, flow NLL, Gaussianity). It sits on `synth.facemodel`, `synth.labels` and
`synth.sources`; fitting, analysis, the pipeline and the CLI use it.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # `from synth.build import default_model` without importing torch for `synth.build.config` users.
    if name in ("default_model", "resolve_model", "build_model"):
        from synth.build import build

        return getattr(build, name)
    raise AttributeError(f"module 'synth.build' has no attribute {name!r}")
