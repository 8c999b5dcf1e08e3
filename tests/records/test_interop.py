"""Our output read by other tools, without synth: Ray Data, Hugging Face datasets, pandas."""

from pathlib import Path

import numpy as np
import pytest

from synth.records import read_index
from tests.records.conftest import make_sample


@pytest.fixture(scope="module")
def ray_session():
    """A small embedded Ray, or the one another test module already started (left running for it)."""
    import ray  # imported here: a module-level import would start Ray's import cost for every test run

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def test_ray_data_reads_shards_and_index(dataset: Path, ray_session) -> None:
    ray = ray_session
    suffixes = ["mesh.npy", "au.npy", "depth.png", "meta.json"]  # as in docs/loading.md
    rows = ray.data.read_webdataset(str(dataset), file_extensions=["tar"], suffixes=suffixes).take_all()
    assert sorted(r["__key__"] for r in rows) == [f"{i:09d}" for i in range(10)]
    row = next(r for r in rows if r["__key__"] == "000000004")
    want = make_sample(4)
    assert np.array_equal(row["mesh.npy"], want["mesh"])
    assert np.array_equal(row["au.npy"], want["au"])
    assert row["depth.png"].dtype == np.uint16 and row["depth.png"].shape == (64, 64)
    assert row["meta.json"]["split"] == want["meta"]["split"]

    index = ray.data.read_parquet(str(dataset / "index"))
    assert index.count() == 10
    from ray.data.expressions import col

    train = index.filter(expr=col("split") == "train").to_pandas()
    expected = [f"{i:09d}" for i in range(10) if make_sample(i)["meta"]["split"] == "train"]
    assert sorted(train["key"]) == expected


def test_hf_datasets_loads_the_index(dataset: Path, tmp_path: Path) -> None:
    import datasets

    files = sorted(str(p) for p in (dataset / "index").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path))
    assert ds.num_rows == 10
    row = ds.sort("index")[7]
    want = make_sample(7)
    assert row["key"] == "000000007" and row["expression"] == want["meta"]["expression"]
    assert np.allclose(row["au"], want["au"])
    assert {p["name"] for p in row["phenotype"]} == {"age", "gender"}
    smiles = ds.filter(lambda r: r["expression"] == "smile")
    assert sorted(smiles["index"]) == [1, 5, 9]


def test_pandas_filter_on_the_index(dataset: Path) -> None:
    df = read_index(dataset).to_pandas()
    assert list(df["index"]) == list(range(10))
    au12 = np.stack(df["au"].to_numpy())[:, 11]
    picked = df[(df["split"] == "train") & (au12 > 0.5)]
    assert all(make_sample(int(i))["au"][11] > 0.5 for i in picked["index"])
    assert df["shard"].nunique() == 3
