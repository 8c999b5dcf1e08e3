"""The built face model sent to workers that share no disk with the driver. No Ray here.

The driver packs the model directory once (`pack_model`: every file's bytes plus a sha256 over names and
bytes); `synth.pipeline.ray_exec` puts the package in Ray's object store. On each node the first worker
that needs it unpacks it into a per-node cache, `<cache>/shipped/<sha256>/` (`$SYNTH_CACHE_DIR/shipped`,
else `$XDG_CACHE_HOME/synth/shipped`, else `~/.cache/synth/shipped`), through a temporary directory and
one rename, so concurrent workers never see half a model; later workers find it there, check its sha256
and skip the object-store transfer. A cached copy whose bytes no longer match is replaced.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synth.errors import SynthError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPackage:
    """A model directory as bytes: files {relative path with "/": bytes} and their sha256 (`files_sha256`)."""

    sha256: str
    files: dict[str, bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.files.values())


def files_sha256(files: dict[str, bytes]) -> str:
    """sha256 over the sorted (name, size, bytes) of a directory's files: equal iff the trees are equal."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pack_model(model_dir: str | os.PathLike) -> ModelPackage:
    """Read a built model directory into a `ModelPackage` (raises SynthError when it is empty/missing)."""
    root = Path(model_dir)
    files = _read_tree(root) if root.is_dir() else {}
    if not files:
        raise SynthError(f"model directory {root} is missing or empty; build it first (synth build-model)")
    return ModelPackage(sha256=files_sha256(files), files=files)


def shipped_root() -> Path:
    """The per-node cache of shipped models."""
    if os.environ.get("SYNTH_CACHE_DIR"):
        return Path(os.environ["SYNTH_CACHE_DIR"]) / "shipped"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synth" / "shipped"


def cached_model(sha256: str, root: Path | None = None) -> Path | None:
    """The cached model directory with this sha256, or None (absent, or its bytes changed)."""
    path = (root or shipped_root()) / sha256
    if not path.is_dir():
        return None
    if files_sha256(_read_tree(path)) != sha256:
        log.warning("shipped model cache %s does not match its sha256; replacing it", path)
        return None
    return path


def unpack_model(package: ModelPackage, root: Path | None = None) -> Path:
    """Write `package` to `<root>/<sha256>/` (temporary directory, then one rename); returns the path."""
    root = root or shipped_root()
    target = root / package.sha256
    if cached_model(package.sha256, root) is not None:
        return target
    if files_sha256(package.files) != package.sha256:
        raise SynthError(f"shipped model {package.sha256[:12]}: bytes do not match its sha256 (damaged)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{package.sha256[:12]}.", suffix=".tmp"))
    try:
        for name, data in package.files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if target.exists():  # a stale copy (failed the check above)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if cached_model(package.sha256, root) is None:  # not a concurrent worker that got there first
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    mib = package.nbytes / 2**20
    log.info("shipped model %s unpacked into %s (%.1f MiB)", package.sha256[:12], target, mib)
    return target
