"""A gray scene (one plane of all the light) into a mono photodetector: the same mean
photons as the three RGB planes a mono sensor sums, so the same electrons in distribution."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

import pipeline.stage
from pipeline.stage import THREADS_ENV, Batch, SignalInfo, StageError, Unit
from sensors.adc import ADCStage
from sensors.optics import OpticsStage
from sensors.photodetector import PhotodetectorStage, expected_electrons
from sensors.raw import RawStage
from sensors.scene import SceneStage

H, W = 12, 10


def _scene(images: np.ndarray, **params) -> tuple[np.ndarray, SignalInfo]:
    stage = SceneStage(SceneStage.Params(**params))
    info = stage.setup(SignalInfo(Unit.IMAGE, images.shape[1:], images.dtype))
    return stage.process(images, Batch(np.arange(len(images)))), info


def _images(n: int = 3, channels: int = 3) -> np.ndarray:
    shape = (n, H, W, channels) if channels > 1 else (n, H, W)
    return np.random.default_rng(1).uniform(0.05, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("level", [{"photons_at_white": 500.0}, {"mean_photons": 800.0}])
def test_the_gray_plane_is_the_sum_of_the_rgb_planes(level):
    images = _images()
    rgb, _ = _scene(images, **level)
    gray, info = _scene(images, channels="gray", **level)
    assert info.shape == (H, W, 1) and gray.dtype == np.float32
    np.testing.assert_allclose(gray[..., 0], rgb.sum(axis=-1, dtype=np.float64), rtol=1e-6)


def test_a_grey_image_gives_three_channels_worth_and_mean_photons_is_per_channel():
    grey = _images(channels=1)
    gray, _ = _scene(grey, channels="gray", photons_at_white=400.0)
    np.testing.assert_allclose(gray[..., 0], 3 * 400.0 * grey, rtol=1e-6)
    gray, _ = _scene(grey, channels="gray", mean_photons=700.0)
    np.testing.assert_allclose(gray.mean(axis=(1, 2, 3), dtype=np.float64) / 3, 700.0, rtol=1e-6)


def test_lux_mode_shares_the_camera_equations_photons_by_band_fraction():
    """A white pixel gets all the photons the camera equation gives (R + G + B); a colour
    image's plane weights each channel by 3 × its band fraction, as the RGB scene does."""
    lux = {"illuminance_lux": 50.0, "exposure_s": 0.01, "f_number": 2.8, "pixel_pitch_um": 2.0}
    fractions = (0.2, 0.5, 0.3)
    white = np.ones((1, H, W, 3), np.float32)
    gray, _ = _scene(white, channels="gray", band_fractions=fractions, **lux)
    total = SceneStage(SceneStage.Params(**lux))
    total.setup(SignalInfo(Unit.IMAGE, (H, W, 3), np.float32))
    np.testing.assert_allclose(gray, 3 * total._photons_per_sensor_px, rtol=1e-6)
    images = _images()
    rgb, _ = _scene(images, band_fractions=fractions, **lux)
    gray, _ = _scene(images, channels="gray", band_fractions=fractions, **lux)
    np.testing.assert_allclose(gray[..., 0], rgb.sum(axis=-1, dtype=np.float64), rtol=1e-6)


def test_the_gray_planes_wavelength_is_photon_wavelength_nm_for_the_airy_psf():
    _, info = _scene(_images(), channels="gray", photon_wavelength_nm=600.0)
    assert info.attr("wavelength_nm") == (600.0,)
    optics = OpticsStage(OpticsStage.Params(psf="airy", f_number=4, pixel_pitch_um=2))
    assert optics.setup(info.evolve(unit=Unit.PHOTONS)).shape == (H, W, 1)


def test_gray_with_a_spectral_scene_is_refused():
    stage = SceneStage(SceneStage.Params(channels="gray", spectral="colorchecker"))
    with pytest.raises(StageError, match="one band of all the light") as err:
        stage.setup(SignalInfo(Unit.IMAGE, (H, W, 3), np.float32))
    assert err.value.key == "channels"


