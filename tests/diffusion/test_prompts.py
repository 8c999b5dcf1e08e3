import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.diffusion.config import ETHNICITIES, DiffusionConfig
from synth.diffusion.prompts import article, build_prompt, build_prompts, choose_ethnicities


def test_paper_prompt_and_article_rule() -> None:
    template = DiffusionConfig().prompt_template
    assert build_prompt(template, "Indian") == "Realistic frontal view portrait of an Indian infant"
    assert build_prompt(template, "Black") == "Realistic frontal view portrait of a Black infant"
    assert [article(t) for t in ETHNICITIES] == ["a", "a", "an", "a", "a", "a"]
    assert article("asian") == "an" and article("European") == "an"  # letter rule, documented


@settings(max_examples=30, deadline=None)
@given(
    run_seed=st.integers(0, 2**32),
    indices=st.lists(st.integers(0, 10**9), min_size=1, max_size=6, unique=True),
    k=st.integers(1, 8),
)
def test_sampled_tokens_depend_only_on_seed_and_index(run_seed: int, indices: list[int], k: int) -> None:
    cfg = DiffusionConfig(images_per_sample=k)
    together = choose_ethnicities(cfg, run_seed, np.array(indices))
    assert together.shape == (len(indices), k)
    for row, index in enumerate(indices):
        alone = choose_ethnicities(cfg, run_seed, np.array([index]))[0]
        assert list(alone) == list(together[row])
        assert set(alone) <= set(ETHNICITIES)
        if k <= len(ETHNICITIES):  # the variants of one mesh show different ethnicities
            assert len(set(alone)) == k


def test_sampled_tokens_are_uniform_over_samples() -> None:
    tokens = choose_ethnicities(DiffusionConfig(), 3, np.arange(6000))[:, 0]
    counts = np.array([(tokens == t).sum() for t in ETHNICITIES])
    # 1000 expected per token; a binomial sd is ~29, so +-150 is > 5 sd.
    assert np.all(np.abs(counts - 1000) < 150), counts
    assert not np.array_equal(tokens, choose_ethnicities(DiffusionConfig(), 4, np.arange(6000))[:, 0])


@pytest.mark.parametrize("k", [1, 6])
def test_sweep_cycles_through_the_tokens(k: int) -> None:
    cfg = DiffusionConfig(images_per_sample=k, ethnicity_mode="sweep")
    out = choose_ethnicities(cfg, 0, np.arange(12))
    if k == 6:
        assert all(list(row) == list(ETHNICITIES) for row in out)
    else:
        assert list(out[:, 0]) == list(ETHNICITIES) * 2
    assert np.array_equal(out, choose_ethnicities(cfg, 99, np.arange(12)))  # no randomness


def test_build_prompts_keeps_the_layout() -> None:
    cfg = DiffusionConfig(
        prompt_template="photo of {article} {ethnicity} baby", ethnicities=["Inuit", "Thai"]
    )
    eth = np.array([["Inuit", "Thai"], ["Thai", "Thai"]])
    assert build_prompts(cfg, eth).tolist() == [
        ["photo of an Inuit baby", "photo of a Thai baby"],
        ["photo of a Thai baby", "photo of a Thai baby"],
    ]
