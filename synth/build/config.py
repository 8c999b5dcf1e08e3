"""Configuration of a face model's build: its source, the bilinear truncation, the flows, and `build-model`.

`ModelConfig()` with no arguments is the default model (`model=anny_infant`): `synth.build.default_model()`
and `synth generate` build exactly this configuration. Every dataclass validates itself in
`__post_init__` and raises `ValueError` naming the key, the bad value and the allowed range.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from synth.facemodel.config import MODEL_FORMAT_VERSION, FlowConfig, check_range
from synth.sources.anny_source import AGE_CHOICES, AnnyPriorConfig
from synth.sources.transfer_config import TransferConfig


class ModelSource(Enum):
    """Where the identity x expression tensor comes from."""

    anny = "anny"  # infant identities sampled from Anny, expressions from the AU catalogue
    tensor = "tensor"  # a user's own tensor file (see docs/bring-your-own-model.md)
    anny_transfer = "anny_transfer"  # the Anny infants, expressions transferred from remeshed adults


@dataclass
class ModelConfig:
    """Which face model to use, or how to build it.

    path: an existing model directory to load; nothing is built and the other fields are ignored.
    source: `anny` (default infant model) or `tensor` (`tensor_path`, an `.npz` identity x expression
        tensor). anny: the infant phenotype prior; n_identities: base identities sampled from it (each
        also mirrored and symmetrised: 3 x n_identities in the tensor); expressions: catalogue names to
        keep (empty = all 76; "neutral" is always kept); intensity: the expression intensity delta.
    transfer: with source `anny_transfer`, how the expressions are transferred from adult heads.
    variance_id, variance_ex: fraction of each mode's energy the truncated HOSVD keeps (1 = full rank).
    conditioning_identities: fresh source identities per age anchor and sex from which the build fits the
        identity distribution given age and sex (`sampler.age_months` / `sampler.sex`); 0: none (Anny
        sources only).
    seed: seed of the identity prior, the flows' initialisation, noise and minibatches.
    report_held_out: base identities drawn with fresh seeds for the model report (0: no report).
    out: where `synth build-model` writes the model (default: the cache, see `synth.build.build`).
    """

    path: str | None = None
    source: ModelSource = ModelSource.anny
    anny: AnnyPriorConfig = field(default_factory=AnnyPriorConfig)
    tensor_path: str | None = None
    transfer: TransferConfig = field(default_factory=TransferConfig)
    n_identities: int = 95
    training_ages: str = "stratified"
    expressions: list[str] = field(default_factory=list)
    intensity: float = 1.0
    variance_id: float = 0.999
    variance_ex: float = 0.999
    flow: FlowConfig = field(default_factory=FlowConfig)
    conditioning_identities: int = 200
    seed: int = 0
    report_held_out: int = 10
    out: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None and self.out is not None:
            raise ValueError(
                f"model.path={self.path} loads an existing model and model.out={self.out} builds one; set one"
            )
        if self.source is ModelSource.tensor and not self.tensor_path:
            raise ValueError(
                "model.source=tensor needs model.tensor_path=FILE.npz (see docs/bring-your-own-model.md)"
            )
        check_range("model.n_identities", self.n_identities, 1, 10_000)
        if self.training_ages not in AGE_CHOICES:
            raise ValueError(
                f"model.training_ages={self.training_ages}: need one of {', '.join(AGE_CHOICES)}"
            )
        check_range("model.seed", self.seed, 0, 2**63 - 1)
        check_range("model.conditioning_identities", self.conditioning_identities, 0, 100_000)
        check_range("model.report_held_out", self.report_held_out, 0, 1000)
        if not 0.0 < self.intensity <= 2.0:
            raise ValueError(f"model.intensity={self.intensity} must be in (0, 2]")
        for key in ("variance_id", "variance_ex"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"model.{key}={value} must be in (0, 1]")
        if len(set(self.expressions)) != len(self.expressions):
            raise ValueError(f"model.expressions has duplicates: {self.expressions}")

    def build_key(self) -> str:
        """A hash of everything that determines the built model (not `path` / `out`), keying the cache."""
        spec = build_spec(self)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_spec(config: ModelConfig) -> dict[str, Any]:
    """The JSON-able build recipe: the config without `path` / `out`, plus the format version."""
    spec = _jsonable(dataclasses.asdict(config))
    spec.pop("path")
    spec.pop("out")
    if config.source is ModelSource.tensor:
        spec.pop("anny")
        spec.pop("training_ages")
        spec.pop("conditioning_identities")
    if config.source is not ModelSource.anny_transfer:
        spec.pop("transfer")  # keeps the build keys of the other sources unchanged
    spec["format_version"] = MODEL_FORMAT_VERSION
    return spec


def config_from_spec(spec: dict[str, Any]) -> ModelConfig:
    """The `ModelConfig` of a build recipe recorded by `build_spec` (e.g. a model's `info["build"]`)."""
    spec = dict(spec)
    version = spec.pop("format_version", None)
    if version != MODEL_FORMAT_VERSION:
        raise ValueError(f"build recipe of format_version {version}, this synth reads {MODEL_FORMAT_VERSION}")
    anny, transfer = spec.pop("anny", None), spec.pop("transfer", None)
    if transfer is not None:
        transfer["adult_age_years"] = tuple(transfer["adult_age_years"])
    return ModelConfig(
        source=ModelSource(spec.pop("source")),
        anny=AnnyPriorConfig(**anny) if anny is not None else AnnyPriorConfig(),
        transfer=TransferConfig(**transfer) if transfer is not None else TransferConfig(),
        flow=FlowConfig(**spec.pop("flow")),
        **spec,
    )


@dataclass
class BuildModelConfig:
    """`synth build-model`: the model to build; `out` is a synonym of `model.out`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    out: str | None = None

    def __post_init__(self) -> None:
        if self.out is not None and self.model.out is not None and self.out != self.model.out:
            raise ValueError(f"out={self.out} and model.out={self.model.out} disagree; set one")
        if self.model.path is not None:
            raise ValueError(f"build-model builds a model; model.path={self.model.path} is for loading one")
        if self.out is not None:
            self.model.out = self.out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
