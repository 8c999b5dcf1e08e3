"""Per-sample seeds: every random draw in synth comes from here.

Sample i of a run depends only on (run seed, i, stage), never on batch composition, worker count or
resume history: each (run_seed, index, stage) triple gets its own `np.random.SeedSequence`.
"""

from enum import IntEnum

import numpy as np
import torch


class Stage(IntEnum):
    """Stable ids of the random streams; never renumber (datasets depend on them)."""

    LATENT = 0
    CAMERA = 1
    LIGHT = 2
    PROMPT = 3
    DIFFUSION = 4
    SPLIT = 5
    SAMPLER = 6
    BUILD = 7


def seed_sequence(run_seed: int, index: int, stage: Stage, *extra: int) -> np.random.SeedSequence:
    """The SeedSequence of one (run seed, sample index, stage[, extra...]) stream."""
    if run_seed < 0 or index < 0 or any(e < 0 for e in extra):
        raise ValueError(f"seeds and indices must be >= 0, got run_seed={run_seed} index={index} {extra}")
    return np.random.SeedSequence([int(run_seed), int(index), int(stage), *map(int, extra)])


def numpy_rng(run_seed: int, index: int, stage: Stage, *extra: int) -> np.random.Generator:
    """A numpy Generator for one sample and stage."""
    return np.random.default_rng(seed_sequence(run_seed, index, stage, *extra))


def torch_seed(run_seed: int, index: int, stage: Stage, *extra: int) -> int:
    """A 63-bit integer seed for a `torch.Generator` of one sample and stage."""
    return int(seed_sequence(run_seed, index, stage, *extra).generate_state(2, np.uint64)[0] >> np.uint64(1))


def torch_generator(
    run_seed: int, index: int, stage: Stage, *extra: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A seeded `torch.Generator` for one sample and stage."""
    return torch.Generator(device=device).manual_seed(torch_seed(run_seed, index, stage, *extra))
