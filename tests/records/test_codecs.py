"""Every encoding round-trips (exactly where lossless, to its quantum where not) and is deterministic."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from synth.records import codecs


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (7, 5), elements=st.floats(0, 70, width=32)))
def test_depth_png16_round_trip_to_the_millimetre(depth: np.ndarray) -> None:
    data, clipped = codecs.encode_depth(depth)
    back = codecs.decode_depth(data)
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert clipped == bool((depth > 65.535).any())
    inside = (depth <= 65.535) & (depth >= 0.001)
    assert np.abs(back - depth)[inside].max(initial=0) <= 0.0005 + 1e-6
    assert np.all(back[depth > 65.535] == np.float32(65.535))
    assert np.all((back == 0) == (depth == 0))  # foreground stays foreground, however near


def test_depth_png_is_plain_16bit_millimetres() -> None:
    depth = np.array([[0.0, 0.5], [0.0001, 65.535]], np.float32)
    data, _ = codecs.encode_depth(depth)
    image = np.asarray(Image.open(io.BytesIO(data)))
    assert image.tolist() == [[0, 500], [1, 65535]]  # a 0.1 mm foreground depth stays foreground (1 mm)


def test_depth_rejects_negative_and_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        codecs.encode_depth(np.array([[-0.1]], np.float32))
    with pytest.raises(ValueError, match="finite"):
        codecs.encode_depth(np.array([[np.nan]], np.float32))


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (4, 6, 3), elements=st.floats(-1, 1, width=32)), st.integers(0, 2**32 - 1))
def test_normals_png8_round_trip(raw: np.ndarray, seed: int) -> None:
    norm = np.linalg.norm(raw, axis=-1, keepdims=True)
    normal = np.where(norm > 1e-3, raw / np.maximum(norm, 1e-3), 0.0).astype(np.float32)
    background = np.random.default_rng(seed).uniform(size=normal.shape[:2]) < 0.3
    normal[background] = 0.0
    back = codecs.decode_normal(codecs.encode_normal(normal))
    assert back.dtype == np.float32
    foreground = normal.any(axis=-1)
    assert np.all(back[~foreground] == 0)
    assert np.abs(back - normal)[foreground].max(initial=0) <= 0.01
    assert np.allclose(np.linalg.norm(back[foreground], axis=-1), 1.0, atol=1e-5)


def test_normal_png_channels_are_rgb() -> None:
    normal = np.zeros((1, 2, 3), np.float32)
    normal[0, 0] = (1.0, 0.0, 0.0)
    image = np.asarray(Image.open(io.BytesIO(codecs.encode_normal(normal))))
    assert image[0, 0].tolist() == [255, 128, 128] and image[0, 1].tolist() == [0, 0, 0]


def test_lossless_image_members() -> None:
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(9, 13)) > 0.5
    gray = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    assert np.array_equal(codecs.png1_to_mask(codecs.mask_to_png1(mask)), mask)
    assert np.array_equal(codecs.png8_to_gray(codecs.gray_to_png8(gray)), gray)
    assert Image.open(io.BytesIO(codecs.mask_to_png1(mask))).mode == "1"


def test_jpeg_is_rgb_and_close() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 200  # red
    back = codecs.jpeg_to_rgb(codecs.rgb_to_jpeg(image, 95))
    assert back.shape == image.shape
    assert np.abs(back.astype(int) - image).max() <= 3
    pil = np.asarray(Image.open(io.BytesIO(codecs.rgb_to_jpeg(image, 95))).convert("RGB"))
    assert np.abs(pil.astype(int) - image).max() <= 3


def test_npz_is_deterministic_and_round_trips() -> None:
    latents = {k: np.arange(i + 2, dtype=np.float32) for i, k in enumerate(("z_id", "z_ex", "w_id", "w_ex"))}
    a = codecs.encode_latents(latents)
    b = codecs.encode_latents(dict(reversed(list(latents.items()))))
    assert a == b
    back = codecs.decode_npz(a)
    assert back.keys() == latents.keys()
    for k in latents:
        assert np.array_equal(back[k], latents[k]) and back[k].dtype == np.float32
    with np.load(io.BytesIO(a)) as npz:  # readable by plain numpy
        assert sorted(npz.files) == sorted(latents)


def test_decoders_reject_garbage() -> None:
    for decoder in codecs.DECODERS.values():
        with pytest.raises(codecs.DecodeError):
            decoder(b"\x00garbage")
