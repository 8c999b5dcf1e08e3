"""Shard plan, config fingerprint and the output-directory check (resume / refuse)."""

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synth.cpu import code_path
from synth.errors import SynthError
from synth.pipeline.config import Executor, GenerateConfig, RuntimeConfig
from synth.pipeline.plan import (
    RUN_FILE,
    check_output_dir,
    fingerprint_config,
    fingerprint_hash,
    resolve_output_dir,
    shard_units,
    to_jsonable,
    write_run_file,
)
from synth.records.config import Overwrite


@given(n=st.integers(1, 5000), per=st.integers(1, 300))
def test_shards_tile_the_indices(n: int, per: int) -> None:
    units = shard_units(n, per)
    assert [u.shard_id for u in units] == list(range(len(units)))
    assert units[0].start == 0 and units[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(units))
    assert all(0 < u.size <= per for u in units)


def test_fingerprint_ignores_runtime_and_output_dir_but_not_content() -> None:
    base = GenerateConfig()
    fp = fingerprint_hash(fingerprint_config(base, "m1"))
    runtime = GenerateConfig(runtime=RuntimeConfig(executor=Executor.local, num_workers=2, batch_size=3))
    assert fingerprint_hash(fingerprint_config(runtime, "m1")) == fp
    moved = GenerateConfig()
    moved.output.dir = "/elsewhere"
    assert fingerprint_hash(fingerprint_config(moved, "m1")) == fp
    assert fingerprint_hash(fingerprint_config(GenerateConfig(seed=1), "m1")) != fp
    assert fingerprint_hash(fingerprint_config(base, "m2")) != fp
    json.dumps(to_jsonable(base))  # the whole config is JSON-able


def test_output_dir_new_empty_resume_and_refusals(tmp_path: Path) -> None:
    cfg = GenerateConfig()
    fp = fingerprint_config(cfg, "m1")
    out = tmp_path / "ds"
    assert check_output_dir(out, fp, Overwrite.RESUME) is False  # does not exist: new
    assert not out.exists()  # and nothing was written
    out.mkdir()
    assert check_output_dir(out, fp, Overwrite.RESUME) is False  # empty: new
    write_run_file(out, fp, to_jsonable(cfg), code_path())
    assert check_output_dir(out, fp, Overwrite.RESUME) is True  # same config: resume
    other = fingerprint_config(GenerateConfig(seed=5), "m1")
    with pytest.raises(SynthError, match=r"different config \(differs in: seed\)"):
        check_output_dir(out, other, Overwrite.RESUME)
    assert check_output_dir(out, other, Overwrite.REPLACE) is False
    with pytest.raises(SynthError, match=r"output\.overwrite=ERROR"):
        check_output_dir(out, fp, Overwrite.ERROR)
    (out / RUN_FILE).unlink()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match=r"holds no run\.json"):
        check_output_dir(out, fp, Overwrite.RESUME)


def test_output_dir_refuses_files(tmp_path: Path) -> None:
    fp = fingerprint_config(GenerateConfig(), "m1")
    assert resolve_output_dir(tmp_path / "new").local == tmp_path / "new"
    (tmp_path / "f").write_text("x")
    with pytest.raises(SynthError, match="is a file"):
        check_output_dir(tmp_path / "f", fp, Overwrite.RESUME)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"num_workers": -1}, "runtime.num_workers"),
        ({"batch_size": 0}, "runtime.batch_size"),
        ({"object_store_mb": 1}, "runtime.object_store_mb"),
        ({"diffusion_gpus": -1.0}, "runtime.diffusion_gpus"),
    ],
)
def test_runtime_validation_names_the_key(kw: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        RuntimeConfig(**kw)


@pytest.mark.parametrize(("kw", "key"), [({"num_samples": 0}, "num_samples"), ({"seed": -1}, "seed")])
def test_generate_validation_names_the_key(kw: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        GenerateConfig(**kw)
