"""Fixtures of the pipeline tests: one embedded Ray for the whole module set (ray.init costs seconds)."""

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """An embedded 2-CPU Ray with a small object store; `synth.pipeline.ray_exec` joins it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
