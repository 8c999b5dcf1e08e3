import numpy as np
import pytest

from synth.diffusion.conditioning import FOREGROUND_MIN, canny_condition, depth_condition, to_control_images


def test_depth_convention_golden() -> None:
    # One row: background, 0.5 m (nearest), 1.0 m (farthest), 2/3 m (inverse depth halfway).
    depth = np.array([[[0.0, 0.5, 1.0, 2.0 / 3.0]]], dtype=np.float32)
    out = depth_condition(depth)
    assert out.dtype == np.float32 and out.shape == depth.shape
    expected = [0.0, 1.0, FOREGROUND_MIN, FOREGROUND_MIN + 0.5 * (1 - FOREGROUND_MIN)]
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)


def test_depth_is_normalised_per_image_near_bright() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 0.9, (3, 16, 16)).astype(np.float32)
    depth[:, :4] = 0.0  # background rows
    depth[1] = 2.0 * depth[0]  # same shape, farther away: same conditioning image (per-image normalisation)
    depth[2] = 0.0  # no foreground at all
    out = depth_condition(depth)
    assert np.all(out[:, :4] == 0) and np.all(out[2] == 0)
    fg = depth[0] > 0
    assert out[0][fg].max() == pytest.approx(1.0) and out[0][fg].min() == pytest.approx(FOREGROUND_MIN)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    # Monotone: nearer pixels are brighter.
    order = np.argsort(depth[0][fg])
    assert np.all(np.diff(out[0][fg][order]) <= 1e-7)


def test_depth_flat_foreground_is_white() -> None:
    depth = np.zeros((1, 4, 4), np.float32)
    depth[0, 1:3, 1:3] = 0.5
    out = depth_condition(depth)
    assert np.all(out[0, 1:3, 1:3] == 1.0) and out.sum() == 4.0


def test_canny_and_layout() -> None:
    canny = np.zeros((2, 8, 8), np.uint8)
    canny[:, 3] = 255
    cond = canny_condition(canny)
    assert cond.dtype == np.float32 and set(np.unique(cond)) == {0.0, 1.0}
    img = to_control_images(cond, 8)
    assert img.shape == (2, 3, 8, 8) and img.flags.c_contiguous
    assert np.array_equal(img[:, 0], cond) and np.array_equal(img[:, 1], img[:, 2])
    with pytest.raises(ValueError, match="uint8"):
        canny_condition(canny.astype(np.float32))


def test_resize_keeps_range_and_edges() -> None:
    cond = np.zeros((1, 64, 64), np.float32)
    cond[0, :, 31] = 1.0  # a one-pixel edge
    small = to_control_images(cond, 32)
    big = to_control_images(cond, 128)
    assert small.shape == (1, 3, 32, 32) and big.shape == (1, 3, 128, 128)
    assert small.min() >= 0 and small.max() <= 1 and small[0, 0].max() > 0.4  # faded, not lost
    assert to_control_images(np.zeros((0, 64, 64), np.float32), 32).shape == (0, 3, 32, 32)
