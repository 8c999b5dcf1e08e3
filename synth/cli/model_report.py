"""`synth model-report DIR [--held-out N] [--out DIR]`: evaluate a built face model (report.json + PNG)."""

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="synth model-report", description=__doc__)
    parser.add_argument("model_dir", type=Path, help="a built model directory")
    parser.add_argument(
        "--held-out", type=int, default=None,
        help="base identities drawn with fresh seeds from the model's Anny prior (default: as built)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: DIR)")
    args = parser.parse_args(sys.argv[1:])

    from synth.build.build import report_for_directory

    report = report_for_directory(args.model_dir, args.held_out, args.out)
    sys.stdout.write(json.dumps(report["summary"], indent=1) + "\n")
    return 0
