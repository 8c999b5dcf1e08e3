"""Configuration of the face model's own maths: the flows (`FlowConfig`) and the model directory's format
version. What a model is built from and how (`ModelConfig`) is `synth.build.config`. Every dataclass
validates itself in `__post_init__` and raises `ValueError` naming the key, the bad value and the allowed
range.
"""

from dataclasses import dataclass

# Bump when the model directory layout or the build recipe changes: it keys the cache and is checked on load.
MODEL_FORMAT_VERSION = 2  # 2: HOSVD common component, identity flow PCA floor, identity conditional


@dataclass
class FlowConfig:
    """One RealNVP per factor (BabyFlow 4.4). Both factors use the same settings.

    layers: affine coupling layers (paper: 6); hidden, hidden_layers: width and depth of each coupling
    network; pca_variance: fraction of the coefficients' variance kept by the PCA in front of the flow
    (paper: 0.95; here 1: every component the HOSVD kept, see docs/face-model.md); lambda_jac: weight
    of the Jacobian Frobenius norm in the loss (eq. 19: 1);
    dequant_scale: uniform dequantisation noise in units of each coordinate's standard deviation (paper:
    1); epochs, batch_size, lr, weight_decay: Adam training (the default batch holds every training code of
    the default model, so an epoch is one step); validation: share of the training identities /
    expressions held out to pick the number of epochs (early stopping; 0: train `epochs` on all).
    """

    layers: int = 6
    hidden: int = 128
    hidden_layers: int = 2
    # Not the paper's 0.95: the HOSVD's factor rows have orthonormal columns, so every coefficient direction
    # has the same variance and a 95 % PCA drops arbitrary ones: on the default model 3 of 48 identity
    # components, 1.4 mm mean / 11.7 mm largest vertex error on the training heads. The HOSVD truncation
    # (model.variance_id, by mesh energy) is where the dimension is reduced.
    pca_variance: float = 1.0
    lambda_jac: float = 1.0
    dequant_scale: float = 1.0
    epochs: int = 1000
    batch_size: int = 512
    validation: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        check_range("model.flow.layers", self.layers, 1, 32)
        check_range("model.flow.hidden", self.hidden, 1, 4096)
        check_range("model.flow.hidden_layers", self.hidden_layers, 1, 8)
        check_range("model.flow.epochs", self.epochs, 0, 100_000)
        check_range("model.flow.batch_size", self.batch_size, 1, 100_000)
        if not 0.0 < self.pca_variance <= 1.0:
            raise ValueError(f"model.flow.pca_variance={self.pca_variance} must be in (0, 1]")
        if not 0.0 <= self.lambda_jac <= 100.0:
            raise ValueError(f"model.flow.lambda_jac={self.lambda_jac} must be in [0, 100]")
        if not 0.0 <= self.dequant_scale <= 10.0:
            raise ValueError(f"model.flow.dequant_scale={self.dequant_scale} must be in [0, 10]")
        if not 0.0 <= self.validation <= 0.5:
            raise ValueError(f"model.flow.validation={self.validation} must be in [0, 0.5]")
        if not 0.0 < self.lr <= 1.0:
            raise ValueError(f"model.flow.lr={self.lr} must be in (0, 1]")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ValueError(f"model.flow.weight_decay={self.weight_decay} must be in [0, 1]")


def check_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{key}={value} must be in [{low}, {high}]")
