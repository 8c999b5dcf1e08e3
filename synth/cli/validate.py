"""`synth validate DIR`: check a dataset; exit 0 when intact, 1 when it has problems, 2 on bad usage."""

import argparse
import logging
import sys

from synth.errors import SynthError
from synth.records.storage import Store
from synth.records.validate import validate_dataset

log = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="synth validate",
        description="Check a synth dataset: manifest, checksums, counts, every member's dtype/shape/range.",
    )
    parser.add_argument("dir", help="dataset directory or URL (s3://bucket/prefix, ...; holds manifest.json)")
    parser.add_argument(
        "--quick", action="store_true", help="check files, checksums and CRCs only; no decoding"
    )
    parser.add_argument("--max-problems", type=int, default=50, help="problems to list (default 50; 0 = all)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes checking shards in parallel (default 1)"
    )
    args = parser.parse_args()
    if not Store.of(args.dir).is_dir():
        raise SynthError(f"dataset directory {args.dir} does not exist; pass the output.dir of a synth run")
    if args.jobs < 1:
        raise SynthError(f"--jobs must be >= 1, got {args.jobs}")
    report = validate_dataset(args.dir, decode=not args.quick, jobs=args.jobs)
    shown = report.problems if args.max_problems <= 0 else report.problems[: args.max_problems]
    for problem in shown:
        sys.stdout.write(f"{problem}\n")
    if len(shown) < len(report.problems):
        sys.stdout.write(f"... and {len(report.problems) - len(shown)} more\n")
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    sys.stdout.write(f"{args.dir}: {report.num_samples} samples in {report.num_shards} shards: {verdict}\n")
    return 0 if report.ok else 1
