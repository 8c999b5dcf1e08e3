import numpy as np
import pytest

from synth.labels.expressions import load_catalogue
from synth.labels.landmarks import landmarks, load_anny_head_landmarks
from synth.sources.anny_source import (
    AnnyPriorConfig,
    AnnySourceConfig,
    anny_topology,
    facial_action_bases,
    mirror_vertices,
    sample_identities,
    source_identities,
)
from synth.sources.correspondence import compute_mapping
from synth.sources.transfer import (
    AdultSource,
    SourceTopology,
    TransferConfig,
    au_actions,
    build_transfer_tensor,
    transfer_catalogue,
    transfer_expression,
    validate_transfer,
)
from tests._anny_head import template


def _identity_mapping():
    verts, faces = template()
    lmk = landmarks(verts, load_anny_head_landmarks())
    return verts, compute_mapping(verts, faces, lmk, verts, faces, lmk)


def test_zero_deformation_is_a_no_op() -> None:
    verts, mapping = _identity_mapping()
    rng = np.random.default_rng(0)
    source = rng.normal(size=(3, len(verts), 3))  # K = 3 sources, s == e
    target = verts + rng.normal(size=verts.shape) * 1e-3
    for m in (None, mapping):
        out = transfer_expression(target, source, source, m, delta=0.7)
        np.testing.assert_array_equal(out, target)


def test_same_topology_transfer_equals_the_direct_delta() -> None:
    verts, mapping = _identity_mapping()
    rng = np.random.default_rng(1)
    src_s = verts + rng.normal(size=(4, len(verts), 3)) * 1e-3
    src_e = src_s + rng.normal(size=(4, len(verts), 3)) * 2e-3
    target = verts * 0.8
    direct = target + 0.5 * (src_e - src_s).mean(axis=0)
    np.testing.assert_allclose(transfer_expression(target, src_s, src_e, None, delta=0.5), direct, atol=1e-12)
    np.testing.assert_allclose(
        transfer_expression(target, src_s, src_e, mapping, delta=0.5), direct, atol=1e-9
    )


def test_expressive_start_uses_the_same_au_combination_in_the_source() -> None:
    """An infant already in expression s (smiling) gets e = s + jaw drop; the source deformation runs
    from s to e, so with the infant's own bases as the source the result is Anny's native s + e mesh."""
    cat = load_catalogue()
    params = sample_identities(AnnyPriorConfig(), 3, 1)
    neutral, bases = facial_action_bases(params)
    topo = anny_topology()
    source = AdultSource(neutral, bases.astype(np.float32), topo.faces, np.zeros((23, 3)), "anny-head")
    aus_s = cat.expression_aus[cat.expression_index("happy")]
    aus_e = np.clip(aus_s + cat.expression_aus[cat.expression_index("jaw_drop")], 0, 1)
    a_s, a_e = au_actions(cat, aus_s), au_actions(cat, aus_e)
    infant_s = neutral + np.einsum("a,iavd->ivd", a_s, bases)
    out = transfer_catalogue(infant_s, source, None, a_e[None], 1.0, None, infant_actions=a_s)
    native_e = neutral + np.einsum("a,iavd->ivd", a_e, bases)
    np.testing.assert_allclose(out[:, 0], native_e, atol=1e-6)
    # starting from neutral instead would add the smile twice
    twice = transfer_catalogue(infant_s, source, None, a_e[None], 1.0, None)
    assert np.abs(twice[:, 0] - native_e).max() > 1e-3


def test_transfer_tensor_from_a_decimated_adult_topology() -> None:
    src = AnnySourceConfig(n_identities=1, expressions=["jaw_drop", "happy"], variants=False)
    cfg = TransferConfig(kappa=2, reduction=0.6)
    tensor = build_transfer_tensor(src, cfg, seed=0, progress=False)
    assert tensor.vertices.shape == (1, 3, 4538, 3)
    assert tensor.expression_names == ["neutral", "jaw_drop", "happy"]  # catalogue order
    assert tensor.source["kind"] == "anny+transfer" and tensor.source["source_vertices"] < 0.5 * 4538
    # compare with Anny's native infant expressions of the same identity
    cat = load_catalogue()
    neutral, bases = facial_action_bases(source_identities(src, 0))
    np.testing.assert_allclose(tensor.vertices[0, 0], neutral[0], atol=1e-6)
    for j, name in enumerate(tensor.expression_names[1:], start=1):
        actions = au_actions(cat, cat.expression_aus[cat.expression_index(name)])
        native = neutral[0] + np.einsum("a,avd->vd", actions, bases[0])
        displacement = np.linalg.norm(native - neutral[0], axis=1).mean()
        err = np.linalg.norm(tensor.vertices[0, j] - native, axis=1).mean()
        assert err < 0.35 * displacement, (name, err, displacement)


