"""AU labelling throughput: `ModelAuLabeller` (coefficient-space Gram, 46 x 46 NNLS) vs decoding the bases.

    python benchmarks/bench_au_labels.py                 # a random bilinear model of the default's size
    python benchmarks/bench_au_labels.py --model DIR     # a built model directory

Baseline, measured in the same run: for each sample decode its mesh, its identity's neutral and the 46
single-AU meshes with the bilinear model, then `au_intensities` on the vertex-space bases (what one
would write without exploiting bilinearity). Prints samples/s of both, the ratio, the largest label
difference between the two, and the hardware.
"""

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from synth.facemodel.bilinear import bilinear_decode
from synth.hardware import cpu_model
from synth.labels.au_labels import ModelAuLabeller, au_intensities, single_au_expressions
from synth.labels.expressions import load_catalogue


def random_model(n_vertices: int, rank_id: int, seed: int) -> SimpleNamespace:
    """A bilinear model with the default model's shapes: core (3N, I, 76), catalogue expressions."""
    cat = load_catalogue()
    rng = np.random.default_rng(seed)
    core = torch.as_tensor(rng.normal(size=(3 * n_vertices, rank_id, 76)) * 1e-3, dtype=torch.float32)
    w_ex = torch.as_tensor(np.linalg.qr(rng.normal(size=(76, 76)))[0], dtype=torch.float32)
    return SimpleNamespace(
        core=core,
        mean=torch.zeros(3 * n_vertices),
        expression_coefficients=w_ex,
        expression_aus=torch.tensor(cat.expression_aus),
        expression_names=list(cat.expression_names),
        au_names=list(cat.au_names),
        identity_coefficients=torch.as_tensor(rng.normal(size=(20, rank_id)), dtype=torch.float32),
    )


def baseline(model, w_id: torch.Tensor, w_ex: torch.Tensor) -> np.ndarray:
    rows = single_au_expressions(model.expression_aus.numpy())
    w_n = model.expression_coefficients[model.expression_names.index("neutral")]
    out = []
    for i in range(len(w_id)):
        ex = torch.cat([w_ex[i : i + 1], w_n[None], model.expression_coefficients[rows]])  # (48, E)
        meshes = bilinear_decode(model.core, model.mean, w_id[i : i + 1].expand(len(ex), -1), ex)
        out.append(au_intensities(meshes[:1], meshes[1], meshes[2:] - meshes[1]))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="built model directory (default: random model)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--rank-id", type=int, default=100, help="identity rank of the random model")
    args = parser.parse_args()
    if args.model is None:
        model = random_model(4538, args.rank_id, 0)
        name = f"random bilinear model, N=4538, I={args.rank_id}, E=76"
    else:
        from synth.facemodel import FaceModel

        model = FaceModel.load(args.model)
        name = str(args.model)
    rng = np.random.default_rng(1)
    n_id = model.identity_coefficients.shape[0]
    w_id = model.identity_coefficients[rng.integers(0, n_id, args.samples)]
    mix = torch.as_tensor(
        rng.dirichlet(np.ones(len(model.expression_names)), args.samples), dtype=torch.float32
    )
    w_ex = mix @ model.expression_coefficients

    labeller = ModelAuLabeller(model)
    with torch.no_grad():
        start = time.perf_counter()
        fast = labeller(w_id, w_ex)
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        slow = baseline(model, w_id, w_ex)
        slow_s = time.perf_counter() - start
    print(f"model: {name}; {args.samples} samples")
    print(f"hardware: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    per_ms = 1000 * fast_s / args.samples
    print(f"ModelAuLabeller: {args.samples / fast_s:.1f} samples/s ({per_ms:.1f} ms/sample)")
    print(f"baseline (decode 48 meshes + vertex NNLS): {args.samples / slow_s:.1f} samples/s")
    print(f"speed-up: {slow_s / fast_s:.1f}x; max |label difference|: {np.abs(fast - slow).max():.2e}")


if __name__ == "__main__":
    main()
