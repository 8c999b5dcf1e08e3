"""docs/loading.md runs as written, and docs/dataset-format.md covers every member and index column."""

import re
from pathlib import Path

import pytest

from synth.records.schema import INDEX_COLUMNS, MEMBERS, META_FIELDS
from tests.records.conftest import write_dataset

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCKS = re.findall(r"```python\n(.*?)```", (DOCS / "loading.md").read_text(), flags=re.DOTALL)


def test_loading_md_has_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a dataset named `out`, as the examples expect."""
    root = tmp_path_factory.mktemp("docs")
    write_dataset(root / "out", num_samples=12, samples_per_shard=4)
    return root


# The Ray example starts a Ray runtime (~15 s); the same calls run in test_interop.py.
@pytest.mark.parametrize("code", [b for b in BLOCKS if "import ray" not in b], ids=lambda b: b.split("\n")[0])
def test_loading_examples_run(code: str, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(out_dir)
    exec(compile(code, "docs/loading.md", "exec"), {})


def test_dataset_format_md_documents_everything() -> None:
    text = (DOCS / "dataset-format.md").read_text()
    for member in MEMBERS:
        assert f"`{member.filename}`" in text, member.filename
    for column in INDEX_COLUMNS:
        assert f"`{column.name}`" in text, column.name
    for key in META_FIELDS:
        assert f"`{key}`" in text, key
