"""The Anny infant identity source: age mapping, prior, symmetry map, alignment, variants, tensor."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synth.labels.expressions import load_catalogue
from synth.seeding import Stage, numpy_rng
from synth.sources import anny_source as src
from synth.sources.anny_source import (
    AnnyPriorConfig,
    AnnySourceConfig,
    anny_age_to_years,
    build_anny_tensor,
    expression_meshes,
    facial_action_bases,
    mirror_vertices,
    neutral_meshes,
    sample_identities,
    selected_expressions,
    years_to_anny_age,
)

TINY_EXPRESSIONS = [
    "neutral", "close_eye_left", "close_eye_right", "lip_corner_puller_left", "lip_corner_puller_right",
    "happy", "surprise", "jaw_drop",
]  # fmt: skip


def _paired(topology: src.Topology) -> np.ndarray:
    return np.setdiff1d(np.arange(topology.symmetry.size), topology.unpaired)


@pytest.fixture(scope="module")
def tiny_tensor(topology: src.Topology):
    return build_anny_tensor(
        AnnySourceConfig(n_identities=3, expressions=TINY_EXPRESSIONS), seed=7, progress=False
    )


# --- age -------------------------------------------------------------------------------------------------


def test_age_mapping_is_annys_growth_calibration() -> None:
    from anny.paths import get_anny_root_dir

    for sex in ("boys", "girls"):
        path = get_anny_root_dir() / "data" / "shape_calibration" / f"{sex}.pth"
        table = torch.load(path, weights_only=True)["morphological_age_mapping"]
        years = table["morphological_age_anchors"].numpy()
        ages = table["anny_age_anchors"].numpy()
        np.testing.assert_allclose(years_to_anny_age(years), ages, atol=1e-12)
        np.testing.assert_allclose(anny_age_to_years(ages), years, atol=1e-9)
    # golden points: birth is Anny's "baby" anchor (0); 1 year is 0.05; 3 years 0.05 + 2/3 * 0.165
    np.testing.assert_allclose(years_to_anny_age(np.array([0.0, 1.0, 3.0])), [0.0, 0.05, 0.16], atol=1e-12)
    months = np.linspace(0, 36, 37)
    np.testing.assert_allclose(anny_age_to_years(years_to_anny_age(months / 12)), months / 12, atol=1e-12)


def test_infant_ages_stay_inside_annys_anchors(anny_model) -> None:
    anchors = anny_model.anchors.age.numpy()
    np.testing.assert_allclose(anchors, [-1 / 3, 0, 1 / 3, 2 / 3, 1])  # newborn, baby, child, young, old
    infant = years_to_anny_age(np.array([0.0, 3.0]))
    assert anchors[0] < infant[0] and infant[1] < anchors[2]  # between baby and child: no clamping
    assert (
        anny_age_to_years(np.array(anchors[0])) < 0
    )  # the newborn anchor is "before birth" by the calibration
    # With extrapolate_phenotypes=False Anny clamps ages below the newborn anchor, so nothing below -1/3
    # can be reached; the infant range does not depend on the flag.
    assert anny_model.extrapolate_phenotypes is False
    ages = torch.tensor([-0.6, -1 / 3, 0.1], dtype=torch.float64)
    with torch.no_grad():
        clamped = anny_model(phenotype_kwargs={"age": ages})["vertices"]
        anny_model.extrapolate_phenotypes = True
        try:
            extrapolated = anny_model(phenotype_kwargs={"age": ages})["vertices"]
        finally:
            anny_model.extrapolate_phenotypes = False
    torch.testing.assert_close(clamped[0], clamped[1])
    assert (extrapolated[0] - clamped[0]).abs().max() > 1e-3
    torch.testing.assert_close(extrapolated[2], clamped[2])


# --- prior -----------------------------------------------------------------------------------------------


def test_prior_ranges_and_moments(anny_model) -> None:
    prior = AnnyPriorConfig()
    ids = sample_identities(prior, seed=3, n=300)
    labels = list(ids.phenotype_labels)
    col = {k: ids.phenotypes[:, labels.index(k)] for k in labels}
    assert ids.age_months.min() >= 0 and ids.age_months.max() <= 36
    assert 8.5 < ids.age_months.mean() < 12.5  # Gamma(mean 11.25, sd 8.98) truncated at 36 months
    np.testing.assert_allclose(col["age"], years_to_anny_age(ids.age_months / 12))
    for key, (lo, hi) in (("gender", prior.gender_range), ("weight", prior.weight_range),
                          ("muscle", prior.muscle_range)):  # fmt: skip
        assert col[key].min() >= lo and col[key].max() <= hi
    races = ids.phenotypes[:, [labels.index(r) for r in src.RACES]]
    np.testing.assert_allclose(races.sum(axis=1), 1.0)
    assert races.min() >= 0
    lc = ids.local_changes
    lc_labels = list(ids.local_change_labels)
    assert np.abs(lc).max() <= 1.0
    unused = [i for i, n in enumerate(lc_labels) if not n.startswith(prior.local_change_prefixes)]
    unused += [lc_labels.index(n) for n in src._EXCLUDED_HEAD_CHANGES]
    np.testing.assert_array_equal(lc[:, unused], 0.0)
    used = np.flatnonzero(lc.std(axis=0) > 0)
    assert len(used) > 100
    # left/right pairs are strongly but not perfectly correlated (asymmetry 0.2 -> correlation ~0.8)
    left, right = lc_labels.index("l-cheek-volume-incr"), lc_labels.index("r-cheek-volume-incr")
    corr = np.corrcoef(lc[:, left], lc[:, right])[0, 1]
    assert 0.65 < corr < 0.92
    # one standard deviation moves each change's most displaced vertex by ~local_change_peak_mm
    topo = src.anny_topology()
    std = src._local_change_std(prior, ids.local_change_labels, topo.local_change_peak_mm)
    peak = np.minimum(std, prior.local_change_max_std) * topo.local_change_peak_mm
    assert np.all(peak[used] <= prior.local_change_peak_mm + 1e-9)


def test_sampling_is_seeded_and_prefix_stable() -> None:
    prior = AnnyPriorConfig()
    a = sample_identities(prior, seed=11, n=5)
    b = sample_identities(prior, seed=11, n=3)
    np.testing.assert_array_equal(a.phenotypes[:3], b.phenotypes)
    np.testing.assert_array_equal(a.local_changes[:3], b.local_changes)
    tail = sample_identities(prior, seed=11, n=2, start=3)
    np.testing.assert_array_equal(a.phenotypes[3:], tail.phenotypes)
    one = src.sample_identity(prior, numpy_rng(11, 4, Stage.BUILD))
    np.testing.assert_array_equal(one.local_changes[0], a.local_changes[4])
    c = sample_identities(prior, seed=12, n=3)
    assert not np.allclose(c.phenotypes, b.phenotypes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"age_months_range": (10.0, 5.0)}, "age_months_range"),
        ({"age_months_std": 0.0}, "age_months_std"),
        ({"age_months_range": (70.0, 72.0), "age_months_std": 1.0}, "no mass"),
        ({"weight_range": (0.2, 1.5)}, "weight_range"),
        ({"ethnic_concentration": (1.0, 0.0, 1.0)}, "ethnic_concentration"),
        ({"local_change_asymmetry": 2.0}, "local_change_asymmetry"),
        ({"expression_scaling": "huge"}, "expression_scaling='huge'"),
    ],
)
def test_prior_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnnyPriorConfig(**kwargs)


def test_source_config_validation() -> None:
    with pytest.raises(ValueError, match="n_identities"):
        AnnySourceConfig(n_identities=0)
    with pytest.raises(ValueError, match="delta"):
        AnnySourceConfig(delta=0.0)
    with pytest.raises(ValueError, match="unknown expression 'smile'"):
        AnnySourceConfig(expressions=["neutral", "smile"])
    with pytest.raises(ValueError, match="close_eye_right"):
        AnnySourceConfig(expressions=["neutral", "close_eye_left"])
    AnnySourceConfig(expressions=["close_eye_left"], variants=False)  # no mirrors needed without variants
    idx = selected_expressions(["happy", "close_eye_right", "close_eye_left"], True, load_catalogue())
    assert idx[0] == 0 and list(idx) == sorted(idx)  # neutral added, catalogue order


# --- topology ----------------------------------------------------------------------------------------------


def test_symmetry_map_is_an_involution_mapping_the_template_onto_its_mirror(anny_model, topology) -> None:
    sym = topology.symmetry
    paired = _paired(topology)
    np.testing.assert_array_equal(sym[sym[paired]], paired)
    template = anny_model.template_vertices.numpy()
    err = np.linalg.norm(mirror_vertices(template, sym) - template, axis=-1)
    assert err[paired].max() < 1e-6  # metres
    # the only unpaired vertices: the 32 extra vertices of the left eyeball mesh (72 vs 40 on the right)
    assert topology.unpaired.size == 32
    assert (template[topology.unpaired, 0] > 0.015).all()
    assert (err[topology.unpaired] < 0.025).all()  # matched inside the right eye mesh
    mid = np.abs(template[:, 0]) < 1e-9
    np.testing.assert_array_equal(sym[mid], np.flatnonzero(mid))


def test_symmetry_map_of_a_synthetic_shape() -> None:
    rng = np.random.default_rng(0)
    half = rng.uniform([0.01, -1, -1], [1, 1, 1], size=(50, 3))
    mid = np.c_[np.zeros(5), rng.uniform(-1, 1, size=(5, 2))]
    verts = np.vstack([half, half * [-1, 1, 1], mid])
    perm = rng.permutation(len(verts))
    verts = verts[perm]
    faces = np.zeros((1, 3), dtype=np.int64)
    sym, unpaired = src.symmetry_map(verts, faces)
    assert unpaired.size == 0
    np.testing.assert_allclose(verts[sym] * [-1, 1, 1], verts)


def test_stable_region_is_symmetric_and_untouched_by_expressions(topology) -> None:
    stable = topology.stable
    assert set(topology.symmetry[stable]) == set(stable)
    np.testing.assert_allclose(topology.reference_stable.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(topology.reference_stable[:, 0].sum(), 0.0, atol=1e-9)  # symmetric about x = 0


# --- geometry ----------------------------------------------------------------------------------------------


def test_alignment_removes_rigid_motion(anny_model, topology) -> None:
    ids = sample_identities(AnnyPriorConfig(), seed=5, n=2)
    raw = src._forward(anny_model, ids.phenotypes, ids.local_changes, np.zeros((2, 52)))
    rot = Rotation.from_euler("xyz", [7, -4, 12], degrees=True).as_matrix()
    moved = raw[0] @ rot.T + [0.02, -0.3, 0.11]
    r0, c0 = src._alignment(raw[0], topology)
    r1, c1 = src._alignment(moved, topology)
    np.testing.assert_allclose((moved - c1) @ r1.T, (raw[0] - c0) @ r0.T, atol=1e-9)
    # the reference infant is its own frame: no rotation, stable centroid at the origin
    pheno, lc = src._reference_params(anny_model)
    ref = src._forward(anny_model, pheno, lc, np.zeros((1, 52)))[0]
    r, _ = src._alignment(ref, topology)
    np.testing.assert_allclose(r, np.eye(3), atol=1e-9)
    aligned = neutral_meshes(ids)
    np.testing.assert_allclose(aligned[:, topology.stable].mean(axis=1), 0.0, atol=1e-12)


def test_frame_axes(topology) -> None:
    """Frame: x = subject's left, face towards -y, z up (checked on the facial actions)."""
    ids = sample_identities(AnnyPriorConfig(), seed=0, n=1)
    neutral, bases = facial_action_bases(ids)
    names = load_catalogue().action_names
    blink = np.linalg.norm(bases[0, names.index("eyeBlinkLeft")], axis=-1)
    assert neutral[0, blink > 1e-4, 0].mean() > 0.01  # the left eye is on +x
    jaw = bases[0, names.index("jawOpen")]
    assert jaw[..., 2].sum() < 0  # the jaw opens downwards
    nose_tip = neutral[0, np.argmin(neutral[0, :, 1])]
    assert abs(nose_tip[0]) < 0.01  # the most forward (-y) point is on the midline


