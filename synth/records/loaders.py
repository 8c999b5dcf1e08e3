"""Training-loop access: a webdataset pipeline over the shards, the Parquet index, and selections.

```python
from torch.utils.data import DataLoader
from synth.records import load_webdataset, read_index, select, collate

ds = load_webdataset("out/", keys=("mesh", "au", "depth"), shuffle=True, split="train")
for epoch in range(10):
    ds.set_epoch(epoch)                          # new shard order and shuffle buffer draws per epoch
    for batch in DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate):
        ...
```

A dataset may live in a local directory or at an object-store / web URL (`s3://bucket/prefix`,
`gs://...`, `https://...`): shards are then streamed through fsspec (ranged reads; members that are not
asked for are skipped, not downloaded, when they are large enough), with the same index checks.

Each sample comes exactly once per epoch whatever the number of DataLoader workers and nodes: shards are
the unit of splitting (node, then worker), so every shard is read by exactly one worker. For a perfect
balance use at least as many shards as workers x nodes.
"""

import functools
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from synth.errors import SynthError
from synth.records.reader import RawSample, RecordError, check_crc, decode_raw, iter_raw_samples, shard_label
from synth.records.schema import AU_NAMES, MANIFEST, MEMBER_BY_NAME, SPLITS, index_schema, member_of
from synth.records.storage import Store, is_url, retrying

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "warn")


class RecordWarning(UserWarning):
    """A damaged sample or shard was skipped (`on_error="warn"`)."""


# -------------------------------------------------------------------------------------------- the index


def read_index(
    dataset_dir: str | os.PathLike, columns: Sequence[str] | None = None, filters: Any = None
) -> pa.Table:
    """The dataset's Parquet index as one table, sorted by `index`.

    Reads the index parts the manifest lists (all `index/*.parquet` when there is no manifest yet, e.g.
    while a run is going). columns: columns to read (default all, see docs/dataset-format.md);
    filters: pyarrow `filters` (e.g. `[("split", "=", "train")]`), applied while reading.
    """
    root = Store.of(dataset_dir)
    if root.exists(MANIFEST):
        names = [s["index_part"] for s in json.loads(root.read_bytes(MANIFEST))["shards"]]
    else:
        names = [n for n in root.listing() if n.startswith("index/") and n.endswith(".parquet")]
    if not names:
        raise SynthError(f"{root.url('index')} holds no index parts; is {root} a synth dataset (output.dir)?")
    wanted = None if columns is None else sorted(set(columns) | {"index"})
    if root.local is not None:
        parts, filesystem = [root.url(n) for n in names], None
    else:  # pyarrow reads through the fsspec filesystem (paths without the protocol)
        parts, filesystem = [f"{root.root}/{n}" for n in names], root.fs
    table = pq.read_table(
        parts, columns=wanted, filters=filters, schema=index_schema(), filesystem=filesystem
    )
    table = table.sort_by("index")
    return table if columns is None else table.select(list(columns))


@dataclass(frozen=True)
class Selection:
    """The minimal shards + keys to read for a subset of a dataset.

    shards: shard file names relative to the dataset directory, sorted; keys: the selected sample keys.
    """

    shards: tuple[str, ...]
    keys: frozenset[str]

    @classmethod
    def from_table(cls, table: pa.Table) -> "Selection":
        """The selection of the rows of an index table (after any filter); needs `key` and `shard`."""
        shards = tuple(sorted(set(table.column("shard").to_pylist())))
        return cls(shards=shards, keys=frozenset(table.column("key").to_pylist()))

    def __len__(self) -> int:
        return len(self.keys)


def select(
    source: str | os.PathLike | pa.Table,
    *,
    split: str | Sequence[str] | None = None,
    expression: str | Sequence[str] | None = None,
    identity: int | Sequence[int] | None = None,
    au_min: Mapping[str, float] | None = None,
    au_names: Sequence[str] | None = None,
) -> Selection:
    """Select samples by split, expression name(s), identity id(s) and minimum AU intensities.

    source: a dataset directory or an index table (from `read_index`, possibly filtered already).
    au_min: {AU name: minimum intensity}, all must hold; AU names come from the dataset (`au_names.json`)
    or from `au_names` when `source` is a table. Returns the shards + keys to pass to `load_webdataset`.
    """
    if isinstance(source, pa.Table):
        table = source
    else:
        table = read_index(source, columns=["key", "shard", "split", "expression", "identity_id", "au"])
        if au_min and au_names is None:
            au_names = _dataset_au_names(Store.of(source))
    conditions = []
    if split is not None:
        splits = [split] if isinstance(split, str) else list(split)
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise SynthError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")
        conditions.append(pc.is_in(table["split"], pa.array(splits)))
    if expression is not None:
        names = [expression] if isinstance(expression, str) else list(expression)
        conditions.append(pc.is_in(table["expression"], pa.array(names)))
    if identity is not None:
        ids = [identity] if isinstance(identity, int) else list(identity)
        conditions.append(pc.is_in(table["identity_id"], pa.array(ids, pa.int64())))
    for name, low in (au_min or {}).items():
        if au_names is None or name not in au_names:
            raise SynthError(f"unknown AU {name!r} in au_min; the dataset's AUs are {list(au_names or [])}")
        column = pc.list_element(table["au"], list(au_names).index(name))
        conditions.append(pc.greater_equal(column, pa.scalar(low, pa.float32())))
    if conditions:
        table = table.filter(functools.reduce(pc.and_, conditions))
    return Selection.from_table(table)


