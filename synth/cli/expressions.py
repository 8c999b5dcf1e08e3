"""`synth expressions DIR`: a dataset's expressions against the expression prior, and its label errors.

Prints a JSON report (docs/expression-prior.md, "Measured"): active AUs per sample, neutral share,
exclusive-pair violations, clipped label values, base rate / target per AU, and for samples made from AU
vectors the label's and the NNLS estimate's error against the re-planned generating vector, NNLS F1.
"""

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from synth.errors import SynthError
from synth.pipeline.config import GenerateConfig, SamplerConfig
from synth.pipeline.expression_report import expression_report


def main() -> int:
    parser = argparse.ArgumentParser(prog="synth expressions", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="dataset directory (holds manifest.json)")
    args = parser.parse_args()
    manifest = args.dir / "manifest.json"
    if not manifest.is_file():
        raise SynthError(f"{manifest} does not exist; pass the output.dir of a finished synth generate run")
    config = json.loads(manifest.read_text())["config"]
    # Only the sampler and the seed decide the AU vectors; the rest of the run config is not needed.
    sampler = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SamplerConfig), config["sampler"]))
    cfg = GenerateConfig(sampler=sampler, seed=int(config["seed"]), num_samples=int(config["num_samples"]))
    try:
        report = expression_report(args.dir, cfg)
    except ValueError as err:
        raise SynthError(str(err)) from None
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0
