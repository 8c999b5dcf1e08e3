"""synth.records: the dataset format (schema), writing shards, validating, and loading them.

`load_webdataset`, `read_index`, `select`, `collate` and `Selection` are imported lazily so that
`synth validate` and the writer's users do not pay for importing torch and webdataset's loaders.
"""

from typing import TYPE_CHECKING, Any

from synth.records.schema import MEMBERS, SCHEMA_VERSION

if TYPE_CHECKING:
    from synth.records.loaders import Selection, collate, load_webdataset, read_index, select

_LAZY = {"load_webdataset", "read_index", "select", "collate", "Selection"}
__all__ = ["MEMBERS", "SCHEMA_VERSION", "Selection", "collate", "load_webdataset", "read_index", "select"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from synth.records import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'synth.records' has no attribute {name!r}")
