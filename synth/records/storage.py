"""Where a dataset lives: a local directory or an object-store URL (s3://, gs://, any fsspec protocol).

`Store` is the one place that knows the difference. Local directories keep the rename-based atomic writes
of `synth.atomic`. Object stores have no rename, and a write stream closed by an exception publishes
what it has, so a remote file is always written locally first and sent with ONE upload of the finished
file (`put_file` / `write_bytes`); readers never see a partial object. Which objects make a shard
complete, and in which order they are sent, is the writer's business (`synth.records.writer`).

Transient errors (connection resets, timeouts, 5xx the client did not absorb) are retried with
exponential backoff, a bounded number of times; every retry is counted in `RETRIES` (per process) so a
run can report them. Endpoint and credentials come from the standard environment the client reads
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ... for s3; `GOOGLE_APPLICATION_CREDENTIALS` for gs), which
Ray workers inherit from the node they run on.
"""

import contextlib
import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from synth.atomic import atomic_write_bytes
from synth.errors import SynthError

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5  # tries of one remote operation (1 + 4 retries)
BACKOFF_S = 0.2  # first wait; doubles per retry (0.2, 0.4, 0.8, 1.6 s)
RETRIES = [0]  # retries made by this process (a list so that importers see one shared counter)

# Errors that retrying cannot fix: the object or bucket is missing, access is denied, bad arguments.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_PERMANENT_ERRNO = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOTDIR, errno.EISDIR}


