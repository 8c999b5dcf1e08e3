"""LiP-Flow's keypoint encoder on our own data: 2D landmarks + camera -> a prior over the flow latents.

LiP-Flow (Aksan et al. 2022, Sec. 3.2-3.3, supp. F.2) drives a face model from sparse 2D keypoints with a
KPT-encoder that predicts a Gaussian N(mu, sigma) in the latent space of a normalizing flow; at inference
time the latent code starts at mu and is optimised under the data term plus the likelihood of that
conditional prior. Our flows already map the bilinear codes w to z ~ N(0, I), so the encoder here is a
small MLP from (landmarks in normalised camera coordinates, visibility, camera pose) to (z_id, z_ex) means,
trained on the squared z error plus the squared vertex error of the decoded prediction (LiP-Flow's
reconstruction signal, through the frozen flows and bilinear decoder; `train_keypoint_encoder`). sigma is
the per-dimension RMS residual on the dataset's identity-disjoint `val` split (homoscedastic: with a few
thousand samples a per-sample variance head overfits, and the fit needs only the scale).

The conditional prior replaces the flow's standard-normal base by N(mu, sigma^2):
-log p(w | keypoints) = -log N(f(w); mu, sigma) - log|det df/dw| = nll_w(w) + 0.5 |(z - mu) / sigma|^2
- 0.5 |z|^2 + sum(log sigma) + const, z = f(w) (`conditional_fit_model`).

Training reads generated shards through `synth.records.load_webdataset` and a torch DataLoader: one pass
materialises the three small members (lmk2d, latents, meta camera) of every sample, because re-reading
every shard's depth/normal/mask bytes for each of hundreds of epochs would cost 1000x the training itself.
Everything random comes from explicit torch.Generators (weight init, batch order), so training on CPU is
deterministic. Saved as `keypoint_encoder.safetensors` + `keypoint_encoder.json` (atomic writes).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from synth.atomic import atomic_write_bytes, atomic_write_text
from synth.errors import SynthError
from synth.fitting.fitting import FitModel, FitOptions, LatentFactor, LatentFit, Prior, fit_keypoints
from synth.render.camera import Cameras

log = logging.getLogger(__name__)

WEIGHTS_FILE = "keypoint_encoder.safetensors"
CONFIG_FILE = "keypoint_encoder.json"
FORMAT_VERSION = 1
MEMBERS = ("lmk2d", "latents", "meta")  # what training and evaluation read of each sample


@dataclass
class EncoderOptions:
    """Architecture and training schedule of the keypoint encoder (`synth fit task=train_keypoint_encoder`).

    hidden / layers: width and number of hidden layers of the MLP (LiP-Flow's KPT-encoder: 512-wide residual
    blocks on 136 keypoints; 23 landmarks need less). epochs, batch_size, lr, weight_decay: AdamW schedule
    (cosine decay to 0; the epoch of lowest val loss is kept). vertex_weight: weight of the decoded mesh's
    squared error (mm^2) against the z error in the loss (0: z only). seed: weight init and batch order.
    """

    hidden: int = 256
    layers: int = 3
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    vertex_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key, low, high in (
            ("hidden", 4, 8192),
            ("layers", 1, 16),
            ("epochs", 1, 100_000),
            ("batch_size", 1, 65_536),
        ):
            if not low <= getattr(self, key) <= high:
                raise ValueError(f"encoder.{key}={getattr(self, key)} must be in [{low}, {high}]")
        if not 0.0 < self.lr <= 1.0:
            raise ValueError(f"encoder.lr={self.lr} must be in (0, 1]")
        for key in ("weight_decay", "vertex_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"encoder.{key}={getattr(self, key)} must be >= 0")
        if self.seed < 0:
            raise ValueError(f"encoder.seed={self.seed} must be >= 0")


def keypoint_features(lmk2d: Tensor, cameras: Cameras) -> Tensor:
    """The encoder's input: (B, L, 3) landmarks (x_px, y_px, visible) and their cameras -> (B, 3L + 12).

    Per landmark its normalised camera coordinates K^-1 (x, y, 1) (so the image size and focal length drop
    out) and its visibility flag, then the world-to-camera rotation R (9) and translation t (3, metres).
    """
    k = cameras.K.to(lmk2d.device, torch.float64)
    xy = lmk2d[..., :2].double()
    nx = (xy[..., 0] - k[:, None, 0, 2]) / k[:, None, 0, 0]  # (B, L)
    ny = (xy[..., 1] - k[:, None, 1, 2]) / k[:, None, 1, 1]
    pose = torch.cat([cameras.R.to(lmk2d.device).flatten(1), cameras.t.to(lmk2d.device)], -1)  # (B, 12)
    return torch.cat([nx, ny, lmk2d[..., 2].double(), pose.double()], -1).float()


def cameras_from_meta(metas: list[dict[str, Any]]) -> Cameras:
    """The batch's cameras from its `meta.json` dicts (same image size for all)."""
    cams = [m["camera"] for m in metas]
    sizes = {(c["width"], c["height"]) for c in cams}
    if len(sizes) != 1:
        raise SynthError(f"samples of one batch have different image sizes {sorted(sizes)}")
    width, height = sizes.pop()
    return Cameras(
        torch.tensor([c["K"] for c in cams], dtype=torch.float64),
        torch.tensor([c["R"] for c in cams], dtype=torch.float64),
        torch.tensor([c["t"] for c in cams], dtype=torch.float64),
        width,
        height,
    )