def test_action_bases_reproduce_expression_meshes(topology) -> None:
    ids = sample_identities(AnnyPriorConfig(), seed=2, n=2)
    cat = load_catalogue()
    ex = np.array([0, cat.expression_index("happy"), cat.expression_index("lip_funneler_with_closed_eyes")])
    actions = cat.expression_actions(0.8, ex)
    meshes = expression_meshes(ids, actions, batch_size=4)
    neutral, bases = facial_action_bases(ids)
    np.testing.assert_allclose(meshes[:, 0], neutral, atol=1e-6)
    linear = neutral[:, None] + np.einsum("ek,nkvd->nevd", actions, bases)
    np.testing.assert_allclose(meshes, linear, atol=1e-6)  # float32 storage
    with pytest.raises(ValueError, match="neutral"):
        expression_meshes(ids, actions[1:])


def test_expression_scaling_sizes_actions_to_the_head(topology) -> None:
    names = load_catalogue().action_names
    jaw = names.index("jawOpen")
    peaks = {}
    for scaling in src.ExpressionScaling:
        ids = sample_identities(AnnyPriorConfig(expression_scaling=scaling), seed=4, n=1)
        neutral, bases = facial_action_bases(ids)
        peaks[scaling] = np.linalg.norm(bases[0, jaw], axis=-1).max()
    ratio = peaks[src.ExpressionScaling.head_size] / peaks[src.ExpressionScaling.none]
    radius = src._radius(neutral[0, topology.stable])  # rotation-invariant: aligned == raw radius
    np.testing.assert_allclose(ratio, radius / topology.base_radius, rtol=1e-9)
    assert 0.45 < ratio < 0.8  # an infant head is about 0.6 of Anny's adult base mesh
    assert 0.03 < peaks[src.ExpressionScaling.none] < 0.05  # Anny's adult jaw drop, metres


