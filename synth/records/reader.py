"""Reading shards: tar streams -> raw samples -> decoded arrays, with errors that name shard and key.

Shared by the validator and the training-loop loaders. The tar is read as a stream with `tarfile`
(as webdataset does) rather than with webdataset's own tar iterator so that a truncated or corrupt shard
is reported with the key being read when it broke, not only the URL.
"""

import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable, Collection, Iterator
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


def iter_raw_samples(
    stream: IO[bytes], shard: str, wanted: Callable[[str], bool] | None = None
) -> Iterator[RawSample]:
    """Samples of one tar stream, in tar order: {"__key__", "__shard__", member filename: bytes}.

    wanted: which member filenames to read (default all); the others are skipped without reading their
    data when the stream is seekable (a local file), so reading a few members of large samples is cheap.
    Every sample is yielded, even one with no wanted member. Raises RecordError naming the shard and the
    key being read when the tar is truncated or corrupt, including a damaged header, which `tarfile`
    alone takes for the end of the archive.
    """
    seekable = _seekable(stream)
    current: RawSample | None = None
    last_key: str | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
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
                if wanted is not None and not wanted(filename):
                    continue
                extracted = tar.extractfile(info)
                assert extracted is not None  # regular file
                current[filename] = extracted.read()
            # What follows the last member must be the end-of-archive zero blocks.
            rest = _rest(stream, tar, seekable)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise RecordError(shard, last_key, f"truncated or corrupt tar ({err})") from None
    if rest.strip(b"\0") or len(rest) < (2 if seekable else 1) * tarfile.BLOCKSIZE:
        problem = "damaged tar header" if rest.strip(b"\0") else "no end-of-archive marker"
        raise RecordError(shard, last_key, f"truncated or corrupt tar ({problem} after this key)")
    if current is not None:
        yield current


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError):
        return False


def _rest(stream: IO[bytes], tar: tarfile.TarFile, seekable: bool) -> bytes:
    """The bytes after the last member header `tar` accepted (up to 64 KiB: enough to see damage)."""
    if seekable:
        stream.seek(tar.offset)
        return stream.read(1 << 16)
    # Stream mode: tarfile consumed the first end block; its read-ahead buffer holds what followed.
    return bytes(getattr(tar.fileobj, "buf", b"")) + stream.read(1 << 16)


def check_crc(
    raw: RawSample, members: list[str], crc32: list[int], wanted: Callable[[str], bool] | None = None
) -> None:
    """Check a raw sample's (wanted) members and their CRC-32s against its index row (RecordError)."""
    shard, key = raw["__shard__"], raw["__key__"]
    expected = {m: c for m, c in zip(members, crc32, strict=True) if wanted is None or wanted(m)}
    present = sorted(k for k in raw if not k.startswith("__"))
    if present != sorted(expected):
        missing, extra = sorted(set(expected) - set(present)), sorted(set(present) - set(expected))
        raise RecordError(shard, key, f"members differ from the index: missing {missing}, unexpected {extra}")
    for filename, crc in expected.items():
        if zlib.crc32(raw[filename]) != crc:
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
