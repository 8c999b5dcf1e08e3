"""The pipeline's stages as plain classes over batches, and the shard workers that chain them. No Ray here.

Data flow of one shard (global indices [start, stop)), in micro-batches of `runtime.batch_size`:

    GeometryStage   index -> sampler plan -> z, w (flows) -> mesh (bilinear) -> au, lmk3d, split   (facemodel)
    RenderStage     mesh, lmk3d -> camera, light, depth, normal, mask, shaded, canny, lmk2d         (render)
    DiffusionStage  depth, canny -> rgb, prompt, ethnicity, diffusion_seed  (when enabled)       (diffusion)
    ShardWriter     columns -> one sample dict per index -> shard tar + index part                 (records)

Batch-size independence. Batched float kernels (BLAS gemm vs gemv, blocked reductions) may round a row
differently depending on how many rows share the call. So `GeometryStage` always evaluates the model on
whole blocks of `LATENT_BLOCK` consecutive global indices aligned at multiples of `LATENT_BLOCK` and keeps
the rows asked for: every sample's latents, mesh and labels are computed in the same call shape with the
same neighbours whatever the micro-batch, shard boundaries, worker count or resume history. The render
stage is per-pixel and per-sample seeded, so it needs no such care.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
import torch

from synth.cpu import code_path
from synth.errors import SynthError
from synth.facemodel.threads import BLOCK
from synth.labels.au_labels import au_labeller, single_au_deltas
from synth.pipeline.config import GenerateConfig
from synth.pipeline.plan import ShardUnit
from synth.pipeline.samplers import LatentSpace, Sampler, assign_splits
from synth.sources.conditioning import model_readout

log = logging.getLogger(__name__)

LATENT_BLOCK = BLOCK
"""Global indices are evaluated by the face model in aligned blocks of this many (see module doc), the
model's largest GEMM call (`synth.facemodel.threads.BLOCK`). Shards whose size is a multiple of it compute
each block once; smaller shards (the default 64) each compute the block they share, a few ms of geometry
per shard."""

Batch = dict[str, Any]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to rebuild the stages on its own process or machine (picklable)."""

    cfg: GenerateConfig
    model_dir: str
    output_dir: str
    model_id: str
    code_path: str  # the run's `synth.cpu` code-path key; every worker must run the same


@dataclass
class ShardResult:
    """What a worker reports for one written shard."""

    shard_id: int
    num_samples: int
    bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    retries: int = 0  # transient storage errors retried while writing the shard


# ---------------------------------------------------------------------------------------- helpers


def check_code_path(expected: str) -> None:
    """Refuse to compute geometry on a floating-point code path other than the run's (`synth.cpu`): on a
    mixed cluster its shards would differ from the ones any other node writes for the same config."""
    here = code_path()
    if here["key"] != expected:
        raise SynthError(
            f"worker on {here['cpu']} ({here['isa']}) runs code path [{here['key']}], the run expects "
            f"[{expected}]; its geometry bytes would differ. Give every node the same torch and NumPy builds "
            "and an x86-64 CPU with AVX2 and FMA, and start workers through synth (see synth.cpu)"
        )


def latent_space(model: Any) -> LatentSpace:
    """The sampler's view of a `FaceModel`."""
    return LatentSpace(
        dim_id=int(model.dim_z_id),
        dim_ex=int(model.dim_z_ex),
        expression_names=tuple(model.expression_names),
        au_names=tuple(model.au_names),
        expression_aus=_numpy(model.expression_aus).astype(np.float32),
        readout=model_readout(model),
        conditional=model.identity_conditional,
        condition_z=model.conditioned_z_id if model.identity_conditional is not None else None,
    )


def sampler_for(cfg: GenerateConfig, model: Any) -> Sampler:
    """The run's sampler; raises SynthError when the config asks for what the model does not have."""
    return Sampler(cfg.sampler, cfg.seed, latent_space(model))


# What a dataset without landmarks says about them (run log, manifest, card).
NO_LANDMARKS = (
    "no landmarks: synth has no landmark definition for this model's topology, so lmk2d / lmk3d are empty "
    "(L = 0) and visible_landmarks is null"
)


