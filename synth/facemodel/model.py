"""`FaceModel`: the built face model (bilinear core + two RealNVP flows), its sampling and its files.

    z_id, z_ex ~ N(0, I)  --flows^-1-->  w_id, w_ex  --bilinear-->  x = C x2 w_id x3 w_ex + mu  (N, 3)

A model directory holds `model.json` (dimensions, names, versions, build recipe, sha256 of every array
file) and safetensors files only: `bilinear.safetensors` (core, mean, faces, training coefficients, AU
table, mode energies), `flow_id.safetensors`, `flow_ex.safetensors`, and for models of labelled sources
`identity_conditional.safetensors` (the identity distribution given age and sex, `IdentityConditional`).
Never pickles.

Sampling is deterministic and batch-size independent: sample i of run seed s draws its latents from its
own generator `synth.seeding.torch_generator(s, i, Stage.LATENT)` (z_id first, then z_ex), and the flows
and the decoder run in fixed-size blocks so a sample's bytes do not depend on its batch.
"""

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from scipy.stats import chi2
from torch import Tensor

import synth
from synth.atomic import atomic_write_bytes, atomic_write_text
from synth.errors import SynthError
from synth.facemodel import bilinear
from synth.facemodel.conditional import IdentityConditional
from synth.facemodel.config import MODEL_FORMAT_VERSION
from synth.facemodel.flows import LatentFlow
from synth.facemodel.threads import pinned_kernels
from synth.facemodel.topology import triangles_hash
from synth.seeding import Stage, torch_generator

log = logging.getLogger(__name__)

FORMAT_NAME = "synth-face-model"
BILINEAR_FILE = "bilinear.safetensors"
FLOW_FILES = {"id": "flow_id.safetensors", "ex": "flow_ex.safetensors"}
CONDITIONAL_FILE = "identity_conditional.safetensors"  # optional
# Weight formats that can carry pickles (or are not ours); a model directory holding one is refused.
_FOREIGN_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy", ".npz", ".h5", ".joblib"}
_INTERPOLATION_MODES = ("expression", "identity", "joint")
# Sampled coefficients beyond this multiple of the largest training code's norm are reported (from_latent).
TAIL_FACTOR = 10.0


