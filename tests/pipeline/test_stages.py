"""The geometry stage on the tiny model, and the packing of a shard into one Ray row (no Ray needed)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from synth.cli._hydra import compose_config
from synth.facemodel.model import FaceModel
from synth.pipeline.plan import ShardUnit
from synth.pipeline.stages import GeometryStage


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> FaceModel:
    return FaceModel.load(tiny_model_dir)


def _stage(model: FaceModel, *overrides: str) -> GeometryStage:
    return GeometryStage(model, compose_config("generate", ["model=tiny", *overrides]))


def test_geometry_does_not_depend_on_batching(model: FaceModel) -> None:
    stage = _stage(model)
    whole = stage({"index": np.arange(40)})
    pieces = [stage({"index": np.arange(a, b)}) for a, b in ((0, 7), (7, 8), (8, 33), (33, 40))]
    shuffled = stage({"index": np.array([39, 3, 17, 0])})
    for key, value in whole.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), value, err_msg=key)
            np.testing.assert_array_equal(shuffled[key], value[[39, 3, 17, 0]], err_msg=key)
        else:
            assert [x for p in pieces for x in p[key]] == value
    assert whole["vertices"].shape == (40, model.n_vertices, 3) and whole["lmk3d"].shape == (40, 23, 3)
    assert (
        whole["au"].shape == (40, len(model.au_names)) and whole["au"].min() >= 0 and whole["au"].max() <= 1
    )


def test_au_targets_are_linear_blendshapes_with_extrapolation(model: FaceModel) -> None:
    index = {"index": np.arange(6)}
    base = ["sampler=au", "+sampler.targets.lip_corner_puller_left"]
    one = _stage(model, f"{base[0]}", f"{base[1]}=1.0")(index)
    two = _stage(model, f"{base[0]}", f"{base[1]}=2.0")(index)
    neutral = _stage(model, f"{base[0]}", f"{base[1]}=1.0", "sampler.intensity=0.0")(index)
    np.testing.assert_array_equal(one["w_id"], two["w_id"])  # same identities
    delta1 = one["vertices"] - neutral["vertices"]
    delta2 = two["vertices"] - neutral["vertices"]
    assert np.abs(delta1).max() > 1e-4  # the expression moves the face
    np.testing.assert_allclose(delta2, 2 * delta1, atol=2e-6)  # extrapolation along the blendshape
    np.testing.assert_allclose(neutral["w_ex"], np.tile(model.neutral_w_ex.numpy(), (6, 1)), atol=1e-6)
    assert one["expression"][0] == "lip_corner_puller_left:1.00"
    # The AU labeller recovers the catalogue AUs of the target expression (AU12_L at 1).
    au12 = model.au_names.index("AU12_L")
    np.testing.assert_allclose(one["au"][:, au12], 1.0, atol=0.05)
    assert np.delete(one["au"], au12, axis=1).max() < 0.05
    assert np.abs(neutral["au"]).max() < 0.05


def test_identity_sets_neutral_twin_has_the_identity_and_neutral_expression(model: FaceModel) -> None:
    out = _stage(model, "sampler=identity_sets", "sampler.expressions_per_identity=2")(
        {"index": np.arange(6)}
    )
    np.testing.assert_array_equal(out["identity_id"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(out["w_id"][0], out["w_id"][2])
    w_id = torch.from_numpy(out["w_id"][:1])
    twin = model.decode(w_id, model.neutral_w_ex[None])[0].numpy()  # the identity, neutral expression
    np.testing.assert_allclose(out["vertices"][0], twin, atol=1e-6)
    assert out["expression"][0] == "neutral" and out["split"][0] == out["split"][2]


def test_a_shard_packs_into_one_row_and_back() -> None:
    from synth.pipeline.ray_exec import pack, unpack

    columns = {
        "index": np.arange(3, dtype=np.int64),
        "depth": np.random.default_rng(0).random((3, 4, 4), dtype=np.float32),
        "split": ["train", "val", "train"],
    }
    row = pack(ShardUnit(7, 0, 3), columns, {"geometry": 1.5})
    assert all(len(v) == 1 for v in row.values())
    unit, back, seconds = unpack(row)
    assert unit == ShardUnit(7, 0, 3) and seconds == {"geometry": 1.5}
    assert back.keys() == columns.keys() and back["split"] == columns["split"]
    np.testing.assert_array_equal(back["depth"], columns["depth"])


def test_au_vector_samples_carry_their_vector_and_the_nnls_estimate(model: FaceModel) -> None:
    stage = _stage(model)  # the default sampler: the expression prior
    index = np.arange(64)
    plan = stage.sampler.plan(index)
    out = stage({"index": index})
    np.testing.assert_array_equal(out["au"], plan.aus)  # the label is the generating vector
    assert set(out["au_source"]) == {"generating"}
    assert np.abs(out["au_nnls"] - out["au"]).mean() < 0.02
    assert out["au_nnls_residual"].max() < 1e-3 and np.isfinite(out["log_prob_ex"]).all()
    # the mesh is the identity's neutral plus the weighted single-AU deformations of the catalogue
    neutral = _stage(model, "sampler.intensity=0.0")({"index": index})
    row = int(np.flatnonzero((plan.aus > 0).sum(1) == 1)[0])  # a sample made of one AU column
    column = int(np.argmax(plan.aus[row]))
    table = model.expression_aus.numpy()
    single = int(np.flatnonzero(((table > 0).sum(1) == 1) & (np.argmax(table, 1) == column))[0])
    w_id = torch.from_numpy(out["w_id"][row : row + 1])
    w_n = model.neutral_w_ex[None]
    delta = model.decode(w_id, model.expression_coefficients[single][None]) - model.decode(w_id, w_n)
    expected = neutral["vertices"][row] + plan.aus[row].max() * delta[0].numpy()
    np.testing.assert_allclose(out["vertices"][row], expected, atol=2e-6)
    # sampler.intensity > 1 scales the vector: labels clipped to [0, 1] and marked so
    loud = _stage(model, "sampler.intensity=3.0")({"index": index})
    over = (3.0 * plan.aus > 1).any(axis=1)
    assert over.any()
    assert [s == "generating_clipped" for s in loud["au_source"]] == over.tolist()
    np.testing.assert_allclose(loud["au"], np.clip(3.0 * plan.aus, 0, 1), atol=1e-6)
