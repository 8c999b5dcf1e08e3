"""Fixtures of the diffusion tests: the tiny pipeline, built once per session into a temporary directory."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The tiny networks are far too small to gain from intra-op threads; on a shared 2-core machine two
    # threads make each tiny conv ~100x slower (thread hand-offs under contention).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_diffusion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1.5 + two-ControlNet pipeline (seed 0) saved in a session temporary directory."""
    from synth.diffusion.tiny import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("diffusion") / "tiny", seed=0)
