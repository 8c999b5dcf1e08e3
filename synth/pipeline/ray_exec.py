"""Ray Data execution of the shard workers: the one module of synth that imports Ray.

The dataset is the list of missing shards (one row per shard, one block per row). Each row flows through

- diffusion off: `_write_shards`, a CPU task that runs geometry + render + write for its shard and
  returns a small summary row. No image leaves the worker, so the object store only ever holds summaries
  and memory stays flat however long the run.
- diffusion on, GPUs in the cluster: `_geometry_shards` (CPU tasks) returns the shard's columns packed
  into ONE row (so a shard is never split across blocks), then `_DiffuseAndWrite`, a pool of actors
  holding the diffusion pipeline (`num_gpus` each), adds the images and writes the shard. Ray Data's
  streaming executor backpressures the CPU tasks when the object store budget is used up.
- diffusion on, no GPU: like diffusion off, each CPU task also runs the diffusion stage on its shard
  (a separate CPU actor pool would only serialise the work).

No disk is shared with the driver: the built model travels through Ray's object store (put once by the
driver, unpacked once per node into a cache checked by sha256, `synth.pipeline.shipping`), and shards go
to `output.dir`, which may be an object-store URL every node can reach.

CPU workers are Ray tasks; each worker process keeps its loaded stages in `_PIPELINES` (keyed by the
worker spec), so the model loads once per process, not once per shard. `ray.init` starts an embedded
local Ray with the machine's CPUs and an explicit object store size unless `runtime.address` or
$RAY_ADDRESS names a cluster.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from synth.cpu import pinned_env
from synth.errors import SynthError
from synth.pipeline.plan import ShardUnit
from synth.pipeline.shipping import ModelPackage, cached_model, pack_model, unpack_model
from synth.pipeline.stages import (
    DiffusionWorker,
    GeometryWorker,
    ShardPipeline,
    ShardResult,
    ShardWriter,
    WorkerSpec,
)

log = logging.getLogger(__name__)

_PIPELINES: dict[tuple[str, str], Any] = {}
_LOCAL_MODELS: dict[str, str] = {}  # model sha256 -> its directory on this node (per worker process)


@dataclass(frozen=True)
class ShippedModel:
    """The driver's model in the object store: its sha256 and the reference to its `ModelPackage`."""

    sha256: str
    ref: Any  # ray.ObjectRef[ModelPackage]


def _localize(spec: WorkerSpec, model: ShippedModel) -> WorkerSpec:
    """`spec` with `model_dir` pointing at this node's copy of the shipped model (fetched once per node)."""
    if model.sha256 not in _LOCAL_MODELS:
        path = cached_model(model.sha256)
        if path is None:
            package: ModelPackage = ray.get(model.ref)
            path = unpack_model(package)
        _LOCAL_MODELS[model.sha256] = str(path)
    return dataclasses.replace(spec, model_dir=_LOCAL_MODELS[model.sha256])


def _cached(kind: str, spec: WorkerSpec, make: Callable[[WorkerSpec], Any]) -> Any:
    """A per-process cache of loaded workers (Ray reuses worker processes across tasks)."""
    key = (kind, repr(spec))
    if key not in _PIPELINES:
        _PIPELINES.clear()
        _set_threads(spec)
        _PIPELINES[key] = make(spec)
    return _PIPELINES[key]


def _set_threads(spec: WorkerSpec) -> None:
    import torch

    threads = spec.cfg.runtime.threads_per_worker
    if threads == 0:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        threads = max(1, int(cpus))
    torch.set_num_threads(threads)


def _unit(batch: dict[str, np.ndarray], row: int = 0) -> ShardUnit:
    return ShardUnit(int(batch["shard_id"][row]), int(batch["start"][row]), int(batch["stop"][row]))


def _summary(result: ShardResult) -> dict[str, np.ndarray]:
    return {"summary": np.array([json.dumps(result.__dict__)])}


# Bad input met on a worker (e.g. a model path that node cannot see) travels back as data: Ray's task
# errors keep only the text of the original exception, and the driver should print one line, not a trace.


def _error(err: SynthError) -> dict[str, np.ndarray]:
    return {"summary": np.array([json.dumps({"error": str(err)})])}


def _write_shards(batch: dict[str, Any], spec: WorkerSpec, model: ShippedModel) -> dict[str, np.ndarray]:
    try:
        pipeline = _cached("pipeline", _localize(spec, model), ShardPipeline)
        return _summary(pipeline(_unit(batch)))
    except SynthError as err:
        return _error(err)


def _geometry_shards(batch: dict[str, np.ndarray], spec: WorkerSpec, model: ShippedModel) -> dict[str, Any]:
    unit = _unit(batch)
    try:
        geometry = _cached("geometry", _localize(spec, model), GeometryWorker)
        columns, seconds = geometry(unit)
    except SynthError as err:
        return pack(unit, {"_error": [str(err)]}, {})
    return pack(unit, columns, seconds)


