"""Scene stage: sRGB decoding against IEC 61966-2-1, photon levels, upsampling, lux."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.colour import linear_to_srgb, srgb_to_linear
from sensors.scene import SceneStage, decode_image, photons_from_illuminance, upsample_photons


def iec_srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 section 5.2, written out independently of the module."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def run_scene(
    images: np.ndarray, attrs: dict | None = None, **params
) -> tuple[np.ndarray, SignalInfo]:
    stage = SceneStage(SceneStage.Params(**params))
    info = stage.setup(SignalInfo(Unit.IMAGE, images.shape[1:], images.dtype, attrs or {}))
    out = stage.process(images, Batch(np.arange(len(images))))
    assert out.shape == (len(images), *info.shape)
    assert out.dtype == info.dtype
    return out, info


def test_inverse_srgb_at_iec_reference_points():
    # Values from the IEC formula: the knee 0.04045 → 0.04045/12.92 = 0.0031308...,
    # mid-grey 0.5 → ((0.5+0.055)/1.055)^2.4 = 0.21404114..., end points fixed.
    encoded = np.array([0.0, 0.04045, 0.5, 1.0])
    expected = np.array([0.0, 0.003130804953560372, 0.21404114048223255, 1.0])
    np.testing.assert_allclose(srgb_to_linear(encoded), expected, rtol=1e-12, atol=0)
    # The two branches meet at the knee (to the 1e-7 the standard's constants allow).
    above = ((0.04045 + 0.055) / 1.055) ** 2.4
    assert abs(above - 0.04045 / 12.92) < 1e-7


def test_inverse_srgb_matches_formula_on_a_grid_and_round_trips():
    v = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(srgb_to_linear(v), iec_srgb_to_linear(v), rtol=1e-12)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(v)), v, atol=1e-12)
    # float32 stays float32
    assert srgb_to_linear(v.astype(np.float32)).dtype == np.float32


def test_decode_uint8_lut_equals_formula():
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(
        decode_image(codes, encoding="srgb", dtype=np.float64),
        iec_srgb_to_linear(codes / 255.0),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        decode_image(codes, encoding="linear", dtype=np.float64), codes / 255.0, rtol=1e-12
    )


@pytest.mark.parametrize(
    ("encoding_attr", "dtype", "value", "expected_linear"),
    [
        ("srgb8", np.uint8, 128, float(iec_srgb_to_linear(128 / 255))),
        ("linear16", np.uint16, 32768, 32768 / 65535),
        ("float", np.float32, 0.25, 0.25),
    ],
)
def test_auto_encoding_from_dataset_attrs(encoding_attr, dtype, value, expected_linear):
    images = np.full((2, 4, 4, 3), value, dtype=dtype)
    out, _ = run_scene(images, {"encoding": encoding_attr}, photons_at_white=1000.0)
    np.testing.assert_allclose(out, 1000.0 * expected_linear, rtol=1e-6)


def test_explicit_encoding_overrides_attrs():
    images = np.full((1, 2, 2, 3), 128, dtype=np.uint8)
    out, _ = run_scene(images, {"encoding": "srgb8"}, encoding="linear", photons_at_white=255.0)
    np.testing.assert_allclose(out, 128.0, rtol=1e-6)


def test_unknown_encoding_attr_is_an_error():
    stage = SceneStage()
    with pytest.raises(StageError) as err:
        stage.setup(SignalInfo(Unit.IMAGE, (4, 4, 3), np.uint8, {"encoding": "jpeg"}))
    assert err.value.key == "encoding"


def test_mean_photons_is_the_mean_of_each_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 16, 12, 3), dtype=np.uint8)
    images[2] //= 4  # a darker image gets the same mean: auto-exposure
    out, info = run_scene(images, {"encoding": "srgb8"}, mean_photons=100.0)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 100.0, rtol=1e-5)
    assert info.shape == (16, 12, 3) and info.dtype == np.float32
    # Proportional to linear light within an image.
    lin = iec_srgb_to_linear(images[0] / 255.0)
    np.testing.assert_allclose(out[0], lin * 100.0 / lin.mean(), rtol=1e-5)


def test_default_level_is_mean_photons_1000_and_black_image_gives_zero():
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[1] = 200
    out, info = run_scene(images, {"encoding": "srgb8"})
    assert np.all(out[0] == 0)
    np.testing.assert_allclose(out[1].mean(), SceneStage.DEFAULT_MEAN_PHOTONS, rtol=1e-6)
    assert info.attrs["wavelength_nm"] == (610.0, 550.0, 465.0)


def test_photons_at_white_keeps_relative_brightness():
    images = np.stack([np.full((4, 4, 3), 1.0), np.full((4, 4, 3), 0.25)]).astype(np.float32)
    out, info = run_scene(images, {"encoding": "float"}, photons_at_white=400.0)
    np.testing.assert_allclose(out[0], 400.0)
    np.testing.assert_allclose(out[1], 100.0)
    assert info.attrs["photons_at_white"] == 400.0


def test_grey_images_are_replicated_to_three_channels():
    images = np.full((1, 3, 5), 1.0, dtype=np.float32)
    out, info = run_scene(images, {"encoding": "float"}, photons_at_white=10.0)
    assert out.shape == (1, 3, 5, 3) and info.shape == (3, 5, 3)
    np.testing.assert_allclose(out, 10.0)


def test_upsample_photons_conserves_total():
    rng = np.random.default_rng(2)
    photons = rng.random((2, 5, 7, 3)).astype(np.float32) * 1000
    up = upsample_photons(photons, 3)
    assert up.shape == (2, 15, 21, 3)
    np.testing.assert_allclose(up.sum(axis=(1, 2, 3)), photons.sum(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(
        up[:, 3:6, 0:3], np.broadcast_to(photons[:, 1:2, 0:1] / 9, (2, 3, 3, 3))
    )


@settings(max_examples=25, deadline=None)
@given(
    factor=st.integers(1, 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_upsample_conserves_total_property(factor, h, w, seed):
    photons = np.random.default_rng(seed).random((1, h, w, 3)) * 1e4
    up = upsample_photons(photons, factor)
    np.testing.assert_allclose(up.sum(), photons.sum(), rtol=1e-12)


def test_stage_upsampling_levels_are_per_sensor_pixel():
    images = np.full((1, 4, 4, 3), 1.0, dtype=np.float32)
    images[0, 0, 0] = 0.5
    out, info = run_scene(
        images, {"encoding": "float"}, photons_at_white=80.0, pixels_per_image_pixel=2
    )
    assert info.shape == (8, 8, 3)
    # Each sensor pixel of a white image pixel gets photons_at_white; a 2×2 block holds
    # four times that: what one image pixel of 2× the pitch would have collected.
    np.testing.assert_allclose(out[0, 2:, 2:], 80.0)
    np.testing.assert_allclose(out[0, :2, :2], 40.0)
    out_mean, _ = run_scene(
        images, {"encoding": "float"}, mean_photons=50.0, pixels_per_image_pixel=3
    )
    np.testing.assert_allclose(out_mean.mean(), 50.0, rtol=1e-6)


def test_lux_conversion_against_hand_computed_value():
    # 100 lx on a white Lambertian scene, f/2, T=1: E_img = 100/(4·2²) = 6.25 lx.
    # 6.25 lx / 683 lm/W = 9.150805e-3 W/m²; a 555 nm photon carries
    # 6.62607015e-34·299792458/555e-9 = 3.579182e-19 J → 2.556675e16 photons/(s·m²);
    # × (2 µm)² = 4e-12 m² × 0.01 s = 1022.670 photons.
    photons = photons_from_illuminance(100.0, exposure_s=0.01, f_number=2.0, pixel_pitch_um=2.0)
    assert photons == pytest.approx(1022.670, rel=2e-6)
    # Reflectance, transmission and pixel area enter linearly; f-number as 1/N².
    assert photons_from_illuminance(
        100.0,
        exposure_s=0.01,
        f_number=4.0,
        pixel_pitch_um=4.0,
        reflectance=0.5,
        lens_transmission=0.9,
    ) == pytest.approx(1022.670 * 0.45, rel=2e-6)


def test_stage_lux_mode_sets_attrs_and_levels():
    images = np.full((1, 2, 2, 3), 255, dtype=np.uint8)
    params = dict(illuminance_lux=100.0, exposure_s=0.01, f_number=2.0, pixel_pitch_um=2.0)
    out, info = run_scene(images, {"encoding": "srgb8"}, **params)
    # the camera equation's 1022.670 photons (hand-computed) are the whole light's: R + G + B
    np.testing.assert_allclose(out.sum(axis=-1), 1022.670, rtol=1e-5)
    np.testing.assert_allclose(out, 1022.670 / 3, rtol=1e-5)
    warm, _ = run_scene(images, {"encoding": "srgb8"}, band_fractions=(0.5, 0.3, 0.2), **params)
    np.testing.assert_allclose(warm[0, 0, 0], [511.335, 306.801, 204.534], rtol=1e-5)
    assert info.attrs["exposure_s"] == 0.01
    assert info.attrs["f_number"] == 2.0
    assert info.attrs["pixel_pitch_um"] == 2.0


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"mean_photons": 10.0, "photons_at_white": 20.0}, "photons_at_white"),
        ({"illuminance_lux": 10.0, "exposure_s": 0.01, "pixel_pitch_um": 2.0}, "f_number"),
        ({"illuminance_lux": 10.0, "f_number": 2.0, "pixel_pitch_um": 2.0}, "exposure_s"),
        (
            {
                "illuminance_lux": 1.0,
                "exposure_s": 0.01,
                "f_number": 2.0,
                "pixel_pitch_um": 2.0,
                "band_fractions": (0.5, 0.5, 0.5),
            },
            "band_fractions",
        ),
    ],
)
def test_parameter_errors_name_the_key(params, key):
    stage = SceneStage(SceneStage.Params(**params))
    with pytest.raises(StageError) as err:
        stage.setup(SignalInfo(Unit.IMAGE, (4, 4, 3), np.uint8, {"encoding": "srgb8"}))
    assert err.value.key == key


def test_nan_in_float_images_is_an_error():
    stage = SceneStage()
    images = np.zeros((1, 2, 2, 3), dtype=np.float32)
    images[0, 1, 1, 2] = np.nan
    stage.setup(SignalInfo(Unit.IMAGE, images.shape[1:], images.dtype, {"encoding": "float"}))
    with pytest.raises(StageError, match="NaN"):
        stage.process(images, Batch(np.arange(1)))


def test_input_is_not_modified():
    images = np.full((1, 2, 2, 3), 0.5, dtype=np.float32)
    run_scene(images, {"encoding": "float"}, photons_at_white=100.0)
    assert np.all(images == 0.5)