@pytest.mark.parametrize("cfa", ["RGGB", "RGBW", "stacked"])
def test_one_plane_into_a_colour_sensor_is_refused(cfa):
    stage = PhotodetectorStage(PhotodetectorStage.Params(cfa=cfa))
    with pytest.raises(StageError, match="no colours") as err:
        stage.setup(SignalInfo(Unit.PHOTONS, (H, W, 1), np.float32))
    assert err.value.key == "cfa"
    with pytest.raises(ValueError, match="no colours"):
        expected_electrons(np.ones((1, H, W, 1)), cfa)


def _mono(shape: tuple[int, ...], **params) -> PhotodetectorStage:
    stage = PhotodetectorStage(PhotodetectorStage.Params(cfa="mono", **params), seed=4)
    stage.setup(SignalInfo(Unit.PHOTONS, shape, np.float32, {"exposure_s": 0.01}))
    return stage


def test_a_mono_sensor_collects_the_same_mean_from_one_plane_as_from_three():
    planes = np.random.default_rng(2).uniform(0, 900, (2, H, W, 3)).astype(np.float32)
    one = planes.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    quiet = {"shot_noise": False, "read_noise_e": 0.0, "dsnu_e": 0.0}
    for params in (quiet, quiet | {"prnu_pct": 2.0, "row_gain_fpn_pct": 1.0}):
        from_three = _mono((H, W, 3), **params).process(planes, Batch(np.arange(2)))
        from_one = _mono((H, W, 1), **params).process(one, Batch(np.arange(2)))
        np.testing.assert_allclose(from_one, from_three, rtol=2e-7)
    lam = expected_electrons(one, "mono", qe_w=0.7, dark_current_e_per_s=5.0)
    np.testing.assert_allclose(lam, 0.7 * one[..., 0].astype(np.float64) + 0.05, rtol=1e-15)


def test_one_plane_shot_and_read_noise_follow_the_model():
    """Flat field of one plane: electrons ~ Poisson(QE·photons) + N(0, read²); mean and
    variance against the model, the counts (read noise 0) against scipy's Poisson pmf."""
    photons = np.full((40, H, W, 1), 250.0, np.float32)
    ideal = {"dark_current_e_per_s": 0.0, "prnu_pct": 0.0, "dsnu_e": 0.0, "qe_w": 0.8}
    e = _mono((H, W, 1), **ideal).process(photons, Batch(np.arange(40))).astype(np.float64)
    assert abs(e.mean() - 200.0) < 4 * np.sqrt(204.0 / e.size)
    assert abs(e.var() / (200.0 + 4.0) - 1) < 0.05  # Poisson 200 + read 2² (default)
    counts = _mono((H, W, 1), **ideal, read_noise_e=0.0).process(photons, Batch(np.arange(40)))
    edges = np.array([-np.inf, 180, 190, 195, 200, 205, 210, 220, np.inf])  # k < edge
    observed = np.histogram(counts.ravel(), bins=edges - 0.5)[0]
    expected = np.diff(scipy.stats.poisson(200.0).cdf(edges - 1)) * counts.size
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_a_gray_chain_gives_the_same_arrays_for_batch_sizes_and_threads(monkeypatch):
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 3 * H * W)  # groups of 3 images
    photons = np.random.default_rng(5).uniform(0, 3000, (14, H, W, 1)).astype(np.float32)
    info = SignalInfo(Unit.PHOTONS, (H, W, 1), np.float32, {"exposure_s": 0.01})
    stages = [
        OpticsStage(OpticsStage.Params(sigma_px=0.8)),
        PhotodetectorStage(PhotodetectorStage.Params(cfa="mono", row_noise_e=1.0), index=1),
        ADCStage(ADCStage.Params(bits=12, noise_lsb=0.5), index=2),
        RawStage(RawStage.Params(), index=3),
    ]
    for stage in stages:
        info = stage.setup(info)
    assert info.shape == (H, W, 3)  # mono replicated for the CNN
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        for size in (1, 7, 14):
            parts = []
            for lo in range(0, 14, size):
                x, batch = photons[lo : lo + size], Batch(np.arange(lo, min(lo + size, 14)))
                for stage in stages:
                    x = stage.process(x, batch)
                parts.append(x)
            runs.append(np.concatenate(parts))
    for rgb in runs[1:]:
        assert np.array_equal(rgb, runs[0])
