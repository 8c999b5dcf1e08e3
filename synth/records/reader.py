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
    current: RawSample | None = None
    last_key: str | None = None
    try:
        for name, data in _members(stream, wanted):
            key, dot, filename = name.partition(".")
            if not dot or len(key) != KEY_DIGITS or not key.isdigit():
                raise RecordError(shard, last_key, f"tar member {name!r} is not <key>.<member>")
            last_key = key
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__shard__": shard}
            if filename in current:
                raise RecordError(shard, key, f"member {filename} appears twice")
            if data is not None:
                current[filename] = data
    except (_Corrupt, tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise RecordError(shard, last_key, f"truncated or corrupt tar ({err})") from None
    if current is not None:
        yield current


class _Corrupt(Exception):
    """Damage found while reading a tar (the caller adds shard and key)."""


class _Unsupported(Exception):
    """A tar header the fast reader leaves to `tarfile` (pax / GNU extensions, links, ...)."""


def _members(stream: IO[bytes], wanted: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes or None when not wanted) of every regular member, in order; then checks the end."""
    if not _seekable(stream):
        yield from _tarfile_members(stream, wanted, seekable=False)
        return
    done = 0
    try:
        for item in _ustar_members(stream, wanted):
            yield item
            done += 1
        return
    except _Unsupported:
        stream.seek(0)
    for i, item in enumerate(_tarfile_members(stream, wanted, seekable=True)):
        if i >= done:
            yield item


def _ustar_members(
    stream: IO[bytes], wanted: Callable[[str], bool] | None
) -> Iterator[tuple[str, bytes | None]]:
    """Plain ustar / GNU regular-file headers of a seekable tar, parsed directly.

    Hand-written because `tarfile` spends ~80 us of Python per header (~1 ms per 12-member sample,
    measured in benchmarks/bench_records.py) where this needs a few; anything beyond plain file and
    directory headers raises _Unsupported and the caller falls back to `tarfile`.
    """
    block = tarfile.BLOCKSIZE
    pos = stream.tell()
    while True:
        header = stream.read(block)
        if len(header) < block:
            raise _Corrupt("no end-of-archive marker" if not header else "truncated header")
        if not header.strip(b"\0"):
            rest = header + stream.read(1 << 16)
            if rest.strip(b"\0"):
                raise _Corrupt("damaged tar header after this key")
            if len(rest) < 2 * block:
                raise _Corrupt("no end-of-archive marker")
            return
        stored = header[148:156].split(b"\0", 1)[0].strip()
        unsigned = sum(header) - sum(header[148:156]) + 8 * 0x20
        try:
            checksum_ok = int(stored or b"-1", 8) == unsigned
        except ValueError:
            checksum_ok = False
        if not checksum_ok:
            raise _Corrupt("damaged tar header after this key")
        typeflag = header[156:157]
        size_field = header[124:136]
        if typeflag not in (b"0", b"\0", b"5") or size_field[0] & 0x80 or header[257:262] != b"ustar":
            raise _Unsupported
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
        padded = (size + block - 1) // block * block
        data_pos = pos + block
        pos = data_pos + padded
        if typeflag == b"5":
            stream.seek(pos)
            continue
        filename = name.decode("utf-8")
        if wanted is None or wanted(filename.partition(".")[2]):
            data = stream.read(size)
            if len(data) < size:
                raise _Corrupt("unexpected end of data")
            stream.seek(pos)
            yield filename, data
        else:
            stream.seek(pos)
            yield filename, None


def _tarfile_members(
    stream: IO[bytes], wanted: Callable[[str], bool] | None, seekable: bool
) -> Iterator[tuple[str, bytes | None]]:
    """Members through `tarfile` (any tar format; streams that cannot seek)."""
    with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
        for info in tar:
            if not info.isreg():
                continue
            if wanted is not None and not wanted(info.name.partition(".")[2]):
                yield info.name, None
                continue
            extracted = tar.extractfile(info)
            assert extracted is not None  # regular file
            yield info.name, extracted.read()
        # What follows the last member must be the end-of-archive zero blocks: tarfile takes a damaged
        # header for the end of the archive.
        rest = _rest(stream, tar, seekable)
    if rest.strip(b"\0"):
        raise _Corrupt("damaged tar header after this key")
    if len(rest) < (2 if seekable else 1) * tarfile.BLOCKSIZE:
        raise _Corrupt("no end-of-archive marker")


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