def is_url(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations other than file:// (those are local paths)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _transient(err: BaseException) -> bool:
    if isinstance(err, _PERMANENT):
        return False
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    if isinstance(err, OSError):
        return err.errno not in _PERMANENT_ERRNO
    # botocore / aiohttp connection errors that the client did not translate into OSError
    name = type(err).__name__
    return any(word in name for word in ("Connection", "Timeout", "Throttl", "SlowDown"))


def retrying(what: str, call: Callable[[], T], attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S) -> T:
    """`call()`, retried on transient errors with exponential backoff; counts retries in RETRIES[0]."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if attempt == attempts - 1 or not _transient(err):
                raise
            wait = backoff_s * 2**attempt
            RETRIES[0] += 1
            kind = type(err).__name__
            log.warning("%s failed (%s: %s); retry %d in %.1fs", what, kind, err, attempt + 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def check_protocol(location: str) -> None:
    """Raise ValueError when `location` is a URL whose protocol fsspec does not know or cannot load."""
    if not is_url(location):
        return
    import fsspec

    protocol = location.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ValueError(
            f"output.dir={location}: unknown storage protocol {protocol!r}; use a local path, s3://, gs:// "
            "or another fsspec protocol"
        ) from None
    except ImportError as err:
        package = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs"}.get(protocol, f"the {protocol} fsspec driver")
        raise ValueError(
            f"output.dir={location}: the {protocol}:// driver is not installed ({err}); pip install {package}"
        ) from None


class Store:
    """A dataset location: `Store.of("out/")` or `Store.of("s3://bucket/prefix")`.

    Names passed to the methods are relative to the dataset root, with "/" separators ("index/x.parquet").
    """

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = str(location).rstrip("/") if is_url(location) else str(location)
        if is_url(location):
            import fsspec

            # No listings cache: other processes (workers, a rerun) change the prefix between two calls,
            # and a stale cached listing would hide a shard or the manifest.
            self.fs, self.root = fsspec.core.url_to_fs(self.location, use_listings_cache=False)
            self.root = self.root.rstrip("/")
            self.local: Path | None = None
        else:
            self.fs, self.local = None, Path(str(location).removeprefix("file://")).expanduser().absolute()
            self.root = str(self.local)

    @classmethod
    def of(cls, location: "str | os.PathLike | Store") -> "Store":
        return location if isinstance(location, Store) else cls(location)

    @property
    def remote(self) -> bool:
        return self.local is None

    def __str__(self) -> str:
        return self.location if self.remote else str(self.local)

    def url(self, name: str) -> str:
        """The full path or URL of `name` (what `webdataset.gopen` / fsspec open)."""
        return f"{self.location}/{name}" if self.remote else str(self.local / name)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # ----------------------------------------------------------------------------------------- reading

    def exists(self, name: str) -> bool:
        if self.local is not None:
            return (self.local / name).is_file()
        return retrying(f"exists {self.url(name)}", lambda: self.fs.isfile(self._path(name)))

    def is_dir(self) -> bool:
        """Whether the root exists (a directory, or a prefix with at least one object)."""
        if self.local is not None:
            return self.local.is_dir()
        return bool(self.listing())

    def read_bytes(self, name: str) -> bytes:
        if self.local is not None:
            return (self.local / name).read_bytes()
        return retrying(f"read {self.url(name)}", lambda: self.fs.cat_file(self._path(name)))

    def size(self, name: str) -> int:
        if self.local is not None:
            return (self.local / name).stat().st_size
        return int(retrying(f"stat {self.url(name)}", lambda: self.fs.size(self._path(name))))

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A binary read stream (seekable; remote files are read in ranged blocks)."""
        if self.local is not None:
            with open(self.local / name, "rb") as f:
                yield f
        else:
            with retrying(f"open {self.url(name)}", lambda: self.fs.open(self._path(name), "rb")) as f:
                yield f

    def listing(self) -> list[str]:
        """Every file under the root, relative and sorted: ONE listing request on an object store."""
        if self.local is not None:
            if not self.local.is_dir():
                return []
            return sorted(str(p.relative_to(self.local)) for p in self.local.rglob("*") if p.is_file())
        prefix = self.root + "/"
        try:
            found = retrying(f"list {self.location}", lambda: self.fs.find(self.root, refresh=True))
        except FileNotFoundError:
            return []
        return sorted(p[len(prefix) :] for p in found if p.startswith(prefix))

    # ----------------------------------------------------------------------------------------- writing

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write `data` whole: a local rename, or one upload of a finished temporary file."""
        if self.local is not None:
            atomic_write_bytes(self.local / name, data)
            return
        with tempfile.NamedTemporaryFile(prefix="synth-upload-", suffix=".tmp") as tmp:
            tmp.write(data)
            tmp.flush()
            self.put_file(tmp.name, name)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def put_file(self, local_path: str | os.PathLike, name: str) -> None:
        """Send a finished local file as `name` in one upload (retried); locally, move it into place."""
        if self.local is not None:
            target = self.local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local_path, target)
            return
        retrying(f"upload {self.url(name)}", lambda: self.fs.put_file(str(local_path), self._path(name)))

    def remove(self, names: list[str]) -> None:
        """Delete files (missing ones are ignored)."""
        for name in names:
            if self.local is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.local / name).unlink()
            else:
                with contextlib.suppress(FileNotFoundError):
                    retrying(f"delete {self.url(name)}", lambda n=name: self.fs.rm_file(self._path(n)))

    def check_writable(self) -> None:
        """Raise SynthError (one line) when the bucket is missing or the credentials are refused.

        Called before any work; local directories are checked by the run's own output checks.
        """
        if self.local is not None:
            return
        bucket = self.root.split("/", 1)[0]
        how = (
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) and AWS_ENDPOINT_URL for a "
            "non-AWS server"
            if self.location.startswith("s3")
            else "check the credentials of the storage client"
        )
        try:
            exists = retrying(f"check {bucket}", lambda: self.fs.exists(bucket), attempts=2)
        except Exception as err:  # the client's credential / endpoint errors have no common base
            raise SynthError(
                f"output.dir={self.location}: cannot reach bucket {bucket!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); {how}"
            ) from None
        if not exists:
            raise SynthError(
                f"output.dir={self.location}: bucket {bucket!r} does not exist or is not visible with these "
                f"credentials; create it first or fix the URL ({how})"
            )
