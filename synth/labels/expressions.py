"""The expression catalogue: BabyFlow's 76 expressions as FACS AU sets; the AU -> Anny facial-action table.

The data lives in `synth/labels/data/expressions.json` (Tables B1/B2 of the BabyFlow paper, seed 000):
- 46 action units (the FaceWarehouse blendshapes, left/right variants kept), each with its weights over
  Anny's 52 ARKit-style facial actions (`anny.models.facial_actions.FACIAL_ACTION_LABELS`) and a "why" note;
- 76 expressions (index 0 "neutral", then the 46 single-AU expressions of Table B1, then the 29 composed
  expressions of Table B2), each a set of AUs at nominal intensity 1.

This module loads and validates it; it does not import anny (the 52 action names are stored in the JSON
and checked against anny's list in the tests), so label code can use the catalogue without the body model.
"""

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

CATALOGUE_FILE = "expressions.json"

# Anny 0.6.2 `FACIAL_ACTION_LABELS`, in Anny's order (columns of `Catalogue.au_to_actions`).
ACTION_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Catalogue:
    """The expression catalogue and AU table, as arrays.

    au_names: the A = 46 AU label ids (e.g. "AU12_L"), the order of every per-sample AU vector.
    au_descriptions: A human-readable AU names from the paper (e.g. "Lip Corner Puller Left").
    au_mirror: (A,) int64, index of each AU's left/right mirror (itself for central AUs).
    expression_names: E = 76 snake_case names; index 0 is "neutral".
    expression_aus: (E, A) float32 nominal AU intensities in [0, 1] (1 for each AU of the expression).
    expression_mirror: (E,) int64, index of the expression whose AU set is this one's mirror image.
    au_to_actions: (A, K) float32 weights of each AU over the K = 52 facial actions.
    action_names: the K facial action names (Anny's order).
    """

    au_names: tuple[str, ...]
    au_descriptions: tuple[str, ...]
    au_mirror: np.ndarray
    expression_names: tuple[str, ...]
    expression_aus: np.ndarray
    expression_mirror: np.ndarray
    au_to_actions: np.ndarray
    action_names: tuple[str, ...]

    def expression_index(self, name: str) -> int:
        """Index of an expression by name; ValueError listing the names when unknown."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown expression {name!r}; the catalogue has: {', '.join(self.expression_names)}"
            ) from None

    def expression_actions(self, delta: float, expressions: np.ndarray | None = None) -> np.ndarray:
        """Facial-action weights of the expressions at intensity delta.

        delta: the expression intensity (BabyFlow eq. 7's delta; 1 = nominal).
        expressions: optional (E',) int indices (default: all E expressions, catalogue order).
        Returns (E', K) float32: clip(expression_aus @ au_to_actions, 0, 1) * delta. Clipping before
        scaling keeps every ARKit weight in its valid [0, 1] range when several AUs drive the same action.
        """
        aus = self.expression_aus if expressions is None else self.expression_aus[np.asarray(expressions)]
        return (np.clip(aus @ self.au_to_actions, 0.0, 1.0) * np.float32(delta)).astype(np.float32)

    def mirror_aus(self, aus: np.ndarray) -> np.ndarray:
        """AU vectors of the mirror-image face: (..., A) -> (..., A), left and right AUs swapped."""
        return aus[..., self.au_mirror]


def _fail(what: str) -> ValueError:
    return ValueError(f"synth/labels/data/{CATALOGUE_FILE}: {what}")


def parse_catalogue(doc: dict) -> Catalogue:
    """Validate a catalogue document (the parsed JSON) and build the arrays.

    Raises ValueError naming the offending AU, expression or action.
    """
    if doc.get("format") != "synth.expression_catalogue" or doc.get("version") != 1:
        raise _fail(f"expected format 'synth.expression_catalogue' version 1, got {doc.get('format')!r} "
                    f"version {doc.get('version')!r}")  # fmt: skip
    units = doc["action_units"]
    au_names = tuple(u["id"] for u in units)
    if len(set(au_names)) != len(au_names):
        dup = sorted({n for n in au_names if au_names.count(n) > 1})
        raise _fail(f"duplicate AU ids {dup}")
    au_index = {n: i for i, n in enumerate(au_names)}
    action_index = {n: k for k, n in enumerate(ACTION_NAMES)}
    au_to_actions = np.zeros((len(units), len(ACTION_NAMES)), np.float32)
    au_mirror = np.zeros(len(units), np.int64)
    for i, u in enumerate(units):
        if not u.get("actions"):
            raise _fail(f"AU {u['id']!r} drives no facial action")
        for action, weight in u["actions"].items():
            if action not in action_index:
                raise _fail(f"AU {u['id']!r} uses unknown facial action {action!r}")
            if not 0.0 < weight <= 1.0:
                raise _fail(f"AU {u['id']!r}: weight {weight} of {action!r} outside (0, 1]")
            au_to_actions[i, action_index[action]] = weight
        if u["mirror"] not in au_index:
            raise _fail(f"AU {u['id']!r} has unknown mirror AU {u['mirror']!r}")
        au_mirror[i] = au_index[u["mirror"]]
    if not np.array_equal(au_mirror[au_mirror], np.arange(len(units))):
        raise _fail("the AU mirror map is not an involution (check the 'mirror' fields)")

    exprs = doc["expressions"]
    names = tuple(e["name"] for e in exprs)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise _fail(f"duplicate expression names {dup}")
    if not names or names[0] != "neutral" or exprs[0]["aus"]:
        raise _fail("expression 0 must be 'neutral' with no AUs")
    expression_aus = np.zeros((len(exprs), len(units)), np.float32)
    for j, e in enumerate(exprs):
        for au in e["aus"]:
            if au not in au_index:
                raise _fail(f"expression {e['name']!r} uses unknown AU {au!r}")
            expression_aus[j, au_index[au]] = 1.0
        if j > 0 and not e["aus"]:
            raise _fail(f"expression {e['name']!r} has no AU")

    # The mirror of an expression is the one with the mirrored AU set (needed to mirror expressive meshes).
    mirrored = expression_aus[:, au_mirror]
    expression_mirror = np.zeros(len(exprs), np.int64)
    for j in range(len(exprs)):
        match = np.flatnonzero((expression_aus == mirrored[j]).all(axis=1))
        if match.size == 0:
            raise _fail(f"expression {names[j]!r} has no mirror-image expression in the catalogue")
        # Table B2 repeats two AU sets (angry = sadly_fearful, fearfully_surprised = awed): prefer itself.
        expression_mirror[j] = j if j in match else match[0]

    for array in (au_mirror, expression_aus, expression_mirror, au_to_actions):
        array.flags.writeable = False  # the catalogue is cached and shared: keep it immutable
    return Catalogue(
        au_names=au_names,
        au_descriptions=tuple(u["name"] for u in units),
        au_mirror=au_mirror,
        expression_names=names,
        expression_aus=expression_aus,
        expression_mirror=expression_mirror,
        au_to_actions=au_to_actions,
        action_names=ACTION_NAMES,
    )


@cache
def load_catalogue() -> Catalogue:
    """The packaged BabyFlow catalogue (46 AUs, 76 expressions, 52 facial actions), validated; cached."""
    text = resources.files("synth.labels").joinpath("data", CATALOGUE_FILE).read_text(encoding="utf-8")
    return parse_catalogue(json.loads(text))


def expression_actions(delta: float) -> np.ndarray:
    """(76, 52) float32 facial-action weights of every catalogue expression at intensity delta."""
    return load_catalogue().expression_actions(delta)
