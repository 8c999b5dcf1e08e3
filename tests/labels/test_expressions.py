"""The BabyFlow expression catalogue and the AU -> Anny facial-action table."""

import copy
import json
from importlib import resources

import numpy as np
import pytest

from synth.labels.expressions import ACTION_NAMES, expression_actions, load_catalogue, parse_catalogue


def _doc() -> dict:
    text = resources.files("synth.labels").joinpath("data", "expressions.json").read_text("utf-8")
    return json.loads(text)


def test_sizes_and_names() -> None:
    cat = load_catalogue()
    assert len(cat.au_names) == 46 and len(set(cat.au_names)) == 46
    assert len(cat.expression_names) == 76 and len(set(cat.expression_names)) == 76
    assert cat.expression_names[0] == "neutral"
    assert cat.expression_aus.shape == (76, 46) and cat.expression_aus.dtype == np.float32
    assert cat.au_to_actions.shape == (46, 52) and cat.au_to_actions.dtype == np.float32
    assert cat.action_names == ACTION_NAMES and len(ACTION_NAMES) == 52


def test_action_names_are_annys() -> None:
    from anny.models.facial_actions import FACIAL_ACTION_LABELS

    assert tuple(FACIAL_ACTION_LABELS) == ACTION_NAMES


def test_neutral_is_zero_and_every_expression_moves_the_face() -> None:
    cat = load_catalogue()
    actions = expression_actions(1.0)
    assert actions.shape == (76, 52)
    np.testing.assert_array_equal(cat.expression_aus[0], 0.0)
    np.testing.assert_array_equal(actions[0], 0.0)
    assert ((actions[1:] > 0).sum(axis=1) >= 1).all()
    assert (cat.au_to_actions.max(axis=1) > 0).all()  # every AU drives at least one action
    assert actions.min() >= 0.0 and actions.max() <= 1.0


def test_table_b1_is_single_aus_in_paper_order() -> None:
    cat = load_catalogue()
    doc = _doc()
    # rows 2..47 of Table B1 are the single-AU expressions, one-hot on the AUs in the same order
    np.testing.assert_array_equal(cat.expression_aus[1:47], np.eye(46, dtype=np.float32))
    assert [e["paper_row"] for e in doc["expressions"]] == list(range(1, 77))
    assert cat.expression_names[1] == "close_eye_left" and cat.au_names[0] == "AU43_L"
    assert cat.expression_names[46] == "cheek_raiser_right" and cat.au_names[45] == "AU6_R"


def test_table_b2_sets_follow_the_paper_rows() -> None:
    """Golden: a composed expression's AUs are the Table B1 rows printed in Table B2 (one noted fix)."""
    cat = load_catalogue()
    doc = _doc()
    row_to_au = {u["paper_row"]: u["id"] for u in doc["action_units"]}
    for e in doc["expressions"][47:]:
        printed = {row_to_au[r] for r in e["paper_aus"]}
        if "note" in e and e["name"] == "fear":
            assert set(e["aus"]) == printed | {"AU2_L"}  # the duplicated row 10 read as 19
        else:
            assert set(e["aus"]) == printed, e["name"]
    happy = cat.expression_aus[cat.expression_index("happy")]
    assert sorted(np.asarray(cat.au_names)[happy > 0]) == sorted(
        ["AU12_L", "AU12_R", "AU25", "AU6_L", "AU6_R"]
    )


def test_mirrors_swap_left_and_right() -> None:
    cat = load_catalogue()
    assert np.array_equal(cat.au_mirror[cat.au_mirror], np.arange(46))
    assert cat.au_names[cat.au_mirror[cat.au_names.index("AU12_L")]] == "AU12_R"
    assert cat.au_names[cat.au_mirror[cat.au_names.index("jaw_left")]] == "jaw_right"
    assert cat.au_names[cat.au_mirror[cat.au_names.index("AU10")]] == "AU10"
    left = cat.expression_index("lip_corner_puller_left")
    assert cat.expression_names[cat.expression_mirror[left]] == "lip_corner_puller_right"
    for j, m in enumerate(cat.expression_mirror):  # the mirror expression has the mirrored AU set
        np.testing.assert_array_equal(cat.expression_aus[m], cat.mirror_aus(cat.expression_aus[j]))
    # left actions of a left AU map onto the right actions of its mirror
    swap = [
        ACTION_NAMES.index(n.replace("Left", "#").replace("Right", "Left").replace("#", "Right"))
        for n in ACTION_NAMES
    ]
    np.testing.assert_array_equal(cat.au_to_actions[cat.au_mirror][:, swap], cat.au_to_actions)


def test_expression_actions_scale_and_clip() -> None:
    cat = load_catalogue()
    full = cat.expression_actions(1.0)
    np.testing.assert_allclose(cat.expression_actions(0.5), 0.5 * full, rtol=1e-6)
    # several AUs on one action are clipped to 1 before scaling
    i = cat.expression_index("inner_brow_raiser_left")
    assert full[i, ACTION_NAMES.index("browInnerUp")] == pytest.approx(0.5)
    sub = cat.expression_actions(1.0, np.array([0, i]))
    np.testing.assert_array_equal(sub, full[[0, i]])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("expressions", 5, "aus"), ["AU99"], "unknown AU 'AU99'"),
        (("action_units", 0, "actions"), {"eyeBlinkLeftt": 1.0}, "unknown facial action 'eyeBlinkLeftt'"),
        (("action_units", 0, "mirror"), "AU43_L", "not an involution"),
        (("expressions", 3, "name"), "close_eye_left", "duplicate expression names"),
        (("expressions", 60, "aus"), [], "has no AU"),
        (("action_units", 2, "actions"), {"eyeSquintLeft": 1.5}, "outside (0, 1]"),
    ],
)
def test_bad_catalogues_are_refused(path: tuple, value: object, message: str) -> None:
    doc = copy.deepcopy(_doc())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_catalogue(doc)


def test_unmirrorable_expression_is_refused() -> None:
    doc = copy.deepcopy(_doc())
    doc["expressions"][47]["aus"] = ["AU12_L", "AU25"]  # happy with one corner: its mirror is missing
    with pytest.raises(ValueError, match="'happy' has no mirror-image expression"):
        parse_catalogue(doc)
