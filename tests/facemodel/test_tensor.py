"""FaceTensor: validation and expression subsets."""

import numpy as np
import pytest

from synth.facemodel.tensor import FaceTensor


def _tensor() -> FaceTensor:
    rng = np.random.default_rng(0)
    return FaceTensor(
        vertices=rng.normal(size=(2, 3, 4, 3)).astype(np.float32),
        faces=np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int64),
        expression_names=["neutral", "a", "b"],
        au_names=["AU1", "AU2"],
        expression_aus=np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float32),
        identity_ids=["x", "y"],
        source={"kind": "test"},
    )


def test_select_expressions_keeps_rows_in_the_given_order() -> None:
    t = _tensor()
    sub = t.select_expressions([0, 2], source={"kind": "subset"})
    assert sub.expression_names == ["neutral", "b"]
    np.testing.assert_array_equal(sub.vertices, t.vertices[:, [0, 2]])
    np.testing.assert_array_equal(sub.expression_aus, [[0, 0], [0, 1]])
    assert sub.source == {"kind": "subset"} and t.select_expressions([1]).source == {"kind": "test"}


def test_mismatched_names_are_refused() -> None:
    t = _tensor()
    with pytest.raises(ValueError, match="expression names"):
        FaceTensor(t.vertices, t.faces, ["neutral"], t.au_names, t.expression_aus, t.identity_ids)
