"""Face model throughput: batched sample + decode vs a per-sample loop, and build wall time / peak memory.

    python benchmarks/bench_facemodel.py                       # the default model (built if absent)
    python benchmarks/bench_facemodel.py --model DIR           # any built model directory
    python benchmarks/bench_facemodel.py --build tiny          # also time `synth build-model model=tiny`

Prints meshes/s of `FaceModel.sample(n, seed)` (latents, inverse flows, bilinear decode; batched, in
fixed blocks) against a per-sample loop doing the same work one mesh at a time without blocking (the
baseline), both measured in this run, with the ratio, absolute numbers and the hardware.
"""

import argparse
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from synth import cpu

cpu.pin()  # a benchmark is a process of synth's: the pinned code path, as the `synth` command runs it

import torch  # noqa: E402  (after the pins)

from synth.build import default_model  # noqa: E402
from synth.facemodel import FaceModel  # noqa: E402
from synth.facemodel.bilinear import bilinear_decode  # noqa: E402
from synth.hardware import cpu_model  # noqa: E402
from synth.seeding import Stage, torch_generator  # noqa: E402

CLI = [sys.executable, "-m", "synth"]  # the `synth` command (pinned process)


def per_sample_loop(model: FaceModel, n: int, seed: int) -> None:
    """The baseline: one mesh at a time, same maths, no batching."""
    with torch.no_grad():
        for i in range(n):
            gen = torch_generator(seed, i, Stage.LATENT)
            z_id = torch.randn(1, model.dim_z_id, generator=gen)
            z_ex = torch.randn(1, model.dim_z_ex, generator=gen)
            w_id, w_ex = model.flow_id.to_w(z_id), model.flow_ex.to_w(z_ex)
            bilinear_decode(model.core, model.mean, w_id, w_ex)


def timed(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time (s) of each of `fns` over `repeat` rounds, the functions interleaved within a round
    so that a neighbour's burst on a shared machine disturbs them alike; the best run is the least
    disturbed."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_build(preset: str) -> dict[str, float]:
    """Wall time and peak RSS (GiB) of `synth build-model model=<preset>` in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [*CLI, "build-model", f"model={preset}", f"model.out={tmp}/model"],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_rss_gib": peak_kib / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the default model)"
    )
    parser.add_argument("--batch", type=int, default=256, help="meshes per batched call")
    parser.add_argument("--loop", type=int, default=64, help="meshes in the per-sample loop")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds; best of each")
    parser.add_argument("--build", default=None, help="also time `synth build-model model=PRESET`")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = FaceModel.load(args.model) if args.model else default_model()
    torch.set_grad_enabled(False)
    model.sample(8, seed=0)  # warm-up
    n_api = max(args.loop // 2, 1)
    best = timed(
        {
            "batched": lambda: model.sample(args.batch, seed=1),
            "loop": lambda: per_sample_loop(model, args.loop, seed=1),
            "api": lambda: [model.sample_indices([i], seed=1) for i in range(n_api)],
        },
        args.repeat,
    )
    batched_rate, loop_rate, api_rate = (
        args.batch / best["batched"],
        args.loop / best["loop"],
        n_api / best["api"],
    )

    print(f"hardware: {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(
        f"model: {model.model_id}, N={model.n_vertices}, w_id {model.rank_id}, w_ex {model.rank_ex}, "
        f"z_id {model.dim_z_id}, z_ex {model.dim_z_ex}"
    )
    print(
        f"batched sample+decode: {batched_rate:9.1f} meshes/s  (batch {args.batch}, {best['batched']:.3f} s)"
    )
    print(f"per-sample loop:       {loop_rate:9.1f} meshes/s  ({args.loop} meshes, {best['loop']:.3f} s)")
    print(f"ratio batched / loop:  {batched_rate / loop_rate:9.1f} x")
    # What a user gets calling the public API one sample at a time: each call pays for a whole fixed
    # BLOCK-row block (the price of batch-independent bytes), so this ratio is larger than the one above.
    print(f"public API, one sample per call: {api_rate:9.1f} meshes/s  ({n_api} calls, {best['api']:.3f} s)")
    print(f"ratio batched / public-API loop: {batched_rate / api_rate:9.1f} x")
    if args.build:
        build = bench_build(args.build)
        print(
            f"build model={args.build}: {build['wall_s']:.1f} s wall, "
            f"peak RSS {build['peak_rss_gib']:.2f} GiB"
        )


if __name__ == "__main__":
    main()
