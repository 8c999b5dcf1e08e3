"""Regenerate the golden files of tests/test_golden.py (run from the repository root).

    python tests/golden/make_goldens.py

Only regenerate after a deliberate change of the data they pin (Anny version, infant prior, alignment,
catalogue, landmark definition), and say so in the commit message.
"""

import logging
from pathlib import Path

import numpy as np

from synth.atomic import atomic_open
from synth.labels.landmarks import landmarks, load_anny_head_landmarks
from synth.sources.anny_source import AnnySourceConfig, build_anny_tensor

GOLDEN_DIR = Path(__file__).resolve().parent
ANNY_TENSOR_CONFIG = AnnySourceConfig(
    n_identities=2, expressions=["jaw_drop", "happy", "close_eye_left", "close_eye_right"]
)
ANNY_TENSOR_SEED = 7


def anny_tensor_landmarks() -> dict[str, np.ndarray]:
    """The 23 landmarks of every mesh of a small Anny infant tensor: (n_id, n_ex, 23, 3) float32 metres."""
    tensor = build_anny_tensor(ANNY_TENSOR_CONFIG, seed=ANNY_TENSOR_SEED, progress=False)
    definition = load_anny_head_landmarks()
    n_id, n_ex = tensor.vertices.shape[:2]
    flat = tensor.vertices.reshape(n_id * n_ex, -1, 3)
    points = np.asarray(landmarks(flat, definition), dtype=np.float32)
    return {
        "landmarks": points.reshape(n_id, n_ex, -1, 3),
        "expression_names": np.array(tensor.expression_names),
        "identity_ids": np.array(tensor.identity_ids),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    with atomic_open(GOLDEN_DIR / "anny_tensor_landmarks.npz") as f:
        np.savez(f, **anny_tensor_landmarks())
    logging.info("wrote %s", GOLDEN_DIR / "anny_tensor_landmarks.npz")


if __name__ == "__main__":
    main()