class FaceModel:
    """A disentangled identity x expression face model (BabyFlow eq. 9 + two flows).

    core: (3N, I, E) float32 metres per unit coefficient; mean: (3N,) metres; faces: (F, 3) int64;
    identity_coefficients: (n_id, I) w_id of the training identities; expression_coefficients: (n_ex, E)
    w_ex of the catalogue expressions (row k is `expression_names[k]`); expression_aus: (n_ex, A) nominal
    AU intensities in [0, 1]; energy_id / energy_ex: squared singular values of the full HOSVD modes;
    flow_id / flow_ex: the flows; info: JSON-able build provenance (recipe, kept variance, training);
    identity_conditional: the identity distribution given age and sex (None for a source without them).
    """

    def __init__(
        self,
        core: Tensor,
        mean: Tensor,
        faces: Tensor,
        identity_coefficients: Tensor,
        expression_coefficients: Tensor,
        expression_aus: Tensor,
        energy_id: Tensor,
        energy_ex: Tensor,
        flow_id: LatentFlow,
        flow_ex: LatentFlow,
        expression_names: Sequence[str],
        au_names: Sequence[str],
        identity_ids: Sequence[str],
        info: dict[str, Any],
        identity_conditional: IdentityConditional | None = None,
    ) -> None:
        self.core = core
        self.mean = mean
        self.faces = faces
        self.identity_coefficients = identity_coefficients
        self.expression_coefficients = expression_coefficients
        self.expression_aus = expression_aus
        self.energy_id = energy_id
        self.energy_ex = energy_ex
        # float64 flows (from float32 weights, exactly): inversion to ~1e-7 instead of 1.6e-5 in float32
        self.flow_id = flow_id.double().eval().requires_grad_(False)
        self.flow_ex = flow_ex.double().eval().requires_grad_(False)
        self.expression_names = list(expression_names)
        self.au_names = list(au_names)
        self.identity_ids = list(identity_ids)
        self.info = info
        self.identity_conditional = identity_conditional
        self._check()
        self._model_id: str | None = None
        self._packed: Tensor | None = None  # `bilinear.pack_core(core)`, made on the first decode off the
        # pinned code path (where the decoder runs MKL's packed GEMM)
        self._packed_for: Tensor | None = None

    def _check(self) -> None:
        n3, r_id, r_ex = self.core.shape
        expected = {
            "mean": (self.mean, (n3,)),
            "identity_coefficients": (self.identity_coefficients, (len(self.identity_ids), r_id)),
            "expression_coefficients": (self.expression_coefficients, (len(self.expression_names), r_ex)),
            "expression_aus": (self.expression_aus, (len(self.expression_names), len(self.au_names))),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise SynthError(f"face model: {name} has shape {tuple(tensor.shape)}, expected {shape}")
        if n3 % 3 or self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise SynthError(f"face model: core rows {n3} / faces {tuple(self.faces.shape)} are not a mesh")
        if self.flow_id.dim_w != r_id or self.flow_ex.dim_w != r_ex:
            raise SynthError(
                f"face model: flows take ({self.flow_id.dim_w}, {self.flow_ex.dim_w}) coefficients, "
                f"the core has ({r_id}, {r_ex})"
            )
        if "neutral" not in self.expression_names:
            raise SynthError("face model: no expression named 'neutral' in expression_names")
        cond = self.identity_conditional
        if cond is not None and cond.dim != self.flow_id.dim_z:
            raise SynthError(
                f"face model: identity conditional of dimension {cond.dim}, flow {self.flow_id.dim_z}"
            )

    # ----------------------------------------------------------------------------------- dimensions
    @property
    def n_vertices(self) -> int:
        return self.core.shape[0] // 3

    @property
    def rank_id(self) -> int:
        """I, the length of w_id."""
        return self.core.shape[1]

    @property
    def rank_ex(self) -> int:
        """E, the length of w_ex."""
        return self.core.shape[2]

    @property
    def dim_z_id(self) -> int:
        return self.flow_id.dim_z

    @property
    def dim_z_ex(self) -> int:
        return self.flow_ex.dim_z

    @property
    def device(self) -> torch.device:
        return self.core.device

    @property
    def mean_shape(self) -> Tensor:
        """(N, 3) the mean of the training meshes, metres."""
        return self.mean.view(-1, 3)

    @property
    def neutral_w_ex(self) -> Tensor:
        """(E,) w_ex of the catalogue's neutral expression: set an identity's expression to neutral."""
        return self.expression_w_ex("neutral")

    def expression_w_ex(self, name: str) -> Tensor:
        """(E,) w_ex of a catalogue expression by name."""
        try:
            return self.expression_coefficients[self.expression_names.index(name)]
        except ValueError:
            raise SynthError(
                f"unknown expression {name!r}; the model has: {', '.join(self.expression_names)}"
            ) from None

    def to(self, device: str | torch.device) -> "FaceModel":
        """Move every buffer to `device` (in place) and return self."""
        for name in (
            "core", "mean", "faces", "identity_coefficients", "expression_coefficients", "expression_aus",
            "energy_id", "energy_ex",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name).to(device))
        self.flow_id.to(device)
        self.flow_ex.to(device)
        return self

    # -------------------------------------------------------------------------------------- maths
    def decode(self, w_id: Tensor, w_ex: Tensor) -> Tensor:
        """w_id (B, I), w_ex (B, E) -> vertices (B, N, 3) metres (eq. 9)."""
        if not pinned_kernels() and self._packed_for is not self.core:  # once per core (again after `to`)
            self._packed, self._packed_for = bilinear.pack_core(self.core), self.core
        w_id, w_ex = w_id.to(self.core), w_ex.to(self.core)
        return bilinear.bilinear_decode(self.core, self.mean, w_id, w_ex, True, self._packed)

    def from_latent(self, z_id: Tensor, z_ex: Tensor) -> tuple[Tensor, Tensor]:
        """z_id (B, D_id), z_ex (B, D_ex) -> w_id (B, I), w_ex (B, E) through the inverse flows.

        Logs a warning when a row lands beyond `TAIL_FACTOR` x the largest training code: a flow trained on
        a few hundred codes can send far Gaussian tails (temperature > 1) to absurd coefficients.
        """
        with torch.no_grad():
            w_id = self.flow_id.to_w(z_id.to(self.core), block=True)
            w_ex = self.flow_ex.to_w(z_ex.to(self.core), block=True)
        for name, w, train in (
            ("identity", w_id, self.identity_coefficients),
            ("expression", w_ex, self.expression_coefficients),
        ):
            limit = TAIL_FACTOR * float(train.norm(dim=-1).max())
            far = int((w.norm(dim=-1) > limit).sum())
            if far:
                log.warning(
                    "%d of %d %s codes lie beyond %gx the largest training code (the flow's tail, see "
                    "docs/face-model.md, Sampling); use temperature <= 1 or truncation",
                    far, len(w), name, TAIL_FACTOR,
                )  # fmt: skip
        return w_id, w_ex

    def conditioned_z_id(self, age_months: np.ndarray, female: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Identity latents z_id (n, D_id) float64 of identities of the given ages (n,) months and sexes
        female (n,) bool, from standard normal draws e (n, D_id): `IdentityConditional.sample_u`, then the
        flow. Raises SynthError for a model without an identity conditional."""
        if self.identity_conditional is None:
            raise SynthError(
                "this face model has no age / sex conditional (its source has no age and sex labels, or it "
                "was built by an older synth): rebuild it with synth build-model"
            )
        u = torch.from_numpy(self.identity_conditional.sample_u(age_months, female, e)).to(self.device)
        return self.flow_id.u_to_z(u, block=True).cpu().numpy()

    def to_latent(self, w_id: Tensor, w_ex: Tensor) -> tuple[Tensor, Tensor]:
        """w_id (B, I), w_ex (B, E) -> z_id (B, D_id), z_ex (B, D_ex) through the flows."""
        with torch.no_grad():
            z_id = self.flow_id.to_z(w_id.to(self.core), block=True)
            return z_id, self.flow_ex.to_z(w_ex.to(self.core), block=True)

    def log_prob(self, w_id: Tensor, w_ex: Tensor) -> tuple[Tensor, Tensor]:
        """Flow log densities (log p(w_id) (B,), log p(w_ex) (B,)) of the coefficients' PCA coordinates;
        differentiable (for fitting under the flow prior). The joint is their sum (independent factors)."""
        return self.flow_id.log_prob(w_id.to(self.core)), self.flow_ex.log_prob(w_ex.to(self.core))

    def encode(self, vertices: Tensor, iterations: int = 50) -> tuple[Tensor, Tensor]:
        """Least-squares coefficients of meshes (B, N, 3) in the model's topology and frame (metres).

        Alternating least squares from the nearest catalogue expression (see `bilinear.encode`); returns
        w_id (B, I), w_ex (B, E). Meshes must already be rigidly aligned to the model frame.
        """
        if vertices.ndim != 3 or tuple(vertices.shape[1:]) != (self.n_vertices, 3):
            raise SynthError(
                f"encode: meshes must be (B, {self.n_vertices}, 3) in the model topology, "
                f"got {tuple(vertices.shape)}"
            )
        chunks = [
            bilinear.encode(
                self.core,
                self.mean,
                chunk.to(self.core),
                self.identity_coefficients,
                self.expression_coefficients,
                iterations,
            )
            for chunk in vertices.split(16)
        ]
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])

    # ----------------------------------------------------------------------------------- sampling
    def sample(
        self, n: int, seed: int, temperature: float = 1.0, truncation: float | None = None
    ) -> dict[str, Tensor]:
        """Samples 0..n-1 of run `seed`: dict of z_id (n, D_id), z_ex (n, D_ex), w_id (n, I), w_ex (n, E),
        vertices (n, N, 3) metres, on the model's device.

        temperature scales the Gaussian latents; truncation: None or a confidence rho in (0, 1): latents
        whose squared Mahalanobis norm exceeds the chi-square critical value beta^2 = chi2_D(rho) are
        projected onto that hyperellipsoid (eq. 24), per factor.
        """
        return self.sample_indices(range(n), seed, temperature, truncation)

    def sample_indices(
        self, indices: Iterable[int], seed: int, temperature: float = 1.0, truncation: float | None = None
    ) -> dict[str, Tensor]:
        """Samples `indices` of run `seed` (see `sample`); sample i is the same whatever else is drawn."""
        indices = [int(i) for i in indices]
        if not 0.0 < temperature <= 10.0:
            raise SynthError(f"temperature={temperature} must be in (0, 10]")
        d_id, d_ex = self.dim_z_id, self.dim_z_ex
        z_id, z_ex = torch.empty(len(indices), d_id), torch.empty(len(indices), d_ex)
        for row, index in enumerate(indices):
            gen = torch_generator(seed, index, Stage.LATENT)
            z_id[row] = torch.randn(d_id, generator=gen)
            z_ex[row] = torch.randn(d_ex, generator=gen)
        z_id, z_ex = z_id * temperature, z_ex * temperature
        if truncation is not None:
            z_id, z_ex = truncate(z_id, truncation), truncate(z_ex, truncation)
        return self.latents_to_sample(z_id, z_ex)

    def latents_to_sample(self, z_id: Tensor, z_ex: Tensor) -> dict[str, Tensor]:
        """z_id (B, D_id), z_ex (B, D_ex) -> the dict of `sample`."""
        z_id, z_ex = z_id.to(self.core), z_ex.to(self.core)
        w_id, w_ex = self.from_latent(z_id, z_ex)
        return {"z_id": z_id, "z_ex": z_ex, "w_id": w_id, "w_ex": w_ex, "vertices": self.decode(w_id, w_ex)}

    def interpolate(
        self, start: dict[str, Tensor], end: dict[str, Tensor], nu: Sequence[float] | Tensor, mode: str | Enum
    ) -> dict[str, Tensor]:
        """Linear interpolation in latent space (eq. 23) between two samples, then decoded.

        start, end: dicts with z_id (D_id,) and z_ex (D_ex,) (or (1, D)), e.g. rows of `sample`;
        nu: S interpolation weights in [0, 1]; mode: "expression" (identity fixed to start's), "identity"
        (expression fixed to start's) or "joint". Returns the dict of `sample` with S rows.
        """
        mode = mode.value if isinstance(mode, Enum) else mode
        if mode not in _INTERPOLATION_MODES:
            raise SynthError(f"interpolation mode {mode!r} must be one of {', '.join(_INTERPOLATION_MODES)}")
        nu_t = torch.as_tensor(nu, dtype=torch.float32, device=self.device).reshape(-1, 1)  # (S, 1)
        ends = {}
        for key in ("z_id", "z_ex"):
            a = start[key].to(self.core).reshape(1, -1)
            b = end[key].to(self.core).reshape(1, -1)
            fixed = (mode == "expression" and key == "z_id") or (mode == "identity" and key == "z_ex")
            ends[key] = a.expand(len(nu_t), -1) if fixed else (1 - nu_t) * a + nu_t * b  # (S, D)
        return self.latents_to_sample(ends["z_id"], ends["z_ex"])

    # --------------------------------------------------------------------------------- identity
    def arrays(self) -> dict[str, dict[str, Tensor]]:
        """Every array of the model by file: {"bilinear.safetensors": {...}, "flow_id...": {...}, ...}."""
        return {
            BILINEAR_FILE: {
                "core": self.core,
                "mean": self.mean,
                "faces": self.faces,
                "identity_coefficients": self.identity_coefficients,
                "expression_coefficients": self.expression_coefficients,
                "expression_aus": self.expression_aus,
                "energy_id": self.energy_id,
                "energy_ex": self.energy_ex,
            },
            FLOW_FILES["id"]: _float32_state(self.flow_id),
            FLOW_FILES["ex"]: _float32_state(self.flow_ex),
        } | (
            {}
            if self.identity_conditional is None
            else {
                CONDITIONAL_FILE: {
                    k: torch.from_numpy(v) for k, v in self.identity_conditional.arrays().items()
                }
            }
        )

    @property
    def model_id(self) -> str:
        """16 hex digits of a sha256 over every array (name, dtype, shape, bytes) and the metadata (build
        recipe included, build timings excluded)."""
        if self._model_id is None:
            h = hashlib.sha256()
            for file, tensors in sorted(self.arrays().items()):
                for name, t in sorted(tensors.items()):
                    t = t.detach().cpu().contiguous()
                    h.update(f"{file}/{name}:{t.dtype}:{tuple(t.shape)}".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            meta = self._metadata_core()
            # build timings vary from run to run; they describe the build, not the model
            meta["info"] = {k: v for k, v in meta["info"].items() if k != "timings_s"}
            h.update(json.dumps(meta, sort_keys=True).encode())
            self._model_id = h.hexdigest()[:16]
        return self._model_id

    @property
    def topology_hash(self) -> str:
        """16 hex digits of a sha256 of the vertex count and the triangles: equal for equal topologies."""
        return triangles_hash(self.faces.detach().cpu().numpy(), self.n_vertices)

    def _metadata_core(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": MODEL_FORMAT_VERSION,
            "n_vertices": self.n_vertices,
            "n_faces": int(self.faces.shape[0]),
            "rank_id": self.rank_id,
            "rank_ex": self.rank_ex,
            "dim_z_id": self.dim_z_id,
            "dim_z_ex": self.dim_z_ex,
            "flows": {"id": self.flow_id.architecture(), "ex": self.flow_ex.architecture()},
            "expression_names": self.expression_names,
            "au_names": self.au_names,
            "identity_ids": self.identity_ids,
            "info": self.info,
        }

    # ------------------------------------------------------------------------------------- files
    def save(self, directory: str | Path) -> Path:
        """Write `model.json` + safetensors files into `directory` (each file atomically; model.json last,
        so a directory with a model.json is complete). Returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        digests = {}
        for file, tensors in self.arrays().items():
            data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            atomic_write_bytes(directory / file, data)
            digests[file] = hashlib.sha256(data).hexdigest()
        meta = {
            **self._metadata_core(),
            "model_id": self.model_id,
            "topology_hash": self.topology_hash,
            "synth_version": synth.__version__,
            "torch_version": torch.__version__,
            "files": digests,
        }
        atomic_write_text(directory / "model.json", json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "FaceModel":
        """Load a model directory written by `save`; refuses missing, altered, foreign or mismatched files."""
        directory = Path(directory)
        meta = _read_meta(directory)
        foreign = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in _FOREIGN_SUFFIXES)
        if foreign:
            raise SynthError(
                f"model directory {directory} holds non-safetensors weight files {foreign}; a synth model "
                "is model.json + *.safetensors only (remove them or rebuild with synth build-model)"
            )
        files = meta.get("files", {})
        expected = {BILINEAR_FILE, *FLOW_FILES.values()}
        if set(files) - {CONDITIONAL_FILE} != expected:
            raise SynthError(
                f"{directory}/model.json lists files {sorted(files)}, expected {sorted(expected)} "
                f"(and optionally {CONDITIONAL_FILE})"
            )
        arrays: dict[str, dict[str, Tensor]] = {}
        for file, digest in files.items():
            path = directory / file
            if not path.is_file():
                raise SynthError(f"model file {path} is missing; rebuild the model with synth build-model")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise SynthError(
                    f"model file {path} does not match its sha256 in model.json (altered or truncated); "
                    "rebuild the model"
                )
            try:
                arrays[file] = safetensors.torch.load(data)
            except safetensors.SafetensorError as err:
                raise SynthError(f"model file {path} is not a valid safetensors file: {err}") from None
        b = arrays[BILINEAR_FILE]
        flows = {}
        for key, file in FLOW_FILES.items():
            flow = LatentFlow.from_architecture(meta["flows"][key])
            try:
                flow.load_state_dict(arrays[file], strict=True)
            except RuntimeError as err:
                raise SynthError(
                    f"model file {directory / file} does not fit its architecture: {err}"
                ) from None
            flows[key] = flow
        try:
            model = cls(
                core=b["core"], mean=b["mean"], faces=b["faces"],
                identity_coefficients=b["identity_coefficients"],
                expression_coefficients=b["expression_coefficients"], expression_aus=b["expression_aus"],
                energy_id=b["energy_id"], energy_ex=b["energy_ex"], flow_id=flows["id"], flow_ex=flows["ex"],
                expression_names=meta["expression_names"], au_names=meta["au_names"],
                identity_ids=meta["identity_ids"], info=meta["info"],
                identity_conditional=_conditional(arrays.get(CONDITIONAL_FILE), directory),
            )  # fmt: skip
        except KeyError as err:
            raise SynthError(f"model directory {directory} lacks array or field {err}; rebuild it") from None
        dims = {k: getattr(model, k) for k in ("n_vertices", "rank_id", "rank_ex", "dim_z_id", "dim_z_ex")}
        wrong = {k: (meta.get(k), v) for k, v in dims.items() if meta.get(k) != v}
        if wrong:
            raise SynthError(
                f"{directory}/model.json dimensions disagree with its arrays (json, arrays): {wrong}"
            )
        if meta.get("model_id") != model.model_id:
            raise SynthError(
                f"{directory}/model.json model_id {meta.get('model_id')} does not match its content"
            )
        return model.to(device)


def _conditional(arrays: dict[str, Tensor] | None, directory: Path) -> IdentityConditional | None:
    if arrays is None:
        return None
    try:
        return IdentityConditional.from_arrays({k: v.numpy() for k, v in arrays.items()})
    except ValueError as err:
        raise SynthError(f"model file {directory / CONDITIONAL_FILE}: {err}; rebuild the model") from None


def _float32_state(flow: LatentFlow) -> dict[str, Tensor]:
    """A flow's state with float32 floating tensors: the weights are trained in float32 and only run in
    float64, so files and `model_id` stay those of the trained model."""
    return {k: v.float() if v.is_floating_point() else v for k, v in flow.state_dict().items()}


def truncate(z: Tensor, rho: float) -> Tensor:
    """Project z (B, D) ~ N(0, I) with |z|^2 > chi2_D(rho) onto that sphere (eq. 24); keep the rest."""
    if not 0.0 < rho < 1.0:
        raise SynthError(f"truncation={rho} must be a confidence in (0, 1)")
    beta = float(np.sqrt(chi2.ppf(rho, z.shape[-1])))
    norm = z.norm(dim=-1, keepdim=True)
    return torch.where(norm > beta, z * (beta / norm.clamp_min(1e-30)), z)


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / "model.json"
    if not directory.is_dir():
        raise SynthError(f"model directory {directory} does not exist; build one with synth build-model")
    if not path.is_file():
        raise SynthError(f"{directory} has no model.json; it is not a built model (see synth build-model)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SynthError(f"{path} is not valid JSON ({err}); rebuild the model") from None
    if meta.get("format") != FORMAT_NAME:
        raise SynthError(f"{path} is not a synth face model (format {meta.get('format')!r})")
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise SynthError(
            f"{path} has format_version {meta.get('format_version')}, "
            f"this synth reads {MODEL_FORMAT_VERSION}: "
            "rebuild it with synth build-model"
        )
    return meta
