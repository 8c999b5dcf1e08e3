"""What synth's CPU pins cost (synth.cpu): the same work on the pinned code path and on the host's own.

    python benchmarks/bench_cpu_pins.py                        # the default model (built if absent)
    python benchmarks/bench_cpu_pins.py --model DIR            # any built model directory

Runs `FaceModel.sample(n, seed)` (latents, inverse flows, bilinear decode) in two child processes, one
started with synth's pins in its environment (as the `synth` command and Ray workers are) and one with
none of them (a Python caller's process: the host's fastest branches), rounds interleaved, best of each,
and prints meshes/s of both with the ratio, the code paths and the hardware.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from synth.cpu import PINNED_ENV, pinned_env

CHILD = """
import json, sys, time
import torch
from synth.cpu import code_path
from synth.build import default_model
from synth.facemodel import FaceModel

model = FaceModel.load(sys.argv[1]) if sys.argv[1] else default_model()
torch.set_grad_enabled(False)
model.sample(8, seed=0)  # warm-up
batch, repeat = int(sys.argv[2]), int(sys.argv[3])
best = float("inf")
for _ in range(repeat):
    start = time.perf_counter()
    model.sample(batch, seed=1)
    best = min(best, time.perf_counter() - start)
path = code_path()
print(json.dumps({"rate": batch / best, "seconds": best, "key": path["key"], "cpu": path["cpu"]}))
"""
UNPINNED_ENV = {key: value for key, value in os.environ.items() if key not in PINNED_ENV}
ENVS = {"pinned": {**UNPINNED_ENV, **pinned_env()}, "unpinned": UNPINNED_ENV}


def run(env: dict[str, str], model: str, batch: int, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(batch), str(repeat)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the default)")
    parser.add_argument("--batch", type=int, default=256, help="meshes per call")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per child; best of each")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved pinned / unpinned child pairs")
    args = parser.parse_args()
    model = str(args.model or "")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, env in ENVS.items():
            result = run(env, model, args.batch, args.repeat)
            if name not in best or result["rate"] > best[name]["rate"]:
                best[name] = result
    pinned, unpinned = best["pinned"], best["unpinned"]
    print(f"hardware: {pinned['cpu']}")
    for name, r in best.items():
        rate, seconds = r["rate"], r["seconds"]
        print(f"{name:9s} sample+decode: {rate:9.1f} meshes/s  ({args.batch}, {seconds:.3f} s)  [{r['key']}]")
    print(f"ratio pinned / unpinned: {pinned['rate'] / unpinned['rate']:.2f} x")


if __name__ == "__main__":
    main()
