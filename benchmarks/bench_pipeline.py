"""End-to-end geometry-only throughput of `synth generate`: Ray Data vs a single-process loop, same run.

    python benchmarks/bench_pipeline.py [--model default|tiny|DIR] [--samples 256] [--size 512]

Both executors run the same stages (sample -> decode -> AU + landmarks -> render -> write shard) on the
same config into fresh directories. Reported per executor: wall time including start-up (Ray init,
worker imports, model load), the steady-state rate (samples written after the first shard completed /
time from the first to the last shard), and the per-stage time per sample summed over workers. The
figure of merit is the ratio of Ray's steady-state rate to the loop's; goals: >= 25 samples/s at 512 x 512
on 2 cores, Ray >= 1.6x the loop. The loop uses torch's default threads; Ray one thread per worker. The
loop's CPU seconds per sample are reported too: unlike wall clock they do not inflate when other
processes share the cores, and CPUs / (CPU s per sample) bounds the rate an idle machine could reach.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from synth.cli._hydra import compose_config
from synth.hardware import cpu_model
from synth.pipeline.config import Executor
from synth.pipeline.plan import shard_units
from synth.pipeline.run import prepare
from synth.pipeline.stages import ShardResult, WorkerSpec, run_in_process
from synth.records.writer import write_dataset_files

log = logging.getLogger("bench_pipeline")


def _measure(spec: WorkerSpec, executor: Executor) -> dict[str, float]:
    """Run every shard of `spec` with `executor`; return wall, steady-state rate and per-stage ms/sample."""
    from synth.facemodel.model import FaceModel

    model = FaceModel.load(spec.model_dir)
    Path(spec.output_dir).mkdir(parents=True)
    write_dataset_files(spec.output_dir, model.faces.numpy(), list(model.au_names))
    units = shard_units(spec.cfg.num_samples, spec.cfg.output.samples_per_shard)
    stamps: list[tuple[float, int]] = []
    stages: dict[str, float] = {}

    def on_shard(result: ShardResult) -> None:
        stamps.append((time.perf_counter(), result.num_samples))
        for k, v in result.seconds.items():
            stages[k] = stages.get(k, 0.0) + v

    t0, cpu0 = time.perf_counter(), time.process_time()
    if executor is Executor.local:
        run_in_process(spec, units, on_shard)
    else:
        from synth.pipeline.ray_exec import run_ray

        run_ray(spec, units, on_shard)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # this process only: the loop's CPU time (all its threads)
    stamps.sort()
    after_first = sum(n for _, n in stamps[1:])
    steady = after_first / max(stamps[-1][0] - stamps[0][0], 1e-9)
    n = spec.cfg.num_samples
    extra = {}
    if executor is Executor.local:
        # On a loaded machine wall clock inflates; CPU seconds per sample do not. 2 cores / that figure is
        # what the stages could reach on an idle 2-core machine if perfectly parallel (an upper bound).
        extra = {"cpu_s_per_sample": cpu / n, "idle_2core_bound_rate": (os.cpu_count() or 1) * n / cpu}
    return {
        **extra,
        "wall_s": wall,
        "wall_rate": n / wall,
        "steady_rate": steady,
        **{f"{k}_ms_per_sample": 1000 * v / n for k, v in sorted(stages.items())},
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", default="default", help="default (anny_infant), tiny or a model dir")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--shard", type=int, default=32, help="samples per shard")
    parser.add_argument("--workers", type=int, default=0, help="Ray workers (0 = one per CPU)")
    parser.add_argument("--loop-threads", type=int, default=0, help="torch threads of the loop (0 = default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = {"default": [], "tiny": ["model=tiny"]}.get(args.model, [f"model.path={args.model}"])
    overrides = [
        *model,
        f"num_samples={args.samples}",
        f"render.image_size={args.size}",
        f"output.samples_per_shard={args.shard}",
        f"runtime.num_workers={args.workers}",
        "runtime.progress=false",
    ]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        for executor in (Executor.local, Executor.ray):
            extra = [f"runtime.executor={executor.value}"]
            if executor is Executor.local:
                extra.append(f"runtime.threads_per_worker={args.loop_threads}")
            cfg = compose_config("generate", [*overrides, *extra])
            spec, _ = prepare(cfg, Path(tmp) / executor.value)
            results[executor.value] = _measure(spec, executor)
    ratio = results["ray"]["steady_rate"] / results["local"]["steady_rate"]
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads_loop": args.loop_threads or torch.get_num_threads(),
            "load_avg_1min": os.getloadavg()[0],
        },
        "samples": args.samples,
        "image_size": args.size,
        "model": args.model,
        "results": results,
        "ray_vs_loop_steady_ratio": ratio,
    }
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    ray, loop = results["ray"], results["local"]
    sys.stdout.write(
        f"ray {ray['steady_rate']:.1f} samples/s vs loop {loop['steady_rate']:.1f} samples/s (steady state): "
        f"{ratio:.2f}x; wall incl. start-up: ray {ray['wall_rate']:.1f}, "
        f"loop {loop['wall_rate']:.1f} samples/s\n"
    )


if __name__ == "__main__":
    main()
