"""Fixtures shared by the source tests: one Anny head model and its topology facts per session."""

from typing import Any

import pytest

from synth.sources.anny_source import Topology, anny_head_model, anny_topology


@pytest.fixture(scope="session")
def anny_model() -> Any:
    """Anny's head model as the Anny source uses it (float64, CPU), built once (`anny_head_model` caches)."""
    return anny_head_model()


@pytest.fixture(scope="session")
def topology(anny_model: Any) -> Topology:
    """Symmetry map, alignment region and local-change scales of the Anny head topology."""
    return anny_topology()