# --- the tensor --------------------------------------------------------------------------------------------


def test_tiny_tensor_layout(tiny_tensor) -> None:
    t = tiny_tensor
    assert t.vertices.shape == (9, 8, 4538, 3) and t.vertices.dtype == np.float32
    assert t.identity_ids[:3] == ["anny-0000", "anny-0000-mirror", "anny-0000-sym"]
    assert t.expression_names[0] == "neutral" and set(t.expression_names) == set(TINY_EXPRESSIONS)
    cat = load_catalogue()
    rows = [cat.expression_index(n) for n in t.expression_names]
    np.testing.assert_array_equal(t.expression_aus, cat.expression_aus[rows])
    assert t.au_names == list(cat.au_names)
    assert t.faces.shape == (9014, 3)
    assert t.source["kind"] == "anny" and t.source["seed"] == 7 and len(t.source["identities"]) == 3
    # infant heads: roughly 11-15 cm wide
    width = np.ptp(t.vertices[0, 0, :, 0])
    assert 0.10 < width < 0.16


def test_tensor_is_deterministic(tiny_tensor) -> None:
    again = build_anny_tensor(
        AnnySourceConfig(n_identities=3, expressions=TINY_EXPRESSIONS), seed=7, progress=False
    )
    np.testing.assert_array_equal(again.vertices, tiny_tensor.vertices)
    other = build_anny_tensor(
        AnnySourceConfig(n_identities=1, expressions=TINY_EXPRESSIONS), seed=8, progress=False
    )
    assert np.abs(other.vertices[0] - tiny_tensor.vertices[0]).max() > 1e-3


