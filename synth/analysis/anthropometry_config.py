"""Configuration of `synth anthropometry` (validated at the boundary, Hydra-free)."""

from dataclasses import dataclass, field

from synth.build.config import ModelConfig


@dataclass
class AnthropometryConfig:
    """`synth anthropometry`: measure infant heads against the shipped norms.

    model: the face model; its Anny prior (`model.anny`, calibration included) is the source measured, and
        with samples=true the built model is sampled. ages_months: the ages of the source groups (each
        age x sex is one group); n_per_group: identities per group; samples: also measure n_samples
        identities sampled from the built model (neutral expression); seed: the identity stream of the
        source groups (model seed streams are not reused: fresh identities) and of the model samples.
    out: output directory (anthropometry.json, anthropometry.md, head_circumference.png).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    out: str = "anthropometry"
    ages_months: list[float] = field(default_factory=lambda: [0.0, 3.0, 6.0, 12.0, 24.0, 36.0])
    n_per_group: int = 20
    samples: bool = True
    n_samples: int = 200
    seed: int = 1000

    def __post_init__(self) -> None:
        self.ages_months = [float(a) for a in self.ages_months]
        if not self.ages_months or not all(0.0 <= a <= 36.0 for a in self.ages_months):
            raise ValueError(
                f"ages_months={self.ages_months}: need one or more ages in [0, 36] (the norms' range)"
            )
        if not 2 <= self.n_per_group <= 10_000:
            raise ValueError(f"n_per_group={self.n_per_group} must be in [2, 10000]")
        if not 2 <= self.n_samples <= 100_000:
            raise ValueError(f"n_samples={self.n_samples} must be in [2, 100000]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