def _dataset_au_names(root: Store) -> list[str]:
    if not root.exists(AU_NAMES):
        raise SynthError(f"{root.url(AU_NAMES)} is missing; pass au_names= explicitly")
    return json.loads(root.read_bytes(AU_NAMES))


# ------------------------------------------------------------------------------------------ the pipeline


class _ShardList(IterableDataset):
    """First pipeline stage: {"url": shard} for every shard, in a per-epoch seeded order when shuffled."""

    def __init__(self, urls: list[str], shuffle: bool, seed: int) -> None:
        super().__init__()
        self.urls, self.shuffle, self.seed, self.epoch = urls, shuffle, seed, 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        order = list(self.urls)
        if self.shuffle:
            # Every worker and node draws the same permutation, so the split that follows is a partition.
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        for url in order:
            yield {"url": url}


def _index_part_of(url: str) -> Path | io.BytesIO | None:
    """The index part next to a shard (`<dir>/index/shard-N.parquet`): a local path, the bytes of a
    remote one (one small request), or None when there is none."""
    if url.startswith("pipe:"):
        return None
    if is_url(url):
        import fsspec

        base, _, name = url.rpartition("/")
        part_url = f"{base}/index/{name.removesuffix('.tar')}.parquet"
        fs, path = fsspec.core.url_to_fs(part_url)
        try:
            return io.BytesIO(retrying(f"read {part_url}", lambda: fs.cat_file(path)))
        except (FileNotFoundError, PermissionError):
            return None  # S3 answers 403 for a missing key to clients that may not list the bucket
        except Exception as err:
            if getattr(err, "status", None) in (403, 404):  # a web server without the index part
                return None
            raise
    path = Path(url)
    part = path.parent / "index" / f"{path.stem}.parquet"
    return part if part.is_file() else None


# Remote shards are read in blocks this large: one ranged request per block, and members skipped by
# `keys` that span whole blocks are never downloaded.
REMOTE_BLOCK = 4 << 20


