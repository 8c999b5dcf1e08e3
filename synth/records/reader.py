"""Reading shards: tar streams -> raw samples -> decoded arrays, with errors that name shard and key.

Shared by the validator and the training-loop loaders. The tar is read as a stream with `tarfile`
(as webdataset does) rather than with webdataset's own tar iterator so that a truncated or corrupt shard
is reported with the key being read when it broke, not only the URL.
"""

import hashlib
import os
import tarfile
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from synth.errors import SynthError
from synth.records import codecs
from synth.records.schema import KEY_DIGITS, member_of

RawSample = dict[str, Any]  # {"__key__": str, "__shard__": str, "<member filename>": bytes, ...}


class RecordError(SynthError):
    """A dataset problem (missing, truncated, altered or undecodable data); names the shard and key."""

    def __init__(self, shard: str, key: str | None, message: str) -> None:
        self.shard, self.key, self.message = shard, key, message
        where = f"{shard} key {key}" if key is not None else shard
        super().__init__(f"{where}: {message}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_label(url: str) -> str:
    """The short name of a shard URL or path for messages (`shard-000003.tar`)."""
    return Path(str(url)).name


def iter_raw_samples(stream: IO[bytes], shard: str) -> Iterator[RawSample]:
    """Samples of one tar stream, in tar order: {"__key__", "__shard__", member filename: bytes}.

    Raises RecordError naming the shard and the key being read when the tar is truncated or corrupt.
    """
    current: RawSample | None = None
    last_key: str | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, dot, filename = info.name.partition(".")
                if not dot or len(key) != KEY_DIGITS or not key.isdigit():
                    raise RecordError(shard, last_key, f"tar member {info.name!r} is not <key>.<member>")
                last_key = key
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": shard}
                if filename in current:
                    raise RecordError(shard, key, f"member {filename} appears twice")
                extracted = tar.extractfile(info)
                assert extracted is not None  # regular file
                current[filename] = extracted.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise RecordError(shard, last_key, f"truncated or corrupt tar ({err})") from None
    if current is not None:
        yield current


def check_crc(raw: RawSample, members: list[str], crc32: list[int]) -> None:
    """Compare a raw sample's member names and CRC-32s with its index row; RecordError on a mismatch."""
    shard, key = raw["__shard__"], raw["__key__"]
    present = sorted(k for k in raw if not k.startswith("__"))
    if present != list(members):
        missing, extra = sorted(set(members) - set(present)), sorted(set(present) - set(members))
        raise RecordError(shard, key, f"members differ from the index: missing {missing}, unexpected {extra}")
    for filename, expected in zip(members, crc32, strict=True):
        if zlib.crc32(raw[filename]) != expected:
            raise RecordError(shard, key, f"{filename}: CRC-32 differs from the index (altered data)")


def decode_raw(raw: RawSample, keys: Collection[str] | None = None) -> dict[str, Any]:
    """Decode a raw sample into numpy arrays (member layouts of `synth.records.schema`).

    keys: member names to decode (None: all present). `rgb` becomes one (K, S, S, 3) uint8 array in
    k order, `latents` a dict of 1-D float32 arrays, `meta` a dict. Unknown member files raise.
    """
    shard, key = raw["__shard__"], raw["__key__"]
    out: dict[str, Any] = {"__key__": key, "__shard__": shard}
    rgb: dict[int, np.ndarray] = {}
    for filename, data in raw.items():
        if filename.startswith("__"):
            continue
        member = member_of(filename)
        if member is None:
            raise RecordError(shard, key, f"unknown member {filename}")
        if keys is not None and member.name not in keys:
            continue
        try:
            value = codecs.DECODERS[member.encoding](data)
        except codecs.DecodeError as err:
            raise RecordError(shard, key, f"{filename}: {err}") from None
        if member.name == "rgb":
            stem = filename.removesuffix(".jpg")
            rgb[0 if stem == "rgb" else int(stem[4:])] = value
        else:
            out[member.name] = value
    if rgb:
        if sorted(rgb) != list(range(len(rgb))):
            raise RecordError(shard, key, f"rgb images are not numbered 0..K-1: {sorted(rgb)}")
        try:
            out["rgb"] = np.stack([rgb[k] for k in range(len(rgb))])  # (K, S, S, 3)
        except ValueError:
            raise RecordError(shard, key, "rgb images differ in size") from None
    return out
