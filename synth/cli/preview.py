"""`synth preview DIR [-n 16] [-o FILE]`: contact sheet PNG of a dataset's first samples."""

import argparse
import logging

from synth.errors import SynthError

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(prog="synth preview", description=__doc__)
    parser.add_argument("dataset_dir", help="a synth dataset directory or URL (s3://bucket/prefix, ...)")
    parser.add_argument("-n", "--num", type=int, default=16, help="samples to show (default 16)")
    parser.add_argument("-o", "--out", default=None, help="output PNG path or URL (default DIR/preview.png)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from synth.records.storage import Store

    store = Store.of(args.dataset_dir)
    if not store.is_dir():
        raise SynthError(f"{args.dataset_dir} is not a directory; give a synth dataset directory or URL")
    if not 1 <= args.num <= 256:
        raise SynthError(f"-n {args.num} must be in [1, 256]")
    from synth.pipeline.preview import write_preview

    out = write_preview(store, args.out or store.url("preview.png"), args.num)
    sys.stdout.write(f"{out}\n")
    return 0
