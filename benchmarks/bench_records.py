"""Records benchmark: loader samples/s vs a folder of loose files, and writer MB/s, in the same run.

    python benchmarks/bench_records.py [--samples 192] [--size 512] [--workers 2] [--per-shard 16]

Both readers load the same members (mesh, latents, au, depth, one RGB image) with the same decoders
(`synth.records.codecs`) through a torch DataLoader with the same number of workers; the only difference
is the storage: WebDataset tar shards streamed by `load_webdataset` vs one file per member in one folder
per sample, opened one by one (a map-style Dataset). Each is measured with a warm page cache and with a
cold one (`posix_fadvise(DONTNEED)` on every file first, as after a reboot or on a network file system
without a local cache). The same is repeated without decoding (raw member bytes) to isolate the storage
cost. Prints ratios (tar / loose) and absolute numbers, and the hardware.
"""

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from synth.hardware import cpu_model
from synth.records import codecs, load_webdataset
from synth.records.config import OutputConfig
from synth.records.writer import write_dataset_files, write_manifest, write_shard

log = logging.getLogger("bench_records")
KEYS = ("mesh", "latents", "au", "depth", "rgb")
N_VERTS = 4538  # the Anny head topology
LATENT_DIMS = {"z_id": 40, "z_ex": 30, "w_id": 50, "w_ex": 76}