@lru_cache(maxsize=4)
def _faces_landmarks(faces_bytes: bytes, shape: tuple[int, int], n_vertices: int) -> Any:
    from synth.facemodel.topology import connectivity_hash
    from synth.labels.landmarks import load_anny_head_landmarks

    faces = np.frombuffer(faces_bytes, dtype=np.int64).reshape(shape)
    definition = load_anny_head_landmarks()
    if definition.matches(faces, n_vertices):
        return definition
    if n_vertices == definition.n_vertices:
        raise SynthError(
            f"face model: it has the {n_vertices} vertices of the {definition.topology!r} topology but "
            f"another connectivity ({connectivity_hash(faces, n_vertices)}, the landmarks need "
            f"{definition.connectivity}), so its 23 landmarks cannot be attached; rebuild the model with "
            "this synth (`synth build-model`, or delete it from the cache) or set model.path to a model of "
            f"the {definition.topology!r} topology"
        )
    return None


def landmark_definition(model: Any) -> Any:
    """The landmark definition for the model's topology, or None when synth has none for it.

    Raises SynthError for a mesh with a known topology's vertex count whose landmarks cannot be attached
    (another connectivity): labels are never dropped silently.
    """
    faces = np.ascontiguousarray(_numpy(model.faces), dtype=np.int64)
    return _faces_landmarks(faces.tobytes(), faces.shape, int(model.n_vertices))


def _head_topology(faces: np.ndarray) -> Any:
    """The head-circumference surface of the model's topology, or None off the Anny head topology."""
    from synth.sources.anny_anthropometry import head_topology_for

    try:
        return head_topology_for(faces)
    except ValueError:
        return None


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _finite(x: Any) -> float | None:
    """A JSON number, or None for NaN (no such label)."""
    return float(x) if np.isfinite(x) else None


def _concat(parts: list[Batch]) -> Batch:
    """Concatenate micro-batch dicts column by column (arrays on axis 0, lists by extension)."""
    out: Batch = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = np.concatenate(values) if isinstance(values[0], np.ndarray) else list(chain(*values))
    return out


# ----------------------------------------------------------------------------------------- stages


