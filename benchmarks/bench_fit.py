"""3D fitting throughput: one batched fit of B meshes vs B fits of one mesh each, same meshes, same run.

    python benchmarks/bench_fit.py --model DIR [--batch 8] [--device cpu]

The meshes are samples of the model (seed 777) in a random similarity pose. Prints meshes/s of both, the
ratio, the mean per-vertex error of each (mm, both must be converged) and the hardware.
"""

import argparse
import os
import time

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from synth.facemodel.model import FaceModel
from synth.fitting.fitting import FitOptions, Similarity, fit_meshes, fit_model_from_face_model
from synth.fitting.metrics import per_vertex_error
from synth.hardware import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a built model directory")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = FaceModel.load(args.model, args.device)
    fm = fit_model_from_face_model(model)
    verts = model.sample(args.batch, seed=777)["vertices"]
    rot = torch.tensor(Rotation.random(args.batch, random_state=0).as_matrix(), dtype=torch.float32)
    pose = Similarity(rot.to(verts), torch.ones(args.batch).to(verts), torch.zeros(args.batch, 3).to(verts))
    targets = pose.apply(verts)
    options = FitOptions()

    start = time.perf_counter()
    batched = fit_meshes(fm, targets, options)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [fit_meshes(fm, targets[i : i + 1], options) for i in range(args.batch)]
    t_single = time.perf_counter() - start
    err_b = per_vertex_error(batched.vertices, targets).mean().item()
    err_s = per_vertex_error(torch.cat([f.vertices for f in single]), targets).mean().item()

    print(f"model: {args.model} ({model.n_vertices} vertices, w {model.rank_id}+{model.rank_ex}, "
          f"z {model.dim_z_id}+{model.dim_z_ex})")  # fmt: skip
    load = os.getloadavg()[0]
    print(f"hardware: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {args.device}, load avg {load:.1f}")  # fmt: skip
    print(f"batched ({args.batch} meshes in one fit): {args.batch / t_batched:.3f} meshes/s, {err_b:.4f} mm")
    print(f"one mesh per fit:                   {args.batch / t_single:.3f} meshes/s, {err_s:.4f} mm")
    print(f"ratio batched / single: {t_single / t_batched:.2f}x")
    np.testing.assert_array_less([err_b, err_s], 0.1)


if __name__ == "__main__":
    main()