def test_transfer_tensor_variants_mirror_and_symmetrise() -> None:
    src = AnnySourceConfig(n_identities=1, expressions=["close_eye_left", "close_eye_right"], variants=True)
    tensor = build_transfer_tensor(src, TransferConfig(kappa=1, reduction=0.6), seed=0, progress=False)
    names = tensor.expression_names
    assert tensor.identity_ids == ["anny-0000", "anny-0000-mirror", "anny-0000-sym"]
    assert names == ["neutral", "close_eye_left", "close_eye_right"]
    base, mirrored, sym = tensor.vertices
    topo = anny_topology()
    paired = topo.symmetry != np.arange(topo.symmetry.size)  # off the midline and with a partner
    # the mirrored identity closing its left eye is the mirror image of the base closing its right eye
    swap = [names.index(n) for n in ("neutral", "close_eye_right", "close_eye_left")]
    np.testing.assert_allclose(mirrored, mirror_vertices(base[swap], topo.symmetry), atol=1e-6)
    np.testing.assert_allclose(sym, 0.5 * (base + mirrored), atol=1e-6)
    assert np.abs(mirrored[0][paired] - base[0][paired]).max() > 1e-5  # a real, asymmetric identity


def test_validation_reports_three_settings() -> None:
    cat = load_catalogue()
    ex = [0, cat.expression_index("jaw_drop")]
    errors = validate_transfer(
        TransferConfig(kappa=1, reduction=0.6), AnnyPriorConfig(), 0, 1, expressions=ex
    )
    assert errors.expression_names == ["neutral", "jaw_drop"] and len(errors.methods) == 3
    for table in errors.methods.values():
        assert table.shape == (2, 2) and table[0, 1] < 1e-4  # neutral transfers exactly (float32 round-off)
        assert 0.0 < table[1, 0] <= table[1, 1] < 3 * errors.magnitude[1]
    same_known = errors.methods["same topology, M = I"]
    assert same_known[1, 0] < 0.1 * errors.magnitude[1]  # Anny's actions barely depend on age


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"transfer\.kappa"):
        TransferConfig(kappa=0)
    with pytest.raises(ValueError, match="adult_age_years"):
        TransferConfig(adult_age_years=(1.0, 5.0))
    assert TransferConfig(topology="anny").topology is SourceTopology.anny


def test_transfer_validate_command_writes_the_report(tmp_path) -> None:
    from synth.cli import main

    out = tmp_path / "transfer.md"
    args = ["transfer", "validate", "--infants", "1", "--kappa", "1", "--expressions", "jaw_drop"]
    assert main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| jaw_drop |" in text and "synth transfer validate --infants 1" in text
    assert main(["transfer", "validate", "--infants", "0", "--out", str(out)]) == 2


def test_transfer_models_report_on_held_out_transferred_infants() -> None:
    from synth.build.build import held_out_tensor, source_tensor
    from synth.build.config import ModelConfig, ModelSource

    config = ModelConfig(
        source=ModelSource.anny_transfer,
        n_identities=1,
        expressions=["jaw_drop"],
        transfer=TransferConfig(kappa=1, reduction=0.6),
        report_held_out=1,
    )
    held = held_out_tensor(config, progress=False)
    train = source_tensor(config, progress=False)
    assert held.source["kind"] == "anny+transfer"  # made by the build's own source, without variants
    assert held.identity_ids == ["anny-0000"] and held.vertices.shape == (1, 2, 4538, 3)
    assert np.abs(held.vertices[0, 0] - train.vertices[0, 0]).max() > 1e-3  # another infant