class GeometryStage:
    """index (B,) -> latents, mesh, AU intensities, 3D landmarks, identity group, split, expression label.

    Adds: "z_id" (B, Zi), "z_ex" (B, Ze), "w_id" (B, I), "w_ex" (B, E) float32; "vertices" (B, N, 3)
    float32 metres; "au" (B, A) float32 in [0, 1]; "lmk3d" (B, L, 3) float32 metres (L = 0 without a
    landmark definition for the topology); "identity_id" (B,) int64; "step" (B,) int64; "split",
    "expression": lists of B str; "au_nnls" (B, A) float32 in [0, 1] the NNLS estimate from the mesh,
    "au_nnls_residual" (B,) float32 its relative residual, "au_source" B str ("generating": "au" is the
    AU vector that made the sample, "generating_clipped": that vector clipped to [0, 1], "nnls": "au" is
    the estimate), "log_prob_ex" (B,) float32 log p(w_ex) under the expression flow;
    "age_months" (B,) float32, "sex" B str or None, "label_estimated" (B,)
    bool (see `LatentPlan`); "head_circumference_mm" (B,) float32: measured on the identity's neutral mesh
    (NaN off the Anny head topology).
    """

    def __init__(self, model: Any, cfg: GenerateConfig):
        self.model = model
        self.cfg = cfg
        self.sampler = sampler_for(cfg, model)
        self.landmarks = landmark_definition(model)
        self.faces = np.asarray(_numpy(model.faces), dtype=np.int64)
        self.au_labeller = au_labeller(model)
        self.au_deltas = single_au_deltas(model)[0]  # (A, E) float64: one unit of each AU in w_ex
        self.head = _head_topology(self.faces)
        self._cache: dict[int, Batch] = {}

    def __call__(self, batch: Batch) -> Batch:
        index = np.asarray(batch["index"], dtype=np.int64)
        blocks = sorted(set((index // LATENT_BLOCK).tolist()))
        computed = {b: self._cache.get(b) or self._block(b) for b in blocks}
        self._cache = {blocks[-1]: computed[blocks[-1]]}  # consecutive micro-batches share a block edge
        where = [(computed[i // LATENT_BLOCK], i % LATENT_BLOCK) for i in index.tolist()]
        out = dict(batch)
        for key, first in computed[blocks[0]].items():
            values = [block[key][pos] for block, pos in where]
            out[key] = np.stack(values) if isinstance(first, np.ndarray) else values
        out["index"] = index
        return out

    @torch.no_grad()
    def _block(self, block: int) -> Batch:
        """Everything the model gives for the global indices of aligned block `block` (LATENT_BLOCK rows)."""
        index = np.arange(block * LATENT_BLOCK, (block + 1) * LATENT_BLOCK, dtype=np.int64)
        plan = self.sampler.plan(index)
        model = self.model
        z_id = torch.from_numpy(plan.z_id)
        z_ex = torch.from_numpy(plan.z_ex)
        w_id, w_ex = model.from_latent(z_id, z_ex)  # (B, I), (B, E)
        if plan.use_catalogue.any():
            # Catalogue mixtures: w_ex = w_neutral + sum_e a_e (W_ex[e] - w_neutral); z_ex via the flow.
            table = model.expression_coefficients.to(w_ex)  # (n_ex, E)
            neutral = model.neutral_w_ex.to(w_ex)  # (E,)
            weights = torch.from_numpy(plan.expr_weights).to(w_ex)  # (B, n_ex)
            mixed = neutral + weights @ (table - neutral)  # (B, E)
            use = torch.from_numpy(plan.use_catalogue)[:, None]
            w_ex = torch.where(use, mixed, w_ex)
            z_ex = torch.where(use, model.to_latent(w_id, mixed)[1], z_ex)
        if plan.use_aus.any():
            # AU vectors: w_ex = w_neutral + sum_a c_a (W_ex[single(a)] - w_neutral); z_ex via the flow.
            neutral = model.neutral_w_ex.to(w_ex)  # (E,)
            mixed = neutral + torch.from_numpy(plan.aus).to(w_ex) @ self.au_deltas.to(w_ex)  # (B, E)
            use = torch.from_numpy(plan.use_aus)[:, None]
            w_ex = torch.where(use, mixed, w_ex)
            z_ex = torch.where(use, model.to_latent(w_id, mixed)[1], z_ex)
        generating = plan.aus * np.float32(self.cfg.sampler.intensity)  # (B, A) what made each AU sample
        if self.cfg.sampler.intensity != 1.0:
            # Scale the expression's deviation from neutral (linear in w_ex for a fixed identity).
            neutral = model.neutral_w_ex.to(w_ex)  # (E,)
            w_ex = neutral + self.cfg.sampler.intensity * (w_ex - neutral)
            z_ex = model.to_latent(w_id, w_ex)[1]
        vertices = model.decode(w_id, w_ex)  # (B, N, 3)
        au_nnls, residual = self.au_labeller.estimate(w_id, w_ex)  # (B, A), (B,)
        exact = plan.use_aus & ((generating >= 0) & (generating <= 1)).all(axis=1)  # (B,)
        au = np.where(plan.use_aus[:, None], np.clip(generating, 0.0, 1.0), au_nnls)  # (B, A)
        source = np.where(exact, "generating", np.where(plan.use_aus, "generating_clipped", "nnls"))
        log_prob_ex = model.log_prob(w_id, w_ex)[1]  # (B,)
        if self.landmarks is not None:
            from synth.labels.landmarks import landmarks

            lmk3d = landmarks(vertices, self.landmarks)  # (B, L, 3)
        else:
            lmk3d = vertices.new_zeros((len(index), 0, 3))
        return {
            "z_id": _numpy(z_id).astype(np.float32),
            "z_ex": _numpy(z_ex).astype(np.float32),
            "w_id": _numpy(w_id).astype(np.float32),
            "w_ex": _numpy(w_ex).astype(np.float32),
            "vertices": _numpy(vertices).astype(np.float32),
            "au": au.astype(np.float32),
            "au_nnls": au_nnls,
            "au_nnls_residual": residual,
            "au_source": source.tolist(),
            "log_prob_ex": _numpy(log_prob_ex).astype(np.float32),
            "lmk3d": _numpy(lmk3d).astype(np.float32),
            "identity_id": plan.group,
            "step": plan.step,
            "split": assign_splits(self.cfg.seed, plan.group, self.cfg.splits),
            "expression": list(plan.expression),
            "age_months": plan.age_months,
            "sex": list(plan.sex),
            "label_estimated": plan.label_estimated,
            "head_circumference_mm": self._head_circumference(w_id),
        }

    def _head_circumference(self, w_id: torch.Tensor) -> np.ndarray:
        """(B,) float32 head circumference (mm) of each row's identity in the neutral expression."""
        b = len(w_id)
        definition = self.landmarks  # the Anny head's (only nasion is used)
        if self.head is None or definition is None:
            return np.full(b, np.nan, np.float32)
        from synth.labels.anthropometry import head_circumference
        from synth.labels.landmarks import landmarks

        unique, inverse = np.unique(_numpy(w_id), axis=0, return_inverse=True)
        w = torch.from_numpy(unique).to(w_id)
        neutral = self.model.decode(w, self.model.neutral_w_ex.to(w).expand(len(w), -1))
        meshes = _numpy(neutral).astype(np.float64)
        nasion = landmarks(meshes, definition)[:, definition.index("n")]
        hc = np.array([head_circumference(m, self.head, n)[0] for m, n in zip(meshes, nasion, strict=True)])
        return hc[np.ravel(inverse)].astype(np.float32)


# ---------------------------------------------------------------------------------------- workers


class GeometryWorker:
    """Loads the model once; `__call__(unit)` returns the shard's columns (geometry + renders) and timings."""

    def __init__(self, spec: WorkerSpec):
        from synth.facemodel.model import FaceModel
        from synth.render.stage import RenderStage

        check_code_path(spec.code_path)
        self.spec = spec
        cfg = spec.cfg
        self.model = FaceModel.load(spec.model_dir)
        self.geometry = GeometryStage(self.model, cfg)
        self.render = RenderStage(cfg.render, self.geometry.faces, cfg.seed)

    def __call__(self, unit: ShardUnit) -> tuple[Batch, dict[str, float]]:
        seconds = {"geometry": 0.0, "render": 0.0}
        parts = []
        step = self.spec.cfg.runtime.batch_size
        for start in range(unit.start, unit.stop, step):
            batch: Batch = {"index": np.arange(start, min(start + step, unit.stop), dtype=np.int64)}
            t = time.perf_counter()
            batch = self.geometry(batch)
            seconds["geometry"] += time.perf_counter() - t
            t = time.perf_counter()
            batch = self.render(batch)
            seconds["render"] += time.perf_counter() - t
            parts.append(batch)
        return _concat(parts), seconds


class DiffusionWorker:
    """Holds the diffusion pipeline; adds rgb / prompt / ethnicity / diffusion_seed to a shard's columns."""

    def __init__(self, spec: WorkerSpec):
        from synth.diffusion.stage import DiffusionStage

        self.stage = DiffusionStage(spec.cfg.diffusion, spec.cfg.seed)
        self.batch_size = spec.cfg.diffusion.batch_size

    def __call__(self, columns: Batch) -> tuple[Batch, float]:
        t = time.perf_counter()
        n = len(columns["index"])
        keys = ("index", "depth", "canny")
        parts = []
        for start in range(0, n, self.batch_size):
            sub = {k: columns[k][start : start + self.batch_size] for k in keys}
            out = self.stage(sub)
            parts.append({k: np.asarray(out[k]) for k in ("rgb", "prompt", "ethnicity", "diffusion_seed")})
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {**columns, **merged}, time.perf_counter() - t


class ShardWriter:
    """Turns a shard's columns into E's sample dicts and writes shard tar + index part."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec

    def __call__(self, unit: ShardUnit, columns: Batch) -> ShardResult:
        from synth.records import storage
        from synth.records.writer import write_shard

        t = time.perf_counter()
        retries = storage.RETRIES[0]
        samples = list(self.samples(columns))
        info = write_shard(self.spec.output_dir, unit.shard_id, samples, self.spec.cfg.output)
        seconds = {"write": time.perf_counter() - t}
        return ShardResult(unit.shard_id, len(samples), info.bytes, seconds, storage.RETRIES[0] - retries)

    def samples(self, columns: Batch) -> Iterable[dict[str, Any]]:
        cfg = self.spec.cfg
        height, width = columns["depth"].shape[1:3]
        has_rgb = "rgb" in columns
        for r, index in enumerate(columns["index"].tolist()):
            meta: dict[str, Any] = {
                "split": columns["split"][r],
                "identity_id": int(columns["identity_id"][r]),
                "expression": columns["expression"][r],
                "model_id": self.spec.model_id,
                "seed": cfg.seed,
                "sampler": cfg.sampler.kind.value,
                "group_step": int(columns["step"][r]),
                "au_source": columns["au_source"][r],
                "au_nnls_residual": float(columns["au_nnls_residual"][r]),
                "log_prob_ex": float(columns["log_prob_ex"][r]),
                "age_months": _finite(columns["age_months"][r]),
                "sex": columns["sex"][r],
                "age_sex_estimated": bool(columns["label_estimated"][r]),
                "head_circumference_mm": _finite(columns["head_circumference_mm"][r]),
                "camera": {
                    "K": columns["K"][r].tolist(),
                    "R": columns["R"][r].tolist(),
                    "t": columns["t"][r].tolist(),
                    "width": int(width),
                    "height": int(height),
                },
                "light": {
                    "direction": columns["light"][r][:3].tolist(),
                    "ambient": float(columns["light"][r][3]),
                    "frame": "camera",
                },
            }
            rgb: list[np.ndarray] = []
            if has_rgb:
                rgb = list(columns["rgb"][r])
                ethnicities = [str(e) for e in np.ravel(columns["ethnicity"][r])]
                meta |= {
                    "prompts": [str(p) for p in columns["prompt"][r]],
                    "negative_prompt": cfg.diffusion.negative_prompt,
                    "ethnicity": ethnicities[0],
                    "ethnicities": ethnicities,
                    "diffusion_seeds": [int(s) for s in columns["diffusion_seed"][r]],
                }
            yield {
                "index": index,
                "mesh": columns["vertices"][r],
                "latents": {k: columns[k][r] for k in ("z_id", "z_ex", "w_id", "w_ex")},
                "au": columns["au"][r],
                "au_nnls": columns["au_nnls"][r],
                "lmk2d": columns["lmk2d"][r],
                "lmk3d": columns["lmk3d"][r],
                "depth": columns["depth"][r],
                "normal": columns["normals"][r],
                "mask": columns["mask"][r],
                "canny": columns["canny"][r],
                "shaded": columns["shaded"][r],
                "rgb": rgb,
                "meta": meta,
            }


class ShardPipeline:
    """All stages of one process: geometry + render (+ diffusion) + write, one shard per call."""

    def __init__(self, spec: WorkerSpec):
        self.geometry = GeometryWorker(spec)
        self.diffusion = DiffusionWorker(spec) if spec.cfg.diffusion.enabled else None
        self.writer = ShardWriter(spec)

    def __call__(self, unit: ShardUnit) -> ShardResult:
        columns, seconds = self.geometry(unit)
        if self.diffusion is not None:
            columns, seconds["diffusion"] = self.diffusion(columns)
        result = self.writer(unit, columns)
        result.seconds = {**seconds, **result.seconds}
        return result


def run_in_process(spec: WorkerSpec, units: list[ShardUnit], on_shard: Callable[[ShardResult], None]) -> None:
    """The in-process executor (`runtime.executor=local`): the same stages in one loop.

    Torch keeps its default threads unless `runtime.threads_per_worker` sets them (small per-sample ops
    run faster on 1 thread when other processes share the cores; see docs/performance.md)."""
    if spec.cfg.runtime.threads_per_worker:
        torch.set_num_threads(spec.cfg.runtime.threads_per_worker)
    pipeline = ShardPipeline(spec)
    for unit in units:
        on_shard(pipeline(unit))
