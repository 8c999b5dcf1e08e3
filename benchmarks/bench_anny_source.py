"""Anny source throughput: batched expression meshes vs one Anny forward call per mesh.

    python benchmarks/bench_anny_source.py [--identities 4] [--expressions 76]

Prints meshes/s of `expression_meshes` (identities x expressions batched into Anny forward calls) against
a per-mesh loop over the same identities and expressions measured in the same run, and their ratio, plus
the hardware. The default model's full build (95 identities x 76 expressions, x3 variants) is measured
with `/usr/bin/time -v`; see docs/performance.md.
"""

import argparse
import logging
import os
import time

import numpy as np
import torch

from synth.hardware import cpu_model
from synth.labels.expressions import load_catalogue
from synth.sources.anny_source import (
    N_ACTIONS,
    AnnyPriorConfig,
    _alignment,
    _expression_scale,
    _forward,
    anny_head_model,
    anny_topology,
    expression_meshes,
    sample_identities,
)

log = logging.getLogger("bench_anny_source")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=4)
    parser.add_argument("--expressions", type=int, default=76)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, topo = anny_head_model(), anny_topology()
    params = sample_identities(AnnyPriorConfig(), seed=0, n=args.identities)
    actions = load_catalogue().expression_actions(1.0)[: args.expressions]
    n_meshes = args.identities * len(actions)

    start = time.perf_counter()
    batched = expression_meshes(params, actions, batch_size=128)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    loop = np.empty_like(batched)
    for i in range(args.identities):
        meshes = [
            _forward(model, params.phenotypes[i : i + 1], params.local_changes[i : i + 1], a[None])[0]
            for a in actions
        ]
        meshes = np.stack(meshes)
        rot, centre = _alignment(meshes[0], topo)
        scale = _expression_scale(meshes[0], topo, params.expression_scaling)
        loop[i] = (meshes[:1] - centre + scale * (meshes - meshes[:1])) @ rot.T
    t_loop = time.perf_counter() - start
    np.testing.assert_allclose(batched, loop, atol=1e-6)

    cpus, threads = os.cpu_count(), torch.get_num_threads()
    log.info("hardware: %s, %d cpus, torch %s, %d threads", cpu_model(), cpus, torch.__version__, threads)
    n_id, n_ex, n_vert = args.identities, len(actions), topo.symmetry.size
    log.info("meshes: %d identities x %d expressions = %d (N = %d, %d actions)", n_id, n_ex, n_meshes, n_vert,
             N_ACTIONS)  # fmt: skip
    log.info("per-mesh loop : %7.1f meshes/s (%.2f s)", n_meshes / t_loop, t_loop)
    log.info("batched       : %7.1f meshes/s (%.2f s)", n_meshes / t_batched, t_batched)
    log.info("ratio batched / loop: %.1fx", t_loop / t_batched)


if __name__ == "__main__":
    main()
