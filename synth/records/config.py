"""`OutputConfig`: where and how a dataset is written (the `output` group of `synth generate`)."""

from dataclasses import dataclass, field
from enum import Enum

from synth.records.schema import OPTIONAL_MEMBERS
from synth.records.storage import check_protocol


class Overwrite(Enum):
    """What to do when the output directory already holds files.

    RESUME: keep complete shards written by the same config and write the missing ones (the default).
    ERROR: refuse any non-empty directory.
    REPLACE: delete the previous dataset's files (shards, index, manifest, dataset files) first.
    """

    RESUME = "resume"
    ERROR = "error"
    REPLACE = "replace"


@dataclass
class OutputConfig:
    """Dataset output settings.

    dir: output directory (created) or object-store URL (s3://bucket/prefix, gs://..., any fsspec
        protocol; endpoint and credentials from the client's standard environment, e.g. AWS_ENDPOINT_URL);
        shards go to `dir/shard-NNNNNN.tar`, index parts to `dir/index/`.
    samples_per_shard: samples per tar shard (the unit of work and of resume).
    jpeg_quality: quality of the RGB JPEGs (1..100).
    png_compression: zlib level of the PNG maps (0..9; 1 is ~3x faster than 6 for ~10% more bytes).
    members: optional members to write (mesh, latents, au and meta are always written).
    overwrite: policy for a non-empty output directory.
    """

    dir: str = "synth_dataset"
    samples_per_shard: int = 64
    jpeg_quality: int = 95
    png_compression: int = 1
    members: list[str] = field(default_factory=lambda: list(OPTIONAL_MEMBERS))
    overwrite: Overwrite = Overwrite.RESUME

    def __post_init__(self) -> None:
        if not str(self.dir).strip():
            raise ValueError("output.dir must be a non-empty path, got ''")
        check_protocol(str(self.dir))
        if not 1 <= self.samples_per_shard <= 100_000:
            raise ValueError(f"output.samples_per_shard must be in [1, 100000], got {self.samples_per_shard}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"output.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f"output.png_compression must be in [0, 9], got {self.png_compression}")
        unknown = sorted(set(self.members) - set(OPTIONAL_MEMBERS))
        if unknown:
            raise ValueError(
                f"output.members has unknown member(s) {unknown}; allowed: {list(OPTIONAL_MEMBERS)}"
            )
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"output.members lists a member twice: {list(self.members)}")
        if not isinstance(self.overwrite, Overwrite):
            allowed = [o.name for o in Overwrite]
            raise ValueError(f"output.overwrite must be one of {allowed}, got {self.overwrite!r}")
