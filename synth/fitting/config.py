"""Configuration of `synth fit` and `synth analyze` (schemas `fit_schema`, `analyze_schema`)."""

from dataclasses import dataclass, field
from enum import Enum

from synth.build.config import ModelConfig
from synth.fitting.baseline import TrainingMeshes
from synth.fitting.fitting import FitOptions
from synth.fitting.keypoint_encoder import EncoderOptions


class FitTask(Enum):
    """What `synth fit` does."""

    files = "files"  # fit (and neutralise) the mesh files in `inputs`
    reconstruction = "reconstruction"  # held-out infants: BabyFlow vs Gaussian prior vs PCA, neutralisation
    keypoints = "keypoints"  # held-out generated samples fitted from 2D landmarks under each prior
    train_keypoint_encoder = "train_keypoint_encoder"  # LiP-Flow's keypoint encoder on a dataset (`data`)


@dataclass
class FitConfig:
    """`synth fit`.

    model: the face model (`model=tiny`, `model.path=DIR`; default: the cached default model).
    task: see `FitTask`. inputs: mesh files in the model's topology (.ply / .obj / .npy (N, 3) metres),
    for task=files. out: output directory. fit: the fit's weights, prior, alignment and schedule.
    neutralise: also write each input's neutralised mesh. batch_size: meshes per batched fit.
    device: torch device ("cpu", "cuda"). held_out: held-out base identities for task=reconstruction
    (None: the model's `report_held_out`); expressions_per_identity: fit the neutral plus this many - 1
    random expressions of each held-out infant (0: all). baseline_meshes / baseline_variance: the PCA
    baseline's training meshes and kept variance. keypoint_samples: held-out samples for task=keypoints.
    seed: seed of the held-out samples and of the baseline's random expressions.
    data: a `synth generate` dataset: the training set of task=train_keypoint_encoder, or for task=keypoints
    the held-out samples (its first `keypoint_samples`) instead of fresh model samples.
    keypoint_encoder: a trained encoder (directory) for task=keypoints: adds the encoder alone and the
    encoder-initialised (LiP-Flow) fits. encoder: architecture and schedule of task=train_keypoint_encoder.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    task: FitTask = FitTask.files
    inputs: list[str] = field(default_factory=list)
    out: str = "fit_out"
    fit: FitOptions = field(default_factory=FitOptions)
    neutralise: bool = True
    batch_size: int = 16
    device: str = "cpu"
    held_out: int | None = None
    expressions_per_identity: int = 0
    baseline_meshes: TrainingMeshes = TrainingMeshes.random
    baseline_variance: float = 0.99
    keypoint_samples: int = 20
    seed: int = 12345
    data: str | None = None
    keypoint_encoder: str | None = None
    encoder: EncoderOptions = field(default_factory=EncoderOptions)

    def __post_init__(self) -> None:
        if self.task is FitTask.files and not self.inputs:
            raise ValueError("task=files needs inputs=[a.ply,b.npy,...] (mesh files in the model's topology)")
        if self.task is FitTask.train_keypoint_encoder and not self.data:
            raise ValueError("task=train_keypoint_encoder needs data=DIR (a dataset made by synth generate)")
        if self.keypoint_encoder and self.task is not FitTask.keypoints:
            raise ValueError(f"keypoint_encoder is used by task=keypoints, not task={self.task.value}")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size={self.batch_size} must be in [1, 4096]")
        if self.held_out is not None and not 1 <= self.held_out <= 1000:
            raise ValueError(f"held_out={self.held_out} must be in [1, 1000]")
        if self.expressions_per_identity < 0:
            raise ValueError(
                f"expressions_per_identity={self.expressions_per_identity} must be >= 0 (0: all)"
            )
        if not 0.0 < self.baseline_variance <= 1.0:
            raise ValueError(f"baseline_variance={self.baseline_variance} must be in (0, 1]")
        if not 1 <= self.keypoint_samples <= 100_000:
            raise ValueError(f"keypoint_samples={self.keypoint_samples} must be in [1, 100000]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")


@dataclass
class AnalyzeConfig:
    """`synth analyze`: latent analyses of a model (BabyFlow 2.6 / 4.5, 3DFaceCAM 4.3).

    rho: confidence of the Mahalanobis hyperellipsoid (paper 0.99); n_samples: samples per factor and
    model (with / without NF); n_pairs: random pairs for diversity (3DFaceCAM: 10000); n_train: training
    meshes for specificity; pa_draws / pa_quantile: permutations and quantile of the parallel analysis;
    pa_max_columns: variables kept per mode (vertices subsampled beyond); figures: KDE and pair figures;
    figure_pairs: pairs shown; seed: all sampling.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    out: str = "analysis"
    rho: float = 0.99
    n_samples: int = 200
    n_pairs: int = 10_000
    n_train: int = 2000
    pa_draws: int = 20
    pa_quantile: float = 0.95
    pa_max_columns: int = 200_000
    figures: bool = True
    figure_pairs: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.rho < 1.0:
            raise ValueError(f"rho={self.rho} must be in (0, 1)")
        if not 0.5 <= self.pa_quantile < 1.0:
            raise ValueError(f"pa_quantile={self.pa_quantile} must be in [0.5, 1)")
        for key, low in (
            ("n_samples", 2),
            ("n_pairs", 1),
            ("n_train", 1),
            ("pa_draws", 1),
            ("pa_max_columns", 100),
        ):
            if getattr(self, key) < low:
                raise ValueError(f"{key}={getattr(self, key)} must be >= {low}")
        if not 1 <= self.figure_pairs <= min(self.n_samples, 20):
            raise ValueError(f"figure_pairs={self.figure_pairs} must be in [1, min(n_samples, 20)]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
