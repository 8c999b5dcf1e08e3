"""Prompts from the template and the ethnicity tokens, per sample and image variant.

SAMPLE mode: sample i draws the tokens of its k images from its own stream
`numpy_rng(run_seed, i, Stage.PROMPT)`, without replacement while k <= number of tokens (so the k variants
of one mesh show different ethnicities, as in BabyFlow Fig. 7). SWEEP mode: image j of sample i gets token
`(i * k + j) mod n`, so k = n sweeps every token on every sample and k = 1 cycles through them over samples.
"""

import numpy as np

from synth.diffusion.config import DiffusionConfig, EthnicityMode
from synth.seeding import Stage, numpy_rng


def article(word: str) -> str:
    """The indefinite article before `word`: "an" before a vowel letter, else "a" ("an Indian", "a White")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def build_prompt(template: str, ethnicity: str) -> str:
    """`template` with `{ethnicity}` and `{article}` (agreeing with the token) filled in."""
    return template.format(article=article(ethnicity), ethnicity=ethnicity)


def choose_ethnicities(cfg: DiffusionConfig, run_seed: int, indices: np.ndarray) -> np.ndarray:
    """indices: (B,) global sample indices -> tokens (B, k) str, k = cfg.images_per_sample."""
    tokens = np.asarray(cfg.ethnicities, dtype=object)
    n, k = len(tokens), cfg.images_per_sample
    out = np.empty((len(indices), k), dtype=object)
    for row, index in enumerate(np.asarray(indices, dtype=np.int64)):
        if cfg.ethnicity_mode is EthnicityMode.sweep:
            picks = (int(index) * k + np.arange(k)) % n
        else:
            picks = numpy_rng(run_seed, int(index), Stage.PROMPT).choice(n, size=k, replace=k > n)
        out[row] = tokens[picks]
    return out.astype(str)


def build_prompts(cfg: DiffusionConfig, ethnicities: np.ndarray) -> np.ndarray:
    """ethnicities: (B, k) str -> prompts (B, k) str."""
    flat = [build_prompt(cfg.prompt_template, str(e)) for e in ethnicities.ravel()]
    return np.asarray(flat, dtype=str).reshape(ethnicities.shape)
