"""`synth generate` as a recipe: check, plan, execute, finish. No Ray and no Hydra here.

1. Front-loaded checks (nothing is written before they pass): diffusion weights, the face model (built on
   first use), the sampler against the model, the output directory against the config fingerprint.
2. The output directory (a local path or an object-store URL, `synth.records.storage`): `run.json`
   (fingerprint), the once-per-dataset files, the list of complete shards from one listing (temporary
   files of killed writers and tars without their index part are removed).
3. Execute the missing shards: Ray Data (`synth.pipeline.ray_exec`) or the in-process loop.
4. Finish: `manifest.json` (last of the dataset files), the preview contact sheet, the dataset card, and
   a summary (samples, shards, bytes, per-stage time).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.cpu import can_pin, code_path, pinned, pinned_key
from synth.errors import SynthError
from synth.pipeline.config import Executor, GenerateConfig
from synth.pipeline.plan import (
    RUN_FILE,
    ShardUnit,
    check_output_dir,
    fingerprint_config,
    fingerprint_hash,
    resolve_output_dir,
    shard_units,
    to_jsonable,
    write_run_file,
)
from synth.pipeline.stages import NO_LANDMARKS, ShardResult, WorkerSpec, landmark_definition, run_in_process
from synth.records import storage
from synth.records.config import Overwrite
from synth.records.schema import LANDMARKS
from synth.records.storage import Store
from synth.records.writer import (
    complete_shards,
    read_shard_info,
    remove_dataset,
    write_dataset_files,
    write_manifest,
)

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did: counts, bytes and seconds (per stage, summed over workers)."""

    output_dir: Path | str
    num_samples: int
    num_shards: int
    shards_written: int
    shards_resumed: int
    bytes: int
    wall_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    samples_written: int = 0
    retries: int = 0  # transient storage errors retried (uploads, listings), summed over workers

    @property
    def samples_per_s(self) -> float:
        return self.samples_written / self.wall_s if self.wall_s > 0 else 0.0

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_s.items())
        return [
            f"dataset: {self.output_dir}",
            f"samples: {self.num_samples} in {self.num_shards} shards "
            f"({self.shards_written} written now, {self.shards_resumed} kept from before)",
            f"bytes: {self.bytes / 2**20:.1f} MiB",
            f"wall time: {self.wall_s:.1f}s ({self.samples_per_s:.1f} samples/s written now)",
            f"stage time (summed over workers): {stages or 'none'}",
            f"storage retries: {self.retries}",
        ]