def test_mirrored_variant_swaps_sides(tiny_tensor, topology) -> None:
    t = tiny_tensor
    names = t.expression_names
    left, right = names.index("close_eye_left"), names.index("close_eye_right")
    base, mirrored = t.vertices[0], t.vertices[1]
    # mirrored identity closing its left eye = mirror image of the base closing its right eye
    np.testing.assert_array_equal(mirrored[left], mirror_vertices(base[right], topology.symmetry))
    # and the mirrored identity's left eye is the one that moves
    moved = np.linalg.norm(mirrored[left] - mirrored[0], axis=-1) > 1e-4
    assert mirrored[0, moved, 0].mean() > 0.01


def test_mirrored_variant_of_a_symmetric_identity_is_close(topology) -> None:
    prior = AnnyPriorConfig(local_change_asymmetry=0.0)
    t = build_anny_tensor(
        AnnySourceConfig(n_identities=1, expressions=["neutral", "happy"], prior=prior),
        seed=1,
        progress=False,
    )
    paired = _paired(topology)
    diff = np.linalg.norm(t.vertices[0] - t.vertices[1], axis=-1)[:, paired]
    assert diff[0].max() < 2e-4  # metres: a symmetric identity's neutral is its own mirror image
    assert diff.max() < 2e-3  # Anny's own mouthSmile targets are asymmetric by ~1.3 mm


