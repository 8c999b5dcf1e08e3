"""`python -m synth.build.child TARGET PROGRESS`: the pinned child process of `synth.build.build`.

Reads a build recipe (`build_spec` JSON) on stdin, builds it into TARGET and writes one JSON line on
stdout: {"path": TARGET} or {"error": message} for bad input. Its parent started it with synth's CPU pins.
"""

import json
import logging
import sys

from synth.build.build import build_model
from synth.build.config import config_from_spec
from synth.errors import SynthError


def main() -> int:
    target, progress = sys.argv[1], sys.argv[2] == "1"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = build_model(config_from_spec(json.loads(sys.stdin.read())), target, progress)
    except SynthError as err:
        sys.stdout.write(json.dumps({"error": str(err)}) + "\n")
        return 2
    sys.stdout.write(json.dumps({"path": str(path)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
