"""Golden files: the infant data the whole model is built from, pinned.

A change in Anny, the infant prior, the alignment, the catalogue or the landmark definition moves these
numbers; if that change is deliberate, regenerate with `python tests/golden/make_goldens.py`. A missing
golden file fails (it is committed), it does not skip.
"""

import importlib.util
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden"
# 0.01 mm: far below any geometric effect (expressions move vertices by ~1 mm), far above float32 rounding.
TOLERANCE_M = 1e-5


def _maker():
    spec = importlib.util.spec_from_file_location("make_goldens", GOLDEN / "make_goldens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anny_tensor_landmarks_match_the_golden_file() -> None:
    path = GOLDEN / "anny_tensor_landmarks.npz"
    assert path.is_file(), f"{path} is missing: run `python tests/golden/make_goldens.py` and commit it"
    golden = np.load(path, allow_pickle=False)
    now = _maker().anny_tensor_landmarks()
    assert list(now["expression_names"]) == list(golden["expression_names"])
    assert list(now["identity_ids"]) == list(golden["identity_ids"])
    np.testing.assert_allclose(now["landmarks"], golden["landmarks"], rtol=0, atol=TOLERANCE_M)
    # the golden is a real face tensor: 6 identities (2 bases + variants), expressions that move the mouth
    assert golden["landmarks"].shape == (6, 5, 23, 3)
    mouth_motion = np.abs(golden["landmarks"][:, 1:] - golden["landmarks"][:, :1]).max()
    assert mouth_motion > 1e-3