def _open_shard(url: str) -> Any:
    """A read stream for a shard: fsspec for URLs (s3://, gs://, https://, ...), webdataset otherwise."""
    if is_url(url) and not url.startswith("pipe:"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return retrying(
            f"open {url}", lambda: fs.open(path, "rb", block_size=REMOTE_BLOCK, cache_type="readahead")
        )
    return wds.gopen(url, "rb")


def _handle(err: RecordError, on_error: str) -> None:
    if on_error == "raise":
        raise err
    warnings.warn(f"skipped: {err}", RecordWarning, stacklevel=2)
    log.warning("skipped: %s", err)


class _Wanted:
    """Predicate on tar member filenames: does it belong to one of `members` (None: all)?"""

    def __init__(self, members: frozenset[str] | None) -> None:
        self.members = members
        self._seen: dict[str, bool] = {}  # filenames repeat in every sample

    def __call__(self, filename: str) -> bool:
        if filename not in self._seen:
            self._seen[filename] = self.members is None or _member_name(filename) in self.members
        return self._seen[filename]


class _ReadShards(wds.PipelineStage):
    """Open each shard, stream its raw samples, keep the selected ones, check them against the index.

    split / keys select samples, members selects which members' bytes are read. With an index part next
    to the shard (a local dataset), the kept samples' members and CRC-32s are checked against their rows
    and every key the index lists must be seen (a truncated shard is noticed even when it ends cleanly).
    """

    def __init__(
        self,
        split: frozenset[str] | None,
        keys: frozenset[str] | None,
        members: frozenset[str] | None,
        on_error: str,
    ) -> None:
        self.split, self.keys, self.members, self.on_error = split, keys, members, on_error

    def run(self, src: Iterable[dict[str, str]]) -> Iterator[RawSample]:
        for item in src:
            yield from self._shard(item["url"])

    def _expected(self, url: str) -> dict[str, tuple[list[str], list[int]]] | None:
        part = _index_part_of(url)
        if part is None:
            return None
        table = pq.ParquetFile(part).read(columns=["key", "split", "members", "crc32"])
        expected = {}
        for key, split, members, crc in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
            if (self.split is None or split in self.split) and (self.keys is None or key in self.keys):
                expected[key] = (members, crc)
        return expected

    def _shard(self, url: str) -> Iterator[RawSample]:
        shard = shard_label(url)
        expected = self._expected(url)
        if expected is not None and not expected:
            return  # nothing selected in this shard
        # Without an index, the split comes from meta.json, which must then be read.
        need_meta = expected is None and self.split is not None and self.members is not None
        wanted = _Wanted(self.members | {"meta"} if need_meta else self.members)
        seen: set[str] = set()
        stream = _open_shard(url)
        try:
            for raw in iter_raw_samples(stream, shard, wanted):
                key = raw["__key__"]
                raw["__url__"] = url
                if expected is not None:
                    if key not in expected:
                        continue
                    seen.add(key)
                    try:
                        check_crc(raw, *expected[key], wanted)
                    except RecordError as err:
                        _handle(err, self.on_error)
                        continue
                else:
                    if self.keys is not None and key not in self.keys:
                        continue
                    if self.split is not None and not self._meta_split_ok(raw):
                        continue
                yield raw
        except RecordError as err:
            _handle(err, self.on_error)
            return
        finally:
            stream.close()
        if expected is not None and len(seen) < len(expected):
            missing = sorted(set(expected) - seen)
            message = f"{len(missing)} indexed sample(s) missing from the tar (truncated?): {missing[:5]}"
            _handle(RecordError(shard, missing[0], message), self.on_error)

    def _meta_split_ok(self, raw: RawSample) -> bool:
        try:
            return json.loads(raw["meta.json"])["split"] in self.split
        except (KeyError, ValueError) as err:
            message = f"meta.json has no readable split: {err}"
            raise RecordError(raw["__shard__"], raw["__key__"], message) from None


class _Shuffle(wds.PipelineStage):
    """A shuffle buffer seeded from (seed, epoch, node rank, worker id): reproducible per epoch."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize, self.seed, self.epoch = bufsize, seed, 0

    def run(self, src: Iterator[RawSample]) -> Iterator[RawSample]:
        import random

        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        state = np.random.SeedSequence([self.seed, self.epoch, rank, worker]).generate_state(2)
        rng = random.Random(int(state[0]) << 32 | int(state[1]))
        return wds.filters._shuffle(iter(src), bufsize=self.bufsize, initial=self.bufsize, rng=rng)


class _Decode(wds.PipelineStage):
    """Raw bytes -> torch tensors (numpy layouts of the member table; latents a dict; meta a dict)."""

    def __init__(self, keys: frozenset[str] | None, on_error: str) -> None:
        self.keys, self.on_error = keys, on_error

    def run(self, src: Iterable[RawSample]) -> Iterator[dict[str, Any]]:
        for raw in src:
            try:
                sample = decode_raw(raw, self.keys)
            except RecordError as err:
                _handle(err, self.on_error)
                continue
            sample["__url__"] = raw["__url__"]
            yield {k: _to_torch(v) for k, v in sample.items()}


class _SelectRaw(wds.PipelineStage):
    """Keep the raw bytes of the selected members (`decode=False`)."""

    def __init__(self, keys: frozenset[str] | None) -> None:
        self.keys = keys

    def run(self, src: Iterable[RawSample]) -> Iterator[RawSample]:
        for raw in src:
            if self.keys is None:
                yield raw
                continue
            yield {k: v for k, v in raw.items() if k.startswith("__") or _member_name(k) in self.keys}


def _member_name(filename: str) -> str | None:
    member = member_of(filename)
    return None if member is None else member.name


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
        return {k: torch.from_numpy(v) for k, v in value.items()}
    return value


class SynthWebDataset(wds.DataPipeline):
    """The IterableDataset `load_webdataset` returns; `set_epoch(e)` reseeds shard order and shuffle."""

    def __init__(self, shard_list: _ShardList, stages: list[Any], shuffler: _Shuffle | None) -> None:
        super().__init__(shard_list, *stages)
        self._shard_list, self._shuffler = shard_list, shuffler

    def set_epoch(self, epoch: int) -> None:
        self._shard_list.epoch = epoch
        if self._shuffler is not None:
            self._shuffler.epoch = epoch


def load_webdataset(
    dir_or_urls: str | os.PathLike | Sequence[str | os.PathLike],
    keys: Sequence[str] | None = None,
    *,
    shuffle: bool = False,
    split: str | Sequence[str] | None = None,
    selection: Selection | None = None,
    shuffle_buffer: int = 256,
    seed: int = 0,
    on_error: str = "raise",
    decode: bool = True,
) -> SynthWebDataset:
    """A torch IterableDataset over a synth dataset's shards, decoding samples to tensors.

    dir_or_urls: a dataset directory (shards from its manifest), or shard paths / URLs (a list, or a
        brace pattern such as "out/shard-{000000..000009}.tar"; anything `webdataset.gopen` opens).
    keys: member names to decode (default all), e.g. ("mesh", "au", "depth", "rgb"); see MEMBERS.
    shuffle: shuffle the shard order per epoch and samples through a buffer of `shuffle_buffer`.
    split: keep only samples of this split (or these splits).
    selection: keep only these shards + keys (from `select`); needs a dataset directory.
    seed: seeds the shuffles (with the epoch, see `set_epoch`); the same seed gives the same order.
    on_error: "raise" -> a RecordError naming shard and key on damaged data; "warn" -> skip the sample
        (or the rest of a truncated shard) with a RecordWarning.
    decode: False yields the members' raw bytes ({"mesh.npy": b"...", ...}, for custom or GPU decoding);
        the CRC checks against the index still apply.

    Each yielded sample is a dict: "__key__", "__shard__" (file name), "__url__", and per member a tensor
    with the member table's dtype and shape (depth (H, W) float32 metres, normal (H, W, 3) float32, mask
    (H, W) bool, canny / shaded (H, W) uint8, rgb (K, S, S, 3) uint8, mesh (N, 3), au (A,), lmk2d / lmk3d
    (L, 3)), "latents" as {z_id, z_ex, w_id, w_ex} tensors and "meta" as the meta.json dict. Batch with
    `collate`.
    """
    if on_error not in ON_ERROR:
        raise SynthError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if keys is not None:
        if isinstance(keys, str):
            raise SynthError(f"keys must be a sequence of member names, got the string {keys!r}")
        unknown = sorted(set(keys) - set(MEMBER_BY_NAME))
        if unknown:
            raise SynthError(f"unknown member(s) {unknown} in keys; members are {list(MEMBER_BY_NAME)}")
    splits = None
    if split is not None:
        splits = frozenset([split] if isinstance(split, str) else split)
        if not splits <= set(SPLITS):
            raise SynthError(f"unknown split(s) {sorted(splits - set(SPLITS))}; splits are {list(SPLITS)}")
    if shuffle_buffer < 1:
        raise SynthError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
    urls = _resolve_urls(dir_or_urls, keys, selection)
    wanted = frozenset(keys) if keys is not None else None
    shard_list = _ShardList(urls, shuffle=shuffle, seed=seed)
    shuffler = _Shuffle(shuffle_buffer, seed) if shuffle else None
    stages = [
        wds.split_by_node,
        wds.split_by_worker,
        _ReadShards(splits, selection.keys if selection is not None else None, wanted, on_error),
        shuffler,
        _Decode(wanted, on_error) if decode else _SelectRaw(wanted),
    ]
    return SynthWebDataset(shard_list, [s for s in stages if s is not None], shuffler)


def _resolve_urls(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    keys: Sequence[str] | None,
    selection: Selection | None,
) -> list[str]:
    if isinstance(source, str | os.PathLike) and _is_dataset_root(str(source)):
        root = Store.of(source)
        manifest_path = root.url(MANIFEST)
        if not root.exists(MANIFEST):
            raise SynthError(
                f"{manifest_path} is missing: the dataset is incomplete; finish the run or "
                f"pass shard paths explicitly"
            )
        manifest = json.loads(root.read_bytes(MANIFEST))
        missing = sorted(set(keys or ()) - set(manifest["members"]))
        if missing:
            raise SynthError(
                f"{root}: member(s) {missing} were not written; members are {manifest['members']}"
            )
        names = [s["name"] for s in manifest["shards"]]
        if selection is not None:
            unknown = sorted(set(selection.shards) - set(names))
            if unknown:
                raise SynthError(f"selection names shard(s) {unknown[:3]} not in {manifest_path}")
            names = list(selection.shards)
        return [root.url(name) for name in names]
    if selection is not None:
        raise SynthError(
            "selection= needs the dataset directory as dir_or_urls (its shard names are relative)"
        )
    if isinstance(source, str | os.PathLike):
        urls = list(wds.shardlists.expand_urls(str(source)))
    else:
        urls = [str(u) for u in source]
    if not urls:
        raise SynthError(f"no shards in {source!r}")
    return urls


def _is_dataset_root(source: str) -> bool:
    """A local directory, or a URL that names a dataset prefix rather than shards (no .tar, no braces)."""
    if is_url(source) and not source.startswith("pipe:"):
        return not source.rstrip("/").endswith(".tar") and "{" not in source
    return Path(source).is_dir()


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples from `load_webdataset`: tensors stacked (B, ...), latents per name, the rest as lists."""
    out: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[name] = torch.stack(values)
        elif name == "latents":
            out[name] = {k: torch.stack([v[k] for v in values]) for k in values[0]}
        else:
            out[name] = values
    return out
