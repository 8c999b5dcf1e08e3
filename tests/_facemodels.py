"""Synthetic identity x expression tensors and face models built from them (no Anny), for the tests."""

import numpy as np

from synth.build.build import model_from_tensor
from synth.build.config import ModelConfig, ModelSource
from synth.facemodel.config import FlowConfig
from synth.facemodel.model import FaceModel
from synth.facemodel.tensor import FaceTensor


def synthetic_tensor(n_id: int = 16, n_ex: int = 6, n_vertices: int = 120, seed: int = 0) -> FaceTensor:
    """A ~10 cm "head" with identity, expression and identity-dependent expression variation of mm-cm
    size; identities drawn from a skewed (gamma) law so the flows have something non-Gaussian to learn.
    Expression 0 is "neutral" (no expression offset)."""
    rng = np.random.default_rng(seed)
    template = rng.normal(size=(n_vertices, 3)) * 0.05  # (N, 3) metres
    id_basis = rng.normal(size=(4, n_vertices, 3)) * 0.004
    ex_basis = rng.normal(size=(3, n_vertices, 3)) * 0.003
    inter = rng.normal(size=(4, 3, n_vertices, 3)) * 0.001
    a = rng.gamma(2.0, size=(n_id, 4))  # (n_id, 4) identity codes
    b = np.concatenate([np.zeros((1, 3)), rng.normal(size=(n_ex - 1, 3))])  # (n_ex, 3), neutral first
    vertices = (
        template
        + np.einsum("ir,rnc->inc", a, id_basis)[:, None]
        + np.einsum("es,snc->enc", b, ex_basis)[None]
        + np.einsum("ir,es,rsnc->ienc", a, b, inter)
    ).astype(np.float32)  # (n_id, n_ex, N, 3)
    faces = np.stack([np.arange(n_vertices - 2), np.arange(1, n_vertices - 1), np.arange(2, n_vertices)], 1)
    names = ["neutral"] + [f"expr_{k}" for k in range(1, n_ex)]
    aus = (rng.random((n_ex, 5)) > 0.5).astype(np.float32)
    aus[0] = 0
    return FaceTensor(
        vertices=vertices,
        faces=faces.astype(np.int64),
        expression_names=names,
        au_names=[f"AU{k}" for k in range(5)],
        expression_aus=aus,
        identity_ids=[f"id-{i:03d}" for i in range(n_id)],
        source={"kind": "synthetic", "seed": seed},
    )


def synthetic_config(variance: float = 1.0, epochs: int = 30, seed: int = 0) -> ModelConfig:
    """A model config for a synthetic tensor: full rank by default, small fast flows."""
    return ModelConfig(
        source=ModelSource.tensor,
        tensor_path="synthetic.npz",
        variance_id=variance,
        variance_ex=variance,
        flow=FlowConfig(hidden=16, epochs=epochs, batch_size=16),
        seed=seed,
        report_held_out=0,
    )


def synthetic_model(tensor: FaceTensor | None = None, variance: float = 1.0, epochs: int = 30) -> FaceModel:
    """A `FaceModel` built from `tensor` (default `synthetic_tensor()`) by the real recipe."""
    return model_from_tensor(tensor or synthetic_tensor(), synthetic_config(variance, epochs))