class KeypointEncoder(nn.Module):
    """MLP: features (B, F) of `keypoint_features` -> (z_id (B, D_id), z_ex (B, D_ex)) flow-latent means.

    Buffers: feature_mean / feature_std (F,) standardise the input (training-set statistics); sigma_id
    (D_id,), sigma_ex (D_ex,) the prior's standard deviations (val-split RMS residuals).
    """

    def __init__(self, n_features: int, dim_id: int, dim_ex: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.n_features, self.dim_id, self.dim_ex = n_features, dim_id, dim_ex
        self.hidden, self.layers = hidden, layers
        dims = [n_features, *([hidden] * layers)]
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], dim_id + dim_ex))
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("sigma_id", torch.ones(dim_id))
        self.register_buffer("sigma_ex", torch.ones(dim_ex))

    def architecture(self) -> dict[str, int]:
        return {
            "n_features": self.n_features,
            "dim_id": self.dim_id,
            "dim_ex": self.dim_ex,
            "hidden": self.hidden,
            "layers": self.layers,
        }

    def reset_parameters(self, generator: torch.Generator) -> None:
        """nn.Linear's default init (Kaiming-uniform weights, uniform biases) drawn from `generator`."""
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mlp((features - self.feature_mean) / self.feature_std)  # (B, D_id + D_ex)
        return out[:, : self.dim_id], out[:, self.dim_id :]

    @torch.no_grad()
    def predict(self, lmk2d: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """lmk2d (B, L, 3) pixels + flags, B cameras -> (z_id, z_ex) means."""
        return self(keypoint_features(lmk2d, cameras).to(self.feature_mean.device))


@dataclass
class KeypointData:
    """Samples of a dataset as tensors: lmk2d (S, L, 3), z_id (S, D_id), z_ex (S, D_ex), w_id, w_ex,
    cameras (S), mesh (S, N, 3) or None, split / model_id per sample."""

    lmk2d: Tensor
    z_id: Tensor
    z_ex: Tensor
    w_id: Tensor
    w_ex: Tensor
    cameras: Cameras
    split: list[str]
    model_ids: list[str]
    mesh: Tensor | None = None

    def __len__(self) -> int:
        return self.lmk2d.shape[0]

    def subset(self, rows: Tensor | slice) -> KeypointData:
        c = self.cameras
        idx = torch.arange(len(self))[rows]
        return KeypointData(
            self.lmk2d[idx],
            self.z_id[idx],
            self.z_ex[idx],
            self.w_id[idx],
            self.w_ex[idx],
            Cameras(c.K[idx], c.R[idx], c.t[idx], c.width, c.height),
            [self.split[i] for i in idx.tolist()],
            [self.model_ids[i] for i in idx.tolist()],
            None if self.mesh is None else self.mesh[idx],
        )


def read_keypoint_data(data_dir: str | Path, limit: int | None = None, mesh: bool = False) -> KeypointData:
    """Read every sample (or the first `limit` in index order) of a generated dataset through
    `load_webdataset` + DataLoader: landmarks, latents, cameras (and meshes when `mesh`)."""
    from torch.utils.data import DataLoader

    from synth.records import collate, load_webdataset

    root = Path(data_dir)
    if not root.is_dir():
        raise SynthError(f"data: {root} is not a directory; give a dataset made by `synth generate`")
    keys = [*MEMBERS, "mesh"] if mesh else list(MEMBERS)
    loader = DataLoader(load_webdataset(root, keys=keys), batch_size=256, collate_fn=collate)
    parts: list[dict[str, Any]] = []
    count = 0
    for batch in loader:
        if "lmk2d" not in batch:
            raise SynthError(f"data: {root} has no lmk2d member; generate it with landmarks (the default)")
        parts.append(batch)
        count += len(batch["meta"])
        if limit is not None and count >= limit:
            break
    if not parts:
        raise SynthError(f"data: {root} holds no samples")
    metas = [m for p in parts for m in p["meta"]]
    order = torch.as_tensor(np.argsort([m["index"] for m in metas], kind="stable"))  # shard order -> index
    cat = {
        name: torch.cat([p["latents"][name] for p in parts]).float()[order] for name in parts[0]["latents"]
    }
    metas = [metas[i] for i in order.tolist()]
    data = KeypointData(
        torch.cat([p["lmk2d"] for p in parts]).float()[order],
        cat["z_id"],
        cat["z_ex"],
        cat["w_id"],
        cat["w_ex"],
        cameras_from_meta(metas),
        [m["split"] for m in metas],
        [m["model_id"] for m in metas],
        torch.cat([p["mesh"] for p in parts]).float()[order] if mesh else None,
    )
    return data if limit is None else data.subset(slice(0, limit))


@dataclass
class TrainResult:
    """A trained encoder and its record: per-epoch mean training loss, val loss, the mean-latent val loss."""

    encoder: KeypointEncoder
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_loss_mean_latent: float = float("nan")
    best_epoch: int = -1
    model_id: str = ""
    samples: dict[str, int] = field(default_factory=dict)


def latent_mse(encoder: KeypointEncoder, data: KeypointData) -> float:
    """Mean squared error over samples and dimensions of the predicted (z_id, z_ex)."""
    z_id, z_ex = encoder.predict(data.lmk2d, data.cameras)
    return float(torch.cat([z_id - data.z_id, z_ex - data.z_ex], -1).square().mean())


def train_keypoint_encoder(
    data: KeypointData, model_id: str, options: EncoderOptions, model: FitModel | None = None
) -> TrainResult:
    """Train an encoder on the `train` split of `data` (all samples of model `model_id`).

    Loss: mean squared error of (z_id, z_ex), plus, with `model` and `options.vertex_weight` > 0, that
    weight times the mean squared vertex error (mm^2) of the decoded prediction (LiP-Flow's reconstruction
    signal through the frozen flows and decoder): z is whitened, so a z-only loss spends the net's capacity
    equally on directions the 23 landmarks cannot see and on those that move the face most.
    The `val` split (identity-disjoint) gives the per-epoch val loss, picks the kept epoch (the lowest val
    loss) and the prior's sigma; without a `val` split the training samples do. Deterministic for a given
    `options.seed` on CPU.
    """
    from torch.utils.data import DataLoader, TensorDataset

    wrong = sorted(set(data.model_ids) - {model_id})
    if wrong:
        raise SynthError(
            f"data: samples were made by face model(s) {wrong}, not {model_id}; "
            "train the encoder for the model that made the dataset (model.path=...)"
        )
    is_train = torch.tensor([s == "train" for s in data.split])
    if int(is_train.sum()) < 2:
        raise SynthError(f"data: {int(is_train.sum())} train-split samples; generate more (num_samples)")
    train = data.subset(is_train.nonzero()[:, 0])
    is_val = torch.tensor([s == "val" for s in data.split])
    val = data.subset(is_val.nonzero()[:, 0]) if bool(is_val.any()) else train
    use_verts = model is not None and options.vertex_weight > 0

    def tensors(d: KeypointData) -> list[Tensor]:
        out = [keypoint_features(d.lmk2d, d.cameras), torch.cat([d.z_id, d.z_ex], -1)]  # (S, F), (S, D)
        if use_verts:
            with torch.no_grad():
                out.append(model.decode(d.w_id, d.w_ex))  # (S, N, 3) metres
        return out

    def loss_fn(pred: Tensor, z: Tensor, verts: Tensor | None = None) -> Tensor:
        loss = (pred - z).square().mean()
        if verts is not None:
            d_id = train.z_id.shape[1]
            recon = model.decode(model.identity.to_w(pred[:, :d_id]), model.expression.to_w(pred[:, d_id:]))
            loss = loss + options.vertex_weight * (recon - verts).square().sum(-1).mean() * 1e6  # mm^2
        return loss

    train_t, val_t = tensors(train), tensors(val)
    feats = train_t[0]
    gen = torch.Generator().manual_seed(options.seed)
    encoder = KeypointEncoder(
        feats.shape[1], train.z_id.shape[1], train.z_ex.shape[1], options.hidden, options.layers
    )
    encoder.reset_parameters(gen)
    encoder.feature_mean.copy_(feats.mean(0))
    # Features constant in training up to round-off (R entries under a fixed camera roll) keep unit scale:
    # dividing by their ~1e-9 spread would turn round-off in new samples into huge inputs.
    std = feats.std(0)
    encoder.feature_std.copy_(torch.where(std < 1e-4, torch.ones_like(std), std))
    loader = DataLoader(
        TensorDataset(*train_t),
        batch_size=options.batch_size,
        shuffle=True,
        generator=gen,
        drop_last=len(feats) > options.batch_size,
    )
    opt = torch.optim.AdamW(encoder.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.epochs * len(loader))
    result = TrainResult(encoder, model_id=model_id, samples={"train": len(train), "val": len(val)})
    with torch.no_grad():
        mean_latent = train_t[1].mean(0).expand_as(val_t[1])
        result.val_loss_mean_latent = float(loss_fn(mean_latent, *val_t[1:]))
    best: tuple[float, dict[str, Tensor]] = (float("inf"), {})
    for epoch in range(options.epochs):
        encoder.train()
        total, n = 0.0, 0
        for x, *y in loader:
            loss = loss_fn(torch.cat(encoder(x), -1), *y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        encoder.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(torch.cat(encoder(val_t[0]), -1), *val_t[1:]))
        result.train_loss.append(total / n)
        result.val_loss.append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, {k: v.clone() for k, v in encoder.state_dict().items()})
        if epoch % max(1, options.epochs // 10) == 0 or epoch == options.epochs - 1:
            log.info(
                "epoch %d: train %.4f, val %.4f (mean latent %.4f)",
                epoch,
                total / n,
                val_loss,
                result.val_loss_mean_latent,
            )
    encoder.load_state_dict(best[1])
    result.best_epoch = result.val_loss.index(best[0])
    val_feats, val_target = val_t[0], val_t[1]
    with torch.no_grad():
        rms = (torch.cat(encoder(val_feats), -1) - val_target).square().mean(0).sqrt().clamp_min(1e-3)
        encoder.sigma_id.copy_(rms[: encoder.dim_id])
        encoder.sigma_ex.copy_(rms[encoder.dim_id :])
    return result


# ---------------------------------------------------------------------------------------------- files


def save_keypoint_encoder(out_dir: str | Path, result: TrainResult, options: EncoderOptions) -> Path:
    """Write `keypoint_encoder.safetensors` (weights and buffers) and `keypoint_encoder.json` (format,
    architecture, model id, options, losses) into out_dir, atomically. Returns out_dir."""
    out = Path(out_dir)
    state = {k: v.detach().contiguous() for k, v in result.encoder.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save_safetensors_bytes(state))
    record = {
        "format_version": FORMAT_VERSION,
        "model_id": result.model_id,
        "architecture": result.encoder.architecture(),
        "options": dataclasses.asdict(options),
        "samples": result.samples,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "val_loss_mean_latent": result.val_loss_mean_latent,
        "best_epoch": result.best_epoch,
    }
    atomic_write_text(out / CONFIG_FILE, json.dumps(record, indent=1) + "\n")
    return out


def load_keypoint_encoder(path: str | Path, model_id: str | None = None) -> KeypointEncoder:
    """Load an encoder written by `save_keypoint_encoder` (a directory, or its .json / .safetensors).

    Refuses (SynthError) missing or malformed files, a format version other than ours, weights that do not
    match the architecture, and (when `model_id` is given) an encoder trained for another face model.
    """
    root = Path(path)
    root = root.parent if root.suffix in (".json", ".safetensors") else root
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise SynthError(
                f"keypoint_encoder: {p} is missing; train one with "
                "`synth fit task=train_keypoint_encoder data=DIR out=DIR`"
            )
    try:
        record = json.loads(config_path.read_text())
        version, arch = record["format_version"], record["architecture"]
        trained_for = record["model_id"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SynthError(f"keypoint_encoder: {config_path} is not a keypoint encoder config ({err})") from err
    if version != FORMAT_VERSION:
        raise SynthError(
            f"keypoint_encoder: {config_path} has format_version {version}, this synth reads "
            f"{FORMAT_VERSION}; retrain the encoder"
        )
    if model_id is not None and trained_for != model_id:
        raise SynthError(
            f"keypoint_encoder: {root} was trained for face model {trained_for}, not {model_id}; "
            "train one on a dataset of this model"
        )
    try:
        encoder = KeypointEncoder(
            **{k: int(arch[k]) for k in ("n_features", "dim_id", "dim_ex", "hidden", "layers")}
        )
        encoder.load_state_dict(load_safetensors_bytes(weights_path.read_bytes()), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise SynthError(f"keypoint_encoder: {weights_path} does not match {config_path} ({err})") from err
    for name, value in encoder.state_dict().items():
        if not torch.isfinite(value).all():
            raise SynthError(f"keypoint_encoder: {weights_path} has non-finite values in {name}")
    return encoder.eval()


# ---------------------------------------------------------------------------------------------- fitting


def conditional_fit_model(
    model: FitModel, z_id: Tensor, z_ex: Tensor, sigma_id: Tensor, sigma_ex: Tensor
) -> FitModel:
    """`model` with the flows' N(0, I) base replaced by the encoder's N(mu, sigma^2) per sample (LiP-Flow's
    inference-time prior). z_*: (B, D) means, sigma_*: (D,). Fits with this model must use the flow prior
    and keep the batch (rows of the fitted batch = rows of z_*)."""

    def factor(f: LatentFactor, mu: Tensor, sigma: Tensor) -> LatentFactor:
        def nll_w(w: Tensor) -> Tensor:
            z = f.to_z(w)  # (B, D)
            s = sigma.to(z)
            shift = 0.5 * (((z - mu.to(z)) / s).square() - z.square()).sum(-1) + s.log().sum()
            return f.nll_w(w) + shift

        return dataclasses.replace(f, nll_w=nll_w)

    return dataclasses.replace(
        model,
        identity=factor(model.identity, z_id, sigma_id),
        expression=factor(model.expression, z_ex, sigma_ex),
    )


def fit_keypoints_lipflow(
    model: FitModel,
    encoder: KeypointEncoder,
    lmk2d: Tensor,
    cameras: Cameras,
    landmarks: Callable[[Tensor], Tensor],
    options: FitOptions,
    conditional: bool = True,
) -> LatentFit:
    """LiP-Flow inference: start at the encoder's prediction and fit the keypoints under the flow prior,
    conditioned on the prediction (`conditional`; else the unconditional flow prior from the same start).

    lmk2d: (B, L, 3) pixels + visibility (all landmarks enter the data term, as in `fit_keypoints`);
    landmarks: vertices (B, N, 3) -> (B, L, 3).
    """
    mu_id, mu_ex = encoder.predict(lmk2d, cameras)
    fm = (
        conditional_fit_model(model, mu_id, mu_ex, encoder.sigma_id, encoder.sigma_ex)
        if conditional
        else model
    )
    with torch.no_grad():
        start = (model.identity.to_w(mu_id), model.expression.to_w(mu_ex))
    opts = dataclasses.replace(options, prior=Prior.flow)
    return fit_keypoints(fm, lmk2d[..., :2].contiguous(), cameras, landmarks, opts, start=start)
