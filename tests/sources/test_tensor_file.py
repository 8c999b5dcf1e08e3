"""The bring-your-own `.npz` tensor file: round trip and clear errors."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.errors import SynthError
from synth.facemodel.tensor import FaceTensor
from synth.sources.tensor_file import load_tensor_npz, save_tensor_npz


def _tensor(n_id: int = 3, n_ex: int = 4, n_vert: int = 10, n_au: int = 5, seed: int = 0) -> FaceTensor:
    rng = np.random.default_rng(seed)
    return FaceTensor(
        vertices=rng.normal(size=(n_id, n_ex, n_vert, 3)).astype(np.float32),
        faces=rng.integers(0, n_vert, size=(7, 3)).astype(np.int64),
        expression_names=["neutral"] + [f"expr-{j}" for j in range(1, n_ex)],
        au_names=[f"AU{a}_L" for a in range(n_au)],
        expression_aus=rng.uniform(size=(n_ex, n_au)).astype(np.float32),
        identity_ids=[f"baby-{i}" for i in range(n_id)],
        source={"kind": "test", "nested": {"values": [1, 2.5, "x"]}},
    )


def _assert_equal(a: FaceTensor, b: FaceTensor) -> None:
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.expression_aus, b.expression_aus)
    assert a.expression_names == b.expression_names and a.au_names == b.au_names
    assert a.identity_ids == b.identity_ids and a.source == b.source
    assert b.vertices.dtype == np.float32 and b.faces.dtype == np.int64


@settings(max_examples=15, deadline=None)
@given(n_id=st.integers(1, 4), n_ex=st.integers(1, 4), n_vert=st.integers(3, 12), n_au=st.integers(0, 4))
def test_round_trip(
    tmp_path_factory: pytest.TempPathFactory, n_id: int, n_ex: int, n_vert: int, n_au: int
) -> None:
    t = _tensor(n_id, n_ex, n_vert, n_au)
    path = save_tensor_npz(tmp_path_factory.mktemp("t") / "tensor.npz", t)
    _assert_equal(t, load_tensor_npz(path))
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, no pickles
        assert npz["expression_names"].dtype.kind == "U"


def test_hand_written_minimal_file(tmp_path: Path) -> None:
    """What a BabyFM / FLAME user writes with plain numpy: only the required fields, float64, int32."""
    t = _tensor()
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        vertices=t.vertices.astype(np.float64),
        faces=t.faces.astype(np.int32),
        expression_names=np.array(t.expression_names),
        au_names=np.array(t.au_names),
        expression_aus=t.expression_aus.astype(np.float64),
    )
    loaded = load_tensor_npz(path)
    np.testing.assert_allclose(loaded.vertices, t.vertices)
    assert loaded.identity_ids == ["id-0000", "id-0001", "id-0002"] and loaded.source == {}


def _write(path: Path, **overrides: object) -> Path:
    t = _tensor()
    fields = {
        "vertices": t.vertices,
        "faces": t.faces,
        "expression_names": np.array(t.expression_names),
        "au_names": np.array(t.au_names),
        "expression_aus": t.expression_aus,
    }
    fields.update(overrides)
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"faces": None}, r"missing field\(s\) \['faces'\]"),
        ({"vertices": np.zeros((3, 4, 10))}, "field 'vertices' must be float"),
        ({"faces": np.zeros((7, 4), dtype=np.int64)}, "field 'faces' must be integer"),
        ({"faces": np.full((7, 3), 10)}, "field 'faces' indexes outside"),
        ({"expression_names": np.array(["neutral", "a", "b"])}, "'expression_names' has 3 names for the 4"),
        ({"expression_names": np.array(["a", "neutral", "b", "c"])}, "must start with 'neutral'"),
        ({"expression_names": np.array(["neutral", "a", "a", "b"])}, "'expression_names' has duplicates"),
        (
            {"expression_aus": np.zeros((4, 2), np.float32)},
            r"'expression_aus' must be \(n_ex, A\) = \(4, 5\)",
        ),
        ({"expression_aus": np.full((4, 5), 2.0)}, r"must lie in \[0, 1\]"),
        ({"identity_ids": np.array(["a"])}, "'identity_ids' has 1 ids for the 3"),
        ({"au_names": np.array([1, 2, 3, 4, 5])}, "'au_names' must be a 1-D array of unicode strings"),
        ({"source_json": np.array("{nope")}, "'source_json' is not valid JSON"),
        ({"format": np.array("other")}, "field 'format' is 'other'"),
        ({"format_version": np.array(9)}, "field 'format_version' is 9"),
        ({"landmarks": np.zeros(3)}, r"unknown field\(s\) \['landmarks'\]"),
        ({"expression_names": np.array(["neutral", "a", "b", "c"], dtype=object)}, "without pickles"),
    ],
)
def test_bad_files_name_the_file_and_field(tmp_path: Path, overrides: dict, message: str) -> None:
    path = _write(tmp_path / "bad.npz", **overrides)
    with pytest.raises(SynthError, match=message) as info:
        load_tensor_npz(path)
    assert str(path) in str(info.value)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="not found"):
        load_tensor_npz(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(SynthError, match=r"junk\.npz"):
        load_tensor_npz(junk)


def test_anny_tensor_round_trip(tmp_path: Path) -> None:
    from synth.sources.anny_source import AnnySourceConfig, build_anny_tensor

    t = build_anny_tensor(
        AnnySourceConfig(n_identities=1, expressions=["neutral", "jaw_drop"]), seed=0, progress=False
    )
    _assert_equal(t, load_tensor_npz(save_tensor_npz(tmp_path / "anny.npz", t)))
