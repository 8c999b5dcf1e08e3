import json
from importlib import resources

import numpy as np
import pytest
import trimesh
from scipy.special import ellipe

from synth.labels import anthropometry as an


def _ellipsoid(a: float, b: float, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV ellipsoid with semi-axes (a, b, c) metres along x, y, z: vertices, faces, midline (x = 0) ids."""
    sphere = trimesh.creation.uv_sphere(radius=1.0, count=[128, 128])
    vertices = sphere.vertices * np.array([a, b, c])
    midline = np.flatnonzero(np.abs(vertices[:, 0]) < 1e-12)
    assert midline.size > 100
    return vertices, np.asarray(sphere.faces, dtype=np.int64), midline


def _ellipse_perimeter_mm(a: float, b: float) -> float:
    """Exact perimeter of an ellipse with semi-axes a, b (metres) in mm: 4 a E(1 - b^2 / a^2), a >= b."""
    a, b = max(a, b), min(a, b)
    return 4.0 * a * ellipe(1.0 - (b / a) ** 2) * 1000.0


def test_sphere_head_circumference_is_its_great_circle() -> None:
    r = 0.07
    vertices, faces, midline = _ellipsoid(r, r, r)
    nasion = np.array([0.0, -r, -0.005])
    hc, glabella, opisthocranion = an.head_circumference(vertices, an.HeadTopology(faces, midline), nasion)
    # glabella: the most anterior midline vertex in the band above nasion; opisthocranion: the farthest one
    np.testing.assert_allclose(glabella, [0.0, -r, 0.0], atol=1e-3)
    np.testing.assert_allclose(opisthocranion, [0.0, r, 0.0], atol=2e-3)
    # an inscribed 128-gon is 0.04 % short of the circle
    assert hc == pytest.approx(2 * np.pi * r * 1000.0, rel=1e-3)


@pytest.mark.parametrize(("a", "b", "c"), [(0.06, 0.08, 0.07), (0.075, 0.09, 0.06)])
def test_ellipsoid_head_circumference_is_the_equatorial_ellipse(a: float, b: float, c: float) -> None:
    vertices, faces, midline = _ellipsoid(a, b, c)
    hc, _, _ = an.head_circumference(vertices, an.HeadTopology(faces, midline), np.array([0.0, -b, -0.004]))
    assert hc == pytest.approx(_ellipse_perimeter_mm(a, b), rel=1e-3)


def test_tilted_plane_perimeter_matches_the_analytic_ellipse() -> None:
    # plane through (0, -b, 0) and (0, b cos t, c sin t)-ish points containing x: the section of an
    # ellipsoid by a plane through its centre containing x is an ellipse with semi-axes a and the radius of
    # the y-z ellipse along the plane's direction
    a, b, c = 0.06, 0.08, 0.07
    vertices, faces, _ = _ellipsoid(a, b, c)
    t = np.deg2rad(20.0)
    direction = np.array([0.0, np.cos(t), np.sin(t)])
    radius = 1.0 / np.sqrt((direction[1] / b) ** 2 + (direction[2] / c) ** 2)
    perimeter = an.plane_perimeter(vertices, faces, -radius * direction, radius * direction)
    assert perimeter == pytest.approx(_ellipse_perimeter_mm(a, radius), rel=1e-3)


def test_pair_and_facial_distances_on_a_hand_made_landmark_set() -> None:
    names = ("enR", "enL", "exR", "exL", "chR", "chL", "n", "sn")
    mm = np.array(
        [
            [-10, 0, 0],
            [10, 0, 0],
            [-30, 0, 0],
            [32, 0, 0],
            [-15, 0, -40],
            [15, 0, -40],
            [0, 0, 5],
            [0, 3, -25],
        ],
        dtype=np.float64,
    )
    points = (mm / 1000.0)[None]  # (1, 8, 3) metres
    facial = an.facial_measures(points, names)
    assert facial["en-en"][0] == pytest.approx(20.0)
    assert facial["ex-en"][0] == pytest.approx(21.0)  # mean of 20 (right) and 22 (left)
    assert facial["ch-ch"][0] == pytest.approx(30.0)
    assert facial["n-sn"][0] == pytest.approx(np.hypot(3.0, 30.0))
    pairs = an.pair_distances(points)
    labels = an.pair_names(names)
    assert pairs.shape == (1, 28) and len(labels) == 28
    assert pairs[0, labels.index("enR-enL")] == pytest.approx(20.0)
    assert pairs[0, labels.index("chR-sn")] == pytest.approx(np.linalg.norm(mm[4] - mm[7]))


def test_shipped_norms_round_trip_with_citations() -> None:
    raw = json.loads(resources.files("synth.labels").joinpath("data", an.NORMS_FILE).read_text())
    norms = an.load_norms()
    assert "WHO" in norms.sources["head_circumference"] and "Hall" in norms.sources["facial"]
    # the WHO table at its rows, in mm (the file is in cm)
    for age, boys, boys_sd, girls, girls_sd in raw["head_circumference_who"]["rows"]:
        mean, sd = norms.head_circumference(np.array([age, age]), np.array(["male", "female"]))
        np.testing.assert_allclose(mean, [10 * boys, 10 * girls])
        np.testing.assert_allclose(sd, [10 * boys_sd, 10 * girls_sd])
    # facial norms by year, interpolated linearly between years (18 months: mean of 1 and 2 years)
    mean, sd = norms.facial_norm("en-en", np.array([0.0, 12.0, 18.0]))
    np.testing.assert_allclose(mean, [19.8, 25.0, 25.8])
    np.testing.assert_allclose(sd, [2.04, 2.06, 2.07])
    with pytest.raises(ValueError, match="outside the norms"):
        norms.facial_norm("n-sn", np.array([48.0]))
    with pytest.raises(ValueError, match="sex must be one of"):
        norms.head_circumference(np.array([3.0]), np.array(["x"]))


def test_norm_table_z_scores_and_sd_ratio() -> None:
    norms = an.load_norms()
    mean, sd = norms.head_circumference(np.full(4, 12.0), np.array(["male"] * 4))
    z = np.array([-1.0, 0.0, 1.0, 2.0])
    pop = an.Population(
        age_months=np.full(4, 12.0),
        sex=np.array(["male"] * 4),
        head_circumference=mean + z * sd,
        facial={m: norms.facial_norm(m, np.full(4, 12.0))[0] for m in an.FACIAL_MEASURES},
        pairs=np.zeros((4, 0)),
        pair_labels=[],
    )
    rows = an.norm_table(pop, norms, np.array(["12 m male"] * 4))
    hc = rows[0]
    assert hc["measure"] == "head circumference" and hc["n"] == 4
    assert hc["z_of_mean"] == pytest.approx(0.5) and hc["sd_ratio"] == pytest.approx(z.std(ddof=1))
    assert {r["measure"] for r in rows[1:]} == set(an.FACIAL_MEASURES)
    assert all(r["z_of_mean"] == pytest.approx(0.0) for r in rows[1:])
    assert "| 12 m male | head circumference | 4 |" in an.markdown_table(rows)


def test_3d_norms_at_three_years_are_read_by_sex_and_held_against_36_month_groups() -> None:
    raw = json.loads(resources.files("synth.labels").joinpath("data", an.NORMS_FILE).read_text())
    norms = an.load_norms()
    assert "Weinberg" in norms.sources["facial_3d"] and set(norms.facial_3d) == set(an.FACIAL_3D_MEASURES)
    for _, measure, sex, years, mean, sd in raw["facial_3d_norms_age3"]["rows"]:
        assert years == 3 and norms.facial_3d[measure][sex] == (mean, sd)
    # a landmark set whose distances are the boys' norm means plus one norm SD, and a 12-month group
    names = ("exR", "exL", "aR", "aL", "acR", "acL", "prn", "sn", "ls", "cphR", "cphL", "n", "li", "sl")
    target = {m: norms.facial_3d[m]["male"][0] + norms.facial_3d[m]["male"][1] for m in an.FACIAL_3D_MEASURES}
    labels = an.pair_names(names)
    pairs = np.zeros((2, len(labels)))
    for m, value in target.items():
        for a, b in an.FACIAL_3D_MEASURES[m]:
            pairs[:, labels.index(f"{a}-{b}") if f"{a}-{b}" in labels else labels.index(f"{b}-{a}")] = value
    pop = an.Population(
        age_months=np.array([36.0, 12.0]), sex=np.array(["male", "male"]), head_circumference=np.zeros(2),
        facial={}, pairs=pairs, pair_labels=labels,
    )  # fmt: skip
    rows = an.norm_table_3d(pop, norms, np.array(["36 m male", "12 m male"]))
    assert {r["group"] for r in rows} == {"36 m male"} and len(rows) == len(an.FACIAL_3D_MEASURES)
    for r in rows:
        assert (
            r["z_of_mean"] == pytest.approx(1.0)
            and r["norm_mean_mm"] == norms.facial_3d[r["measure"]]["male"][0]
        )