class Progress:
    """A tqdm bar over samples (rate and ETA); silent when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="sample", desc="generate", smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare(cfg: GenerateConfig, output_dir: Path | None = None) -> tuple[WorkerSpec, bool]:
    """Step 1: every check that can refuse the run, before anything is written. Returns (spec, resuming)."""
    from synth.build.build import resolve_model
    from synth.facemodel.model import FaceModel
    from synth.pipeline.stages import sampler_for

    out = resolve_output_dir(output_dir if output_dir is not None else cfg.output.dir)
    if cfg.diffusion.enabled:
        from synth.diffusion.loading import check_weights

        check_weights(cfg.diffusion)
    model_dir = Path(resolve_model(cfg.model)).absolute()
    model = FaceModel.load(model_dir)
    sampler_for(cfg, model)  # raises SynthError when the sampler asks for what the model lacks
    if landmark_definition(model) is None:  # raises SynthError when a known topology's cannot be attached
        log.warning("face model %s: %s", model.model_id, NO_LANDMARKS)
    fingerprint = fingerprint_config(cfg, model.model_id)
    resuming = check_output_dir(out, fingerprint, cfg.output.overwrite)
    if resuming:
        units = shard_units(cfg.num_samples, cfg.output.samples_per_shard)
        beyond = sorted(set(complete_shards(out, clean=False)) - {u.shard_id for u in units})
        if beyond:
            raise SynthError(
                f"output.dir={out} holds shards up to {beyond[-1]} but num_samples={cfg.num_samples} needs "
                f"{len(units)}; a dataset cannot shrink in place: choose a new output.dir "
                "(samples 0..n-1 are the same in any run of this config)"
            )
    spec = WorkerSpec(
        cfg=cfg,
        model_dir=str(model_dir),
        output_dir=str(out),
        model_id=model.model_id,
        code_path=run_code_path(cfg)["key"],
    )
    return spec, resuming


_WARNED: set[str] = set()  # code-path keys already warned about in this process


def run_code_path(cfg: GenerateConfig) -> dict[str, Any]:
    """The code path the run's geometry is computed on (`synth.cpu`), as run.json records it.

    Under Ray the workers start pinned whatever the driver runs, so it is the pinned path of this
    installation; the in-process executor computes in this process, on whatever path it runs (a Python
    caller that imported NumPy first, say): that is recorded, with one warning per process.
    """
    if cfg.runtime.executor is not Executor.local and can_pin():
        here = code_path()
        return {"key": pinned_key(), "cpu": f"Ray workers (driver on {here['cpu']})", "isa": "pinned"}
    path = code_path()
    if can_pin() and not pinned() and path["key"] not in _WARNED:
        _WARNED.add(path["key"])
        log.warning(
            "runtime.executor=local in a process that is not on synth's pinned CPU code path [%s]: the "
            "dataset is valid, but its geometry bytes match other machines' only where this key matches "
            "(run `synth generate`, use the Ray executor, or call synth.cpu.pin() before importing NumPy "
            "or torch; see synth.cpu)",
            path["key"],
        )
    return path


def generate(cfg: GenerateConfig, output_dir: Path | None = None) -> RunSummary:
    """Run `synth generate` for a validated config; returns the summary. Raises SynthError on bad input."""
    t0 = time.perf_counter()
    spec, resuming = prepare(cfg, output_dir)
    out = Store.of(spec.output_dir)
    retries0 = storage.RETRIES[0]
    from synth.facemodel.model import FaceModel

    model = FaceModel.load(spec.model_dir)
    fingerprint = fingerprint_config(cfg, model.model_id)
    if not resuming and cfg.output.overwrite is Overwrite.REPLACE and out.listing():
        _replace(out)
    if out.local is not None:
        out.local.mkdir(parents=True, exist_ok=True)
    write_run_file(out, fingerprint, to_jsonable(cfg), run_code_path(cfg))
    write_dataset_files(out, model.faces, list(model.au_names), landmarks=_landmarks_json(model))

    units = shard_units(cfg.num_samples, cfg.output.samples_per_shard)
    done = set(complete_shards(out, clean=True))
    for unit in units:
        if unit.shard_id in done and read_shard_info(out, unit.shard_id).num_samples != unit.size:
            # A run grown with a larger num_samples: the old last shard was partial; write it again.
            _remove_shard(out, unit.shard_id)
            done.discard(unit.shard_id)
    todo = [u for u in units if u.shard_id not in done]
    if done:
        log.info("resuming: %d of %d shards already complete in %s", len(done), len(units), out)

    stage_s: dict[str, float] = {}
    written = [0]
    worker_retries = [0]
    progress = Progress(
        cfg.num_samples, sum(u.size for u in units if u.shard_id in done), cfg.runtime.progress
    )

    def on_shard(result: ShardResult) -> None:
        for k, v in result.seconds.items():
            stage_s[k] = stage_s.get(k, 0.0) + v
        written[0] += result.num_samples
        worker_retries[0] += result.retries
        progress.update(result.num_samples)

    try:
        if todo:
            _execute(spec, todo, on_shard)
    finally:
        progress.close()

    complete = set(complete_shards(out, clean=False))
    missing = [u.shard_id for u in units if u.shard_id not in complete]
    if missing:
        # An executor bug, not bad input: keep the traceback.
        raise RuntimeError(f"shards {missing[:5]} are missing after the run")
    infos = [read_shard_info(out, u.shard_id) for u in units]
    # Workers in this process (the local executor) count into the same counter as the driver.
    local_workers = spec.cfg.runtime.executor is Executor.local
    retries = storage.RETRIES[0] - retries0 + (0 if local_workers else worker_retries[0])
    wall = time.perf_counter() - t0
    write_manifest(
        out,
        infos,
        config=to_jsonable(cfg),
        model={"id": model.model_id, "path": spec.model_dir, "hash": model.model_id},
        au_names=list(model.au_names),
        samples_per_shard=cfg.output.samples_per_shard,
        timings={**stage_s, "wall": wall, "storage_retries": retries},
        extra={
            "config_sha256": fingerprint_hash(fingerprint),
            "run_file": RUN_FILE,
            "landmarks": _landmark_summary(model),
        },
    )
    summary = RunSummary(
        output_dir=str(out),
        num_samples=cfg.num_samples,
        num_shards=len(units),
        shards_written=len(todo),
        shards_resumed=len(done),
        bytes=sum(i.bytes for i in infos),
        wall_s=wall,
        stage_s=stage_s,
        samples_written=written[0],
        retries=retries,
    )
    _finish(out, cfg, summary)
    return summary


def _execute(spec: WorkerSpec, units: list[ShardUnit], on_shard: Callable[[ShardResult], None]) -> None:
    if spec.cfg.runtime.executor is Executor.local:
        run_in_process(spec, units, on_shard)
    else:
        from synth.pipeline.ray_exec import run_ray

        run_ray(spec, units, on_shard)


def _remove_shard(out: Store, shard_id: int) -> None:
    info = read_shard_info(out, shard_id)
    out.remove([info.index_part])  # the index part first: without it the shard is incomplete
    out.remove([info.name])


def _replace(out: Store) -> None:
    remove_dataset(out)
    names = out.listing()
    own = (RUN_FILE, "README.md", "preview.png")
    out.remove([n for n in names if n in own or n.startswith("card/")])
    if out.local is not None and (out.local / "card").is_dir():
        (out.local / "card").rmdir()
    log.info("output.overwrite=REPLACE: removed the previous dataset in %s", out)


def _landmarks_json(model: Any) -> dict[str, Any] | None:
    definition = landmark_definition(model)
    return None if definition is None else definition.to_json()


def _landmark_summary(model: Any) -> str:
    """What the manifest says of the landmarks: their count and definition file, or why there are none."""
    definition = landmark_definition(model)
    if definition is None:
        return NO_LANDMARKS
    return f"{len(definition.names)} landmarks of topology {definition.topology!r} ({LANDMARKS})"


def _finish(out: Store, cfg: GenerateConfig, summary: RunSummary) -> None:
    """Preview and dataset card (after the manifest: they read the finished dataset like any user)."""
    from synth.pipeline.card import write_card
    from synth.pipeline.preview import write_preview

    if cfg.preview_samples:
        write_preview(out, out.url("preview.png"), cfg.preview_samples)
    write_card(out, summary.lines())
    for line in summary.lines():
        log.info("%s", line)