def make_sample(index: int, size: int) -> dict:
    """A sample with realistic content: a sphere-ish depth map, a smooth noisy RGB image."""
    rng = np.random.default_rng(index)
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
    r2 = xx**2 + yy**2
    mask = r2 < 0.16
    depth = np.where(mask, 0.5 - 0.2 * np.sqrt(np.maximum(0.16 - r2, 0)), 0.0).astype(np.float32)
    normal = np.zeros((size, size, 3), np.float32)
    normal[mask] = (0.0, 0.0, -1.0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(60, 200, 3).astype(np.float32)
    image = base + 40 * (ramp[:, None, None] - ramp[None, :, None]) + rng.normal(0, 4, (size, size, 3))
    shaded = np.where(mask, 200 * (1 - r2 / 0.16), 0).astype(np.uint8)
    focal = 1.2 * size
    return {
        "index": index,
        "mesh": rng.normal(0, 0.05, (N_VERTS, 3)).astype(np.float32),
        "latents": {k: rng.normal(size=d).astype(np.float32) for k, d in LATENT_DIMS.items()},
        "au": rng.uniform(0, 1, 46).astype(np.float32),
        "au_nnls": np.linspace(0, 1, 46, dtype=np.float32),  # no rng draw: the other members unchanged
        "lmk2d": np.concatenate([rng.uniform(0, size, (23, 2)), np.ones((23, 1))], 1).astype(np.float32),
        "lmk3d": rng.normal(0, 0.05, (23, 3)).astype(np.float32),
        "depth": depth,
        "normal": normal,
        "mask": mask,
        "canny": np.zeros((size, size), np.uint8),
        "shaded": shaded,
        "rgb": [np.clip(image, 0, 255).astype(np.uint8)],
        "meta": {
            "split": "train",
            "identity_id": index // 8,
            "expression": "smile",
            "model_id": "bench",
            "seed": 0,
            "camera": {
                "K": [[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]],
                "R": np.eye(3).tolist(),
                "t": [0, 0, 0.5],
                "width": size,
                "height": size,
            },
        },
    }


def write_tar_dataset(root: Path, samples: list[dict], per_shard: int) -> tuple[float, int]:
    """Write the dataset; returns (seconds, bytes) for the shards + index parts."""
    cfg = OutputConfig(dir=str(root), samples_per_shard=per_shard)
    write_dataset_files(root, np.zeros((1, 3), np.int64), [f"AU{i}" for i in range(46)])
    codecs.encode_depth(np.zeros((2, 2), np.float32))  # import the renderer's encoders before timing
    t = time.perf_counter()
    infos = [
        write_shard(root, shard, samples[start : start + per_shard], cfg)
        for shard, start in enumerate(range(0, len(samples), per_shard))
    ]
    seconds = time.perf_counter() - t
    write_manifest(root, infos, config={}, model={"id": "bench", "path": "", "hash": ""},
                   au_names=[f"AU{i}" for i in range(46)], samples_per_shard=per_shard)  # fmt: skip
    size = sum(p.stat().st_size for p in root.rglob("*") if p.suffix in (".tar", ".parquet"))
    return seconds, size


def encode_breakdown(sample: dict, reps: int = 5) -> dict[str, float]:
    """Milliseconds to encode each member of one sample (single thread), median of `reps`."""
    cfg = OutputConfig()
    encoders = {
        "mesh.npy": lambda: codecs.encode_npy(sample["mesh"]),
        "latents.npz": lambda: codecs.encode_latents(sample["latents"]),
        "depth.png": lambda: codecs.encode_depth(sample["depth"], cfg.png_compression),
        "normal.png": lambda: codecs.encode_normal(sample["normal"], cfg.png_compression),
        "mask.png": lambda: codecs.mask_to_png1(sample["mask"], cfg.png_compression),
        "shaded.png": lambda: codecs.gray_to_png8(sample["shaded"], cfg.png_compression),
        "rgb.jpg": lambda: codecs.rgb_to_jpeg(sample["rgb"][0], cfg.jpeg_quality),
    }
    out = {}
    for name, encode in encoders.items():
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            encode()
            times.append(time.perf_counter() - t)
        out[name] = 1000 * float(np.median(times))
    return out


def write_loose_files(root: Path, tar_root: Path) -> None:
    """The same member bytes as the shards, one file per member, one folder per sample."""
    import tarfile

    for tar_path in sorted(tar_root.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar.getmembers():
                key, _, member = info.name.partition(".")
                if member.split(".")[0] in KEYS:
                    (root / key).mkdir(parents=True, exist_ok=True)
                    (root / key / member).write_bytes(tar.extractfile(info).read())


class LooseFiles(Dataset):
    """Map-style dataset over the loose-file folder, decoding with the same codecs as the loader."""

    def __init__(self, root: Path, decode: bool = True) -> None:
        self.dirs = sorted(p for p in root.iterdir() if p.is_dir())
        self.decode = decode

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, i: int) -> dict:
        d = self.dirs[i]
        if not self.decode:
            return {"__key__": d.name, **{p.name: p.read_bytes() for p in sorted(d.iterdir())}}
        latents = codecs.decode_npz((d / "latents.npz").read_bytes())
        return {
            "__key__": d.name,
            "mesh": torch.from_numpy(codecs.decode_npy((d / "mesh.npy").read_bytes())),
            "latents": {k: torch.from_numpy(v) for k, v in latents.items()},
            "au": torch.from_numpy(codecs.decode_npy((d / "au.npy").read_bytes())),
            "depth": torch.from_numpy(codecs.decode_depth((d / "depth.png").read_bytes())),
            "rgb": torch.from_numpy(codecs.jpeg_to_rgb((d / "rgb.jpg").read_bytes())[None]),
        }


def drop_cache(root: Path) -> None:
    """Ask the kernel to evict every file under `root` from the page cache."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_loader(dataset: Dataset, workers: int, expected: int) -> float:
    """Seconds for one full pass of a DataLoader (batch_size=None: per-sample, as both yield samples)."""
    t = time.perf_counter()
    n = sum(1 for _ in DataLoader(dataset, batch_size=None, num_workers=workers))
    seconds = time.perf_counter() - t
    assert n == expected, (n, expected)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    # 16 per shard: 12 shards for 2 workers, so that both get the same number of samples
    parser.add_argument("--per-shard", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="bench_records_"))
    try:
        samples = [make_sample(i, args.size) for i in range(args.samples)]
        write_s, write_bytes = write_tar_dataset(work / "tar", samples, args.per_shard)
        breakdown = encode_breakdown(samples[0])
        del samples
        write_loose_files(work / "loose", work / "tar")
        readers = {
            "tar": (load_webdataset(work / "tar", keys=KEYS), work / "tar"),
            "loose": (LooseFiles(work / "loose"), work / "loose"),
            "tar-raw": (load_webdataset(work / "tar", keys=KEYS, decode=False), work / "tar"),
            "loose-raw": (LooseFiles(work / "loose", decode=False), work / "loose"),
        }
        results: dict[str, list[float]] = {}
        for cache in ("warm", "cold"):
            for name, (ds, root) in readers.items():
                times = []
                for _ in range(args.repeats):
                    if cache == "cold":
                        drop_cache(root)
                    else:
                        time_loader(ds, args.workers, args.samples)  # warm the cache
                    times.append(time_loader(ds, args.workers, args.samples))
                results[f"{name}/{cache}"] = times

        hardware = f"{cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f}"
        log.info("hardware: %s; torch %s, %d DataLoader workers", hardware, torch.__version__, args.workers)
        size = f"{args.size}x{args.size}"
        log.info("data: %d samples, %s maps and RGB JPEG, members %s", args.samples, size, ",".join(KEYS))
        mb = write_bytes / 1e6
        log.info("writer (all members, 1 process): %.1f MB in %.2f s = %.1f MB/s = %.1f samples/s",
                 mb, write_s, mb / write_s, args.samples / write_s)  # fmt: skip
        log.info("encode ms per member: %s", ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
        for mode, what in (("", "decoded tensors"), ("-raw", "raw bytes, no decoding")):
            for cache in ("warm", "cold"):
                tar_rate = args.samples / min(results[f"tar{mode}/{cache}"])
                loose_rate = args.samples / min(results[f"loose{mode}/{cache}"])
                ratio = tar_rate / loose_rate
                log.info("%s, %s cache: tar loader %.1f samples/s, loose files %.1f samples/s -> ratio %.2fx",
                         what, cache, tar_rate, loose_rate, ratio)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
