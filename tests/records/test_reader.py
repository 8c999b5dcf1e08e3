"""The tar reader: the fast ustar path, the tarfile fallback and the stream path agree on any tar."""

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from synth.records.reader import RecordError, iter_raw_samples

MEMBERS = {
    f"{k:09d}.{m}": bytes([k, i]) * (100 * i + 7) for k in range(3) for i, m in enumerate(["a.npy", "b.png"])
}


def _tar(path: Path, fmt: int, extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for n, (name, data) in enumerate(MEMBERS.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT and n == 2:
                info.pax_headers = {"comment": "forces a pax header in the middle"}
            tar.addfile(info, io.BytesIO(data))
            if n == 3:
                for e in extra:
                    tar.addfile(e)
    return path


def _read(path: Path, seekable: bool, wanted=None) -> list[dict]:
    if seekable:
        with open(path, "rb") as f:
            return list(iter_raw_samples(f, path.name, wanted))
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as proc:
        return list(iter_raw_samples(proc.stdout, path.name, wanted))


def _expected(wanted=None) -> list[dict]:
    out: dict[str, dict] = {}
    for name, data in MEMBERS.items():
        key, _, member = name.partition(".")
        sample = out.setdefault(key, {"__key__": key, "__shard__": "t.tar"})
        if wanted is None or wanted(member):
            sample[member] = data
    return list(out.values())


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=str)
@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_every_format_reads_the_same(tmp_path: Path, fmt: int, seekable: bool) -> None:
    link = tarfile.TarInfo("000000001.link")
    link.type, link.linkname = tarfile.SYMTYPE, "000000001.a.npy"  # not a regular file: forces the fallback
    path = _tar(tmp_path / "t.tar", fmt, extra=[link])
    assert _read(path, seekable) == _expected()
    only_b = lambda member: member == "b.png"  # noqa: E731
    assert _read(path, seekable, only_b) == _expected(only_b)


def test_corrupt_checksum_names_the_key(tmp_path: Path) -> None:
    path = _tar(tmp_path / "t.tar", tarfile.USTAR_FORMAT)
    with tarfile.open(path) as tar:
        offset = tar.getmember("000000002.a.npy").offset
    data = bytearray(path.read_bytes())
    data[offset + 130] ^= 1  # a bit of the size field
    path.write_bytes(bytes(data))
    expected = r"t\.tar key 000000001: truncated or corrupt tar \(damaged tar header"
    with pytest.raises(RecordError, match=expected):
        _read(path, True)