def test_symmetrised_variant_is_exactly_symmetric(tiny_tensor, topology) -> None:
    t = tiny_tensor
    cat = load_catalogue()
    rows = [cat.expression_index(n) for n in t.expression_names]
    mirror_col = [t.expression_names.index(cat.expression_names[cat.expression_mirror[r]]) for r in rows]
    paired = _paired(topology)
    for i in range(2, 9, 3):
        sym = t.vertices[i]
        mirrored = mirror_vertices(sym[mirror_col], topology.symmetry)
        np.testing.assert_allclose(mirrored[:, paired], sym[:, paired], atol=1e-7)
        np.testing.assert_allclose(sym, 0.5 * (t.vertices[i - 2] + t.vertices[i - 1]), atol=1e-7)


def test_without_variants(topology) -> None:
    t = build_anny_tensor(
        AnnySourceConfig(n_identities=2, expressions=["neutral", "jaw_left"], variants=False),
        seed=0,
        progress=False,
    )
    assert t.identity_ids == ["anny-0000", "anny-0001"] and t.vertices.shape[:2] == (2, 2)


def test_stratified_ages_cover_the_range_evenly_in_sqrt_age_and_do_not_depend_on_n() -> None:
    prior = src.AnnyPriorConfig()
    ages = src.stratified_ages(prior, 95)
    assert ages.min() >= 0.0 and ages.max() <= 36.0
    # even in sqrt(age): every tenth of the sqrt range holds 9 to 11 of the 95 identities (i.i.d. draws:
    # 4 to 15 at this n, 1 % each side)
    counts = np.histogram(np.sqrt(ages / 36.0), bins=10, range=(0.0, 1.0))[0]
    assert counts.min() >= 9 and counts.max() <= 11
    # identity i's age is the same in a longer build and in the held-out stream (start)
    np.testing.assert_array_equal(src.stratified_ages(prior, 200)[:95], ages)
    np.testing.assert_array_equal(src.stratified_ages(prior, 5, start=90), ages[90:])
    # the build's identities take them; "prior" keeps the Gamma draws
    config = src.AnnySourceConfig(n_identities=3)
    params = src.source_identities(config, seed=0)
    np.testing.assert_allclose(params.age_months, ages[:3])
    drawn = src.source_identities(src.AnnySourceConfig(n_identities=3, ages="prior"), seed=0)
    np.testing.assert_array_equal(drawn.age_months, src.sample_identities(prior, 0, 3).age_months)
    with pytest.raises(ValueError, match="ages="):
        src.AnnySourceConfig(ages="uniform")
