"""Loader benchmark on object storage: tar shards vs the same samples as loose objects, on an S3 server.

    python benchmarks/bench_remote_loader.py [--samples 96] [--size 256] [--workers 2] [--per-shard 16]
                                              [--latency-ms 0,20]

The setting shards exist for: a local S3 API server (moto's `ThreadedMotoServer` on 127.0.0.1) holding
(a) the dataset as written by `synth generate` with output.dir=s3://... (tar shards + index parts) and
(b) the same member bytes as loose objects, one object per member, one prefix per sample. Both are
read through a torch DataLoader with the same workers and the same decoders (`synth.records.codecs`):
(a) by `load_webdataset("s3://...")` (one ranged GET per 4 MiB block of a shard, plus its index part),
(b) by a map-style Dataset fetching a sample's member objects concurrently (`fs.cat([...])`, one GET
each). `--latency-ms` adds a fixed delay to every request the server answers (first-byte latency of a
real object store is 10-100 ms; the local server alone answers in ~1-3 ms), each value one run.
Prints samples/s and the ratio (tar / loose) per latency, and the hardware.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from bench_records import KEYS, make_sample, time_loader  # the same samples and timing as the local bench

from synth.hardware import cpu_model
from synth.records import codecs, load_webdataset
from synth.records.config import OutputConfig
from synth.records.storage import Store
from synth.records.writer import write_dataset_files, write_manifest, write_shard

log = logging.getLogger("bench_remote_loader")
LATENCY_S = [0.0]  # read by the server thread for every request


def start_server() -> str:
    """A moto S3 server on 127.0.0.1 whose every request first waits LATENCY_S[0]; returns its endpoint."""
    from moto import server

    class SlowApp(server.DomainDispatcherApplication):
        def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
            time.sleep(LATENCY_S[0])
            return super().__call__(environ, start_response)

    server.DomainDispatcherApplication = SlowApp  # ThreadedMotoServer builds its app from this name
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    return endpoint


class LooseObjects(Dataset):
    """Map-style dataset over one prefix per sample, one object per member, decoded like the loader."""

    def __init__(self, url: str, keys: list[str], members: list[str]) -> None:
        self.url, self.keys, self.members = url, keys, members
        self.fs = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        import fsspec

        if self.fs is None:  # one client per DataLoader worker process
            self.fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
        root = self.url.removeprefix("s3://")
        paths = [f"{root}/{self.keys[i]}/{m}" for m in self.members]
        blobs = {p.rsplit("/", 1)[1]: b for p, b in self.fs.cat(paths).items()}  # concurrent GETs
        latents = codecs.decode_npz(blobs["latents.npz"])
        return {
            "__key__": self.keys[i],
            "mesh": torch.from_numpy(codecs.decode_npy(blobs["mesh.npy"])),
            "latents": {k: torch.from_numpy(v) for k, v in latents.items()},
            "au": torch.from_numpy(codecs.decode_npy(blobs["au.npy"])),
            "depth": torch.from_numpy(codecs.decode_depth(blobs["depth.png"])),
            "rgb": torch.from_numpy(codecs.jpeg_to_rgb(blobs["rgb.jpg"])[None]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-shard", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated added latencies per request")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("botocore", "aiobotocore", "s3fs", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    start_server()
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bench")
    tar_url, loose_url = "s3://bench/tar", "s3://bench/loose"
    store = Store.of(tar_url)
    samples = [make_sample(i, args.size) for i in range(args.samples)]
    cfg = OutputConfig(dir=tar_url, samples_per_shard=args.per_shard)
    write_dataset_files(store, [[0, 1, 2]], [f"AU{i}" for i in range(46)])
    infos = [
        write_shard(store, shard, samples[start : start + args.per_shard], cfg)
        for shard, start in enumerate(range(0, args.samples, args.per_shard))
    ]
    write_manifest(store, infos, config={}, model={"id": "bench", "path": "", "hash": ""},
                   au_names=[f"AU{i}" for i in range(46)], samples_per_shard=args.per_shard)  # fmt: skip
    # The loose copy: the very member bytes of the shards (read back through the raw loader).
    members = None
    keys = []
    for raw in load_webdataset(tar_url, keys=list(KEYS), decode=False):
        files = {k: v for k, v in raw.items() if not k.startswith("__")}
        members = members or sorted(files)
        keys.append(raw["__key__"])
        fs.pipe({f"bench/loose/{raw['__key__']}/{name}": data for name, data in files.items()})
    assert members is not None
    shard_mb = sum(i.bytes for i in infos) / 1e6
    loose_mb = sum(fs.du("bench/loose", total=False).values()) / 1e6

    hardware = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    log.info("hardware: %s; torch %s, %d DataLoader workers", hardware, torch.__version__, args.workers)
    log.info("data: %d samples, %dx%d maps + RGB JPEG, members %s; %d shards (%.1f MB), %d loose objects "
             "(%.1f MB)", args.samples, args.size, args.size, ",".join(KEYS), len(infos), shard_mb,
             len(keys) * len(members), loose_mb)  # fmt: skip
    for latency in [float(x) for x in args.latency_ms.split(",")]:
        LATENCY_S[0] = latency / 1000
        tar = load_webdataset(tar_url, keys=list(KEYS))
        loose = LooseObjects(loose_url, keys, members)
        best = {}
        for name, ds in (("tar", tar), ("loose", loose)):
            best[name] = min(time_loader(ds, args.workers, args.samples) for _ in range(args.repeats))
        tar_rate, loose_rate = args.samples / best["tar"], args.samples / best["loose"]
        log.info("added latency %.0f ms/request (load average %.1f): tar shards %.1f samples/s, "
                 "loose objects %.1f samples/s -> ratio %.2fx", latency, os.getloadavg()[0], tar_rate,
                 loose_rate, tar_rate / loose_rate)  # fmt: skip


if __name__ == "__main__":
    main()
