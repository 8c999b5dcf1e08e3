"""Render throughput: full map sets per second for the Anny infant head, against an Embree ray caster.

    python benchmarks/bench_render.py                    # CPU, 2 threads, 512 px, batch 32
    python benchmarks/bench_render.py --device cuda      # on a GPU machine
    python benchmarks/bench_render.py --torch-images 1   # also time the pure-torch reference backend

A "full map set" is what `RenderStage` makes per sample: depth, normals, mask, shaded, Canny edges and
2D landmarks with visibility, at `--size` pixels, with per-sample cameras and lights. The baseline,
measured in the same run on the same rays (one per pixel centre, first hit only), is trimesh's Embree ray
caster (`embreex`), which yields depth alone. Timings are wall clock, best of `--repeats`.
"""

import argparse
import logging
import time

import numpy as np
import torch

from synth.hardware import cpu_model
from synth.render.camera import sample_cameras, sample_lights
from synth.render.config import RasterBackend, RenderConfig
from synth.render.maps import render_maps
from synth.render.stage import face_centers
from synth.seeding import Stage, numpy_rng

log = logging.getLogger("bench_render")


def anny_head() -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N, 3) float32, faces (F, 3) int64) of a newborn Anny head."""
    import anny

    model = anny.Anny(
        rig="makehuman-head", topology="head", facial_actions="all", phenotypes="all", local_changes="all"
    )
    with torch.no_grad():
        out = model(phenotype_kwargs={"age": torch.tensor([0.0], dtype=torch.float64)})
    return out["vertices"][0].float().numpy(), model.get_triangular_faces().to(torch.int64).numpy()


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run, all threads) of `repeats` calls of fn."""
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def embree_time(verts, faces, cams, size: int, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds for Embree first-hit depth of every pixel-centre ray of each camera."""
    import trimesh

    if not trimesh.ray.has_embree:
        raise SystemExit("embreex is not installed: pip install embreex (the baseline of this benchmark)")
    mesh = trimesh.Trimesh(verts.astype(np.float64), faces, process=False)
    mesh.ray.intersects_location(np.zeros((1, 3)), np.array([[0.0, 1.0, 0.0]]))  # build the BVH up front
    c = np.arange(size) + 0.5
    u, v = np.meshgrid(c, c, indexing="xy")
    rays = []
    for i in range(len(cams)):
        k, r, t = cams.K[i].numpy(), cams.R[i].numpy(), cams.t[i].numpy()
        d = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        rays.append((np.repeat((-r.T @ t)[None], len(d), 0), d @ r, r[2]))

    def run() -> None:
        for origin, direction, z_axis in rays:
            loc, idx, _ = mesh.ray.intersects_location(origin, direction, multiple_hits=False)
            depth = np.zeros(len(direction))
            depth[idx] = (loc - origin[0]) @ z_axis

    return best_time(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=2, help="torch / Warp CPU threads")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="warp", choices=[b.value for b in RasterBackend])
    parser.add_argument(
        "--torch-images", type=int, default=0, help="also time the torch reference on N images"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    verts, faces = anny_head()
    cfg = RenderConfig(image_size=args.size, device=args.device, backend=RasterBackend(args.backend))
    index = np.arange(args.batch)
    v = np.repeat(verts[None], args.batch, 0)
    cams = sample_cameras(cfg, [numpy_rng(0, int(i), Stage.CAMERA) for i in index], face_centers(v))
    lights = sample_lights(cfg, [numpy_rng(0, int(i), Stage.LIGHT) for i in index])
    dev = torch.device(args.device)
    v_t = torch.from_numpy(v).to(dev)
    lmk = v_t[:, ::200].contiguous()  # 23 landmark-like points
    f_t = torch.from_numpy(faces)

    def render(config: RenderConfig, n: int) -> None:
        out = render_maps(v_t[:n], f_t, cams_slice(n), lights_slice(n), lmk[:n], config)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        assert out["mask"].any()

    def cams_slice(n):
        return type(cams)(cams.K[:n], cams.R[:n], cams.t[:n], cams.width, cams.height)

    def lights_slice(n):
        return type(lights)(lights.direction[:n], lights.ambient[:n])

    t0 = time.perf_counter()
    render(cfg, 1)  # Warp compiles (or loads from its cache) here
    first = time.perf_counter() - t0
    wall, cpu = best_time(lambda: render(cfg, args.batch), args.repeats)
    b = args.batch
    log.info(
        "hardware: %s | %d threads | torch %s | device %s", cpu_model(), args.threads, torch.__version__, dev
    )
    if dev.type == "cuda":
        log.info("gpu: %s", torch.cuda.get_device_name(dev))
    log.info("mesh: %d vertices, %d triangles | %d px | batch %d", len(verts), len(faces), args.size, b)
    log.info("first call (kernel compile or cache load): %.2f s", first)
    log.info("%s full map sets: %.1f /s wall, %.2f CPU-ms per sample", args.backend, b / wall, 1000 * cpu / b)
    e_wall, e_cpu = embree_time(verts, faces, cams, args.size, args.repeats)
    log.info(
        "embree depth-only ray cast, same rays: %.1f images/s wall, %.2f CPU-ms per image",
        b / e_wall,
        1000 * e_cpu / b,
    )
    log.info("ratio (full map sets / embree depth images): %.2fx wall, %.2fx CPU", e_wall / wall, e_cpu / cpu)
    if args.torch_images > 0:
        ref = RenderConfig(image_size=args.size, device=args.device, backend=RasterBackend.torch)
        n = args.torch_images
        t_wall, _ = best_time(lambda: render(ref, n), 1)
        log.info(
            "torch reference full map sets: %.3f /s wall; %s is %.0fx faster",
            n / t_wall,
            args.backend,
            (b / wall) / (n / t_wall),
        )


if __name__ == "__main__":
    main()
