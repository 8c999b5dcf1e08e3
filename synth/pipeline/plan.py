"""The sample plan: shard-sized work units, the run's config fingerprint, and the output-directory check.

A run is `num_samples` global indices cut into shards of `output.samples_per_shard` consecutive indices;
shard s holds [s * P, min((s + 1) * P, num_samples)). The shard is the unit of work and of resume.

The fingerprint is a sha256 over the resolved config minus the fields that cannot change a byte of the
samples (the `runtime` group, `num_samples`, the output directory, the preview size, device / batching
knobs of the stages), plus the face model's id. `run.json` in the output directory holds it from the
first shard on; a rerun with a different fingerprint is refused instead of mixing two datasets.
"""

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import synth
from synth.errors import SynthError
from synth.pipeline.config import GenerateConfig
from synth.records.config import Overwrite
from synth.records.storage import Store

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
# Keys (dotted) left out of the fingerprint: they change how a run executes, not what it writes.
NOT_FINGERPRINTED = (
    "runtime",
    "num_samples",  # sample i does not depend on it: a dataset can grow in place
    "model.out",
    "output.dir",
    "output.overwrite",
    "preview_samples",
    "render.device",
    "diffusion.device",
    "diffusion.batch_size",
    "diffusion.compile",
    "model.path",
)


@dataclass(frozen=True)
class ShardUnit:
    """One unit of work: shard `shard_id` holding global indices [start, stop)."""

    shard_id: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def shard_units(num_samples: int, samples_per_shard: int) -> list[ShardUnit]:
    """All shards of a run, in order."""
    return [
        ShardUnit(s, start, min(start + samples_per_shard, num_samples))
        for s, start in enumerate(range(0, num_samples, samples_per_shard))
    ]


def to_jsonable(obj: Any) -> Any:
    """A dataclass config as plain JSON types (enums by value, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fingerprint_config(cfg: GenerateConfig, model_id: str) -> dict[str, Any]:
    """The part of the resolved config that determines the dataset's bytes, plus the model id."""
    tree = to_jsonable(cfg)
    for dotted in NOT_FINGERPRINTED:
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    tree["model_id"] = model_id
    return tree


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def resolve_output_dir(raw: str | Path) -> Store:
    """`output.dir` as a Store: an absolute local path, or an object-store URL (s3://, gs://, ...).

    For a URL the bucket and the credentials are checked here, before any work (one-line SynthError).
    """
    store = Store.of(raw)
    store.check_writable()
    return store


def check_output_dir(out: Path | Store, fingerprint: dict[str, Any], overwrite: Overwrite) -> bool:
    """Decide what to do with an existing output directory; raise `SynthError` to refuse. Writes nothing.

    out: a local directory or a Store (an object-store prefix counts as a directory). Returns True when
    it holds files of this same run (a resume), False when it is new/empty or will be replaced
    (`output.overwrite=REPLACE`).
    """
    store = Store.of(out)
    if store.local is not None and store.local.exists() and not store.local.is_dir():
        raise SynthError(f"output.dir={out} is a file, not a directory; choose another output.dir")
    if not store.listing():
        return False
    if overwrite is Overwrite.REPLACE:
        return False
    if overwrite is Overwrite.ERROR:
        raise SynthError(
            f"output.dir={out} is not empty and output.overwrite=ERROR; choose a new output.dir, or set "
            "output.overwrite=RESUME to finish it or output.overwrite=REPLACE to start over"
        )
    run_file = store.url(RUN_FILE)
    if not store.exists(RUN_FILE):
        raise SynthError(
            f"output.dir={out} is not empty and holds no {RUN_FILE} of a synth run; choose an empty or new "
            "output.dir (or output.overwrite=REPLACE to delete its dataset files)"
        )
    try:
        stored = json.loads(store.read_bytes(RUN_FILE))["fingerprint"]
    except (ValueError, KeyError) as err:
        raise SynthError(
            f"{run_file} is unreadable ({err}); delete it or choose another output.dir"
        ) from None
    if fingerprint_hash(stored) != fingerprint_hash(fingerprint):
        diff = _differences(stored, fingerprint)
        raise SynthError(
            f"output.dir={out} holds a dataset made with a different config (differs in: "
            f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); rerun with the same config to resume, "
            "choose a new output.dir, or set output.overwrite=REPLACE"
        )
    return True


def clear_dataset(out: Path) -> None:
    """Delete what a previous run wrote in `out` (output.overwrite=REPLACE): only synth's own files."""
    for pattern in ("shard-*.tar", ".shard-*", "index", "manifest.json", RUN_FILE, "faces.npy",
                    "landmarks.json", "README.md", "preview.png", "card"):  # fmt: skip
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    log.info("output.overwrite=REPLACE: cleared the previous dataset in %s", out)


def write_run_file(
    out: Path | Store, fingerprint: dict[str, Any], config: dict[str, Any], code_path: dict[str, Any]
) -> None:
    """Record the run's fingerprint before the first shard (what a resume is checked against), and the
    floating-point code path (`synth.cpu.code_path()`) of this run next to those of earlier runs of the
    dataset. A resume on another code path is allowed and says what it means."""
    store = Store.of(out)
    earlier: list[dict[str, Any]] = []
    if store.exists(RUN_FILE):
        earlier = json.loads(store.read_bytes(RUN_FILE)).get("code_paths", [])
    new = code_path["key"] not in {p["key"] for p in earlier}
    if earlier and new:
        log.warning(
            "output.dir=%s was started on code path [%s] (%s); this run uses [%s] (%s): the shards it "
            "adds may differ from those a run on the first code path writes for the same config (geometry "
            "within the tolerance in docs/architecture.md, not byte for byte)",
            store, earlier[0]["key"], earlier[0]["cpu"], code_path["key"], code_path["cpu"],
        )  # fmt: skip
    body = {
        "fingerprint": fingerprint,
        "fingerprint_sha256": fingerprint_hash(fingerprint),
        "config": config,
        "synth_version": synth.__version__,
        "code_paths": [*earlier, code_path] if new else earlier,
    }
    Store.of(out).write_text(RUN_FILE, json.dumps(body, indent=2, sort_keys=True) + "\n")