class _DiffuseAndWrite:
    """Actor: the diffusion pipeline (loaded once) and the shard writer."""

    def __init__(self, spec: WorkerSpec):
        self.diffusion = DiffusionWorker(spec)
        self.writer = ShardWriter(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        unit, columns, seconds = unpack(batch)
        if "_error" in columns:
            return _error(SynthError(columns["_error"][0]))
        try:
            columns, seconds["diffusion"] = self.diffusion(columns)
            result = self.writer(unit, columns)
        except SynthError as err:
            return _error(err)
        result.seconds = {**seconds, **result.seconds}
        return _summary(result)


def pack(unit: ShardUnit, columns: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """A shard's columns as a one-row batch: arrays gain a leading axis of 1, string lists go to JSON."""
    row: dict[str, Any] = {"shard_id": np.array([unit.shard_id]), "start": np.array([unit.start])}
    row["stop"] = np.array([unit.stop])
    strings = {k: v for k, v in columns.items() if isinstance(v, list)}
    row["strings_json"] = np.array([json.dumps({**strings, "_seconds": seconds})])
    for key, value in columns.items():
        if isinstance(value, np.ndarray):
            row[f"col_{key}"] = value[None]
    return row


def unpack(batch: dict[str, Any]) -> tuple[ShardUnit, dict[str, Any], dict[str, float]]:
    """The inverse of `pack` (one-row batch)."""
    strings = json.loads(str(batch["strings_json"][0]))
    seconds = strings.pop("_seconds")
    columns: dict[str, Any] = dict(strings)
    for key, value in batch.items():
        if key.startswith("col_"):
            columns[key.removeprefix("col_")] = np.asarray(value[0])
    return _unit(batch), columns, seconds


def init_ray(spec: WorkerSpec) -> bool:
    """Connect to the cluster (`runtime.address` or $RAY_ADDRESS) or start an embedded Ray.

    Returns True when this call started Ray (and the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    runtime = spec.cfg.runtime
    address = runtime.address or os.environ.get("RAY_ADDRESS")
    # Workers start with synth's floating-point pins, before anything (numpy, imported by Ray) reads them;
    # the driver's own code path decides no byte of the dataset.
    runtime_env = {"env_vars": pinned_env()}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        log.info("joined the Ray cluster at %s: %s", address, ray.cluster_resources())
    else:
        ray.init(
            num_cpus=len(os.sched_getaffinity(0)),  # the CPUs this process may use (containers, taskset)
            object_store_memory=runtime.object_store_mb * 2**20,
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
        )
    return True


def run_ray(
    spec: WorkerSpec,
    units: list[ShardUnit],
    on_shard: Callable[[ShardResult], None],
    diffusion_pool: bool | None = None,
) -> None:
    """Run the shard workers over `units` with Ray Data; `on_shard` gets each result as it completes.

    diffusion_pool: run diffusion in its own actor pool (None: when diffusion is on and the cluster has
    GPUs). Without GPUs every CPU worker runs the whole chain, diffusion included, on its shards.
    """
    started = init_ray(spec)
    try:
        if diffusion_pool is None:
            diffusion_pool = spec.cfg.diffusion.enabled and ray.cluster_resources().get("GPU", 0) > 0
        _run(spec, units, on_shard, diffusion_pool)
    finally:
        if started:
            ray.shutdown()


def _run(
    spec: WorkerSpec, units: list[ShardUnit], on_shard: Callable[[ShardResult], None], diffusion_pool: bool
) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # synth's own bar counts samples
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ctx.execution_options.preserve_order = False
    runtime = spec.cfg.runtime
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = min(runtime.num_workers or cpus, len(units))  # more would idle (and Ray warns)
    rows = [{"shard_id": u.shard_id, "start": u.start, "stop": u.stop} for u in units]
    package = pack_model(spec.model_dir)
    model = ShippedModel(package.sha256, ray.put(package))  # held by this frame until the run ends
    del package
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    if not diffusion_pool:
        ds = ds.map_batches(
            _write_shards,
            fn_kwargs={"spec": spec, "model": model},
            batch_size=1,
            num_cpus=1,
            compute=ray.data.TaskPoolStrategy(size=workers),
        )
    else:
        gpus = runtime.diffusion_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0
        if not gpus:  # CPU diffusion actors hold a CPU each: leave them room or the pipeline stalls
            workers = max(1, min(workers, cpus - runtime.diffusion_workers))
        ds = ds.map_batches(
            _geometry_shards,
            fn_kwargs={"spec": spec, "model": model},
            batch_size=1,
            num_cpus=1,
            compute=ray.data.TaskPoolStrategy(size=workers),
        )
        ds = ds.map_batches(
            _DiffuseAndWrite,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            num_cpus=0 if gpus else 1,
            num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=runtime.diffusion_workers),
        )
    log.info("ray: %d shards on %d CPU workers (cluster: %s)", len(units), workers, ray.cluster_resources())
    for row in ds.iter_rows():
        summary = json.loads(str(row["summary"]))
        if "error" in summary:
            raise SynthError(f"on a Ray worker: {summary['error']}")
        on_shard(ShardResult(**summary))
