"""The RGBW fusion (``demosaic: rgbw_fusion``, sensors/rgbw.py) and the RGBW auto gain,
against equations: a flat field's colour exactly, a grey ramp's W detail, the luminance
noise predicted from the electron counts, no bias at 20 photons, the same output level
under D65 and A, and batch / thread invariance."""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.stage
from pipeline.stage import THREADS_ENV, Batch, SignalInfo, StageError, Unit
from sensors import spectra, spectral
from sensors.adc import ADCStage
from sensors.photodetector import CFA_TILES, PhotodetectorStage
from sensors.raw import RawStage, channel_map, demosaic_bilinear
from sensors.rgbw import RgbwFusion, w_coefficients, w_coefficients_flat
from sensors.scene import SceneStage

TILE = CFA_TILES["RGBW"]
NOISELESS = dict(
    shot_noise=False, read_noise_e=0.0, dark_current_e_per_s=0.0, prnu_pct=0.0, dsnu_e=0.0
)
READ_NOISE_E = 2.0


def _mosaic_e(photons_rgb: np.ndarray, qe_rgb, qe_w: float) -> np.ndarray:
    """Expected electrons (..., H, W) of an RGBW mosaic in RGB mode: a colour pixel
    qe_c · p_c, a W pixel qe_w · (p_R + p_G + p_B)."""
    cmap = channel_map(TILE, *photons_rgb.shape[-3:-1])
    colour = photons_rgb * np.asarray(qe_rgb)
    w = qe_w * photons_rgb.sum(axis=-1)
    pick = np.take_along_axis(colour, np.minimum(cmap, 2)[..., None].repeat(1, -1)[None], -1)
    return np.where(cmap == 3, w, pick[..., 0])


def _fusion(h: int, w: int, coefficients, guard: float) -> RgbwFusion:
    """The fusion planned in float64 (the raw stage plans it in float32)."""
    return RgbwFusion(channel_map(TILE, h, w), (4, 4), np.asarray(coefficients), guard, np.float64)


def test_a_flat_field_returns_exactly_its_colour():
    qe, qe_w, gains = (0.5, 0.6, 0.4), 0.7, np.array([1.3, 1.0, 1.6])
    colours = np.random.default_rng(0).uniform(5, 500, (5, 3))
    photons = np.broadcast_to(colours[:, None, None, :], (5, 16, 12, 3))
    e = _mosaic_e(photons, qe, qe_w)
    balanced = np.where(
        channel_map(TILE, 16, 12) == 3, 1.0, gains[np.minimum(channel_map(TILE, 16, 12), 2)]
    )
    out = _fusion(16, 12, w_coefficients_flat(qe, qe_w, gains), 1.0)(e * balanced)
    expected = colours * np.asarray(qe) * gains
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), rtol=1e-12)


def test_the_spectral_fit_makes_the_illuminant_white_exact_and_holds_for_an_exact_w():
    bands = spectral.band_grid(400.0, 700.0, 10.0)
    qe = spectral.qe_curves("camera", bands, qe=0.6, qe_w=0.6, camera="Nikon 5100 (NPL)")
    light = spectra.illuminant_photons("A", bands)
    gains = np.array([0.5, 1.0, 2.5])
    a = w_coefficients(qe[:3], qe[3], light, gains)
    assert a @ (gains * (qe[:3] @ light)) == pytest.approx(qe[3] @ light, rel=1e-12)
    exact = np.array([0.8, 1.1, 0.5]) @ qe[:3]  # a W that is a combination: recovered
    np.testing.assert_allclose(w_coefficients(qe[:3], exact, light, np.ones(3)), [0.8, 1.1, 0.5])


def test_a_noise_free_grey_ramp_keeps_ws_detail():
    """A grey ramp: W is linear, so its checkerboard interpolation (the mean of four
    neighbours) is exact inside the border, and the output's luminance Σ a_c out_c is W
    (the guard negligible); the bilinear demosaic, from the sparse colour pixels, is not."""
    h, w = 16, 20
    ramp = np.linspace(20.0, 400.0, w)[None, :, None].repeat(h, 0).repeat(3, 2)[None]
    e = _mosaic_e(ramp, (0.6, 0.6, 0.6), 0.6)
    a = w_coefficients_flat(0.6, 0.6, np.ones(3))
    out = _fusion(h, w, a, 1e-9)(e)
    true_w = 0.6 * ramp.sum(-1)
    np.testing.assert_allclose((out @ a)[:, 1:-1, 1:-1], true_w[:, 1:-1, 1:-1], rtol=1e-9)
    bilinear = demosaic_bilinear(e, TILE) @ a
    assert np.abs(bilinear - true_w)[:, 1:-1, 1:-1].max() > 1e3 * 1e-9 * true_w.max()


def _block_weights(luminance, h: int, w: int, block) -> np.ndarray:
    """(H, W) weights of each mosaic pixel in the block mean of a linear luminance map."""
    impulses = np.eye(h * w).reshape(h * w, h, w)
    return luminance(impulses)[:, block[0], block[1]].mean(axis=(1, 2)).reshape(h, w)


def test_the_luminance_snr_at_20_photons_is_ws_and_beats_the_bilinear_one():
    """A flat grey at 20 photons per channel, QE 0.6 (RGB mode): 12 e⁻ per colour pixel,
    36 e⁻ per W pixel, read noise 2 e⁻. Both luminances are linear in the pixels (the
    fusion's is the dense W plane: Σ a_c out_c = W), so the variance of a 8×8 block mean
    is Σ_j w_j² (N_j + σ_r²) with w_j each pixel's weight; the measured SNRs match those
    predictions and the fusion's beats the bilinear one by the predicted factor."""
    h = w = 24
    block = (slice(8, 16), slice(8, 16))
    cmap = channel_map(TILE, h, w)
    electrons = np.where(cmap == 3, 36.0, 12.0)
    a = w_coefficients_flat(0.6, 0.6, np.ones(3))
    fusion = _fusion(h, w, a, 1e-9)
    fusion_l = lambda m: np.stack([fusion.planes(x)[1] for x in m])  # noqa: E731
    bilinear_l = lambda m: demosaic_bilinear(m, TILE) @ a  # noqa: E731
    n = 3000
    rng = np.random.default_rng(7)
    noisy = rng.poisson(electrons, (n, h, w)) + rng.normal(0, READ_NOISE_E, (n, h, w))
    snr = {}
    for name, lum, measured in (
        ("fusion", fusion_l, (fusion(noisy) @ a)),
        ("bilinear", bilinear_l, bilinear_l(noisy)),
    ):
        weights = _block_weights(lum, h, w, block)
        mean = float((weights * electrons).sum())
        predicted_var = float((weights**2 * (electrons + READ_NOISE_E**2)).sum())
        blocks = measured[:, block[0], block[1]].mean(axis=(1, 2))
        assert blocks.mean() == pytest.approx(mean, rel=1e-2)
        assert blocks.var() / predicted_var == pytest.approx(1.0, abs=4 * np.sqrt(2 / n))
        snr[name] = (mean / np.sqrt(predicted_var), mean / blocks.std())
    predicted_ratio = snr["fusion"][0] / snr["bilinear"][0]
    assert predicted_ratio > 1.5  # W holds 3× a colour pixel's electrons on as many pixels
    assert snr["fusion"][1] / snr["bilinear"][1] == pytest.approx(predicted_ratio, rel=0.1)


def test_the_guard_does_not_bias_the_mean_at_20_photons():
    """Flat colours at 20 photons per channel with read noise: the fusion's mean over many
    images is the colour within 4 standard errors (the guard adds δ to both sides of the
    ratio, so its expectation stays 1)."""
    h = w = 16
    n = 400
    rng = np.random.default_rng(3)
    photons = np.array([26.0, 20.0, 14.0])
    e = _mosaic_e(np.broadcast_to(photons, (1, h, w, 3)), 0.6, 0.6)[0]
    noisy = rng.poisson(e, (n, h, w)) + rng.normal(0, READ_NOISE_E, (n, h, w))
    out = _fusion(h, w, w_coefficients_flat(0.6, 0.6, np.ones(3)), READ_NOISE_E)(noisy)
    per_image = out.mean(axis=(1, 2))
    se = per_image.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(per_image.mean(axis=0) - 0.6 * photons) < 4 * se)
    dark = _fusion(h, w, [1, 1, 1], READ_NOISE_E)(rng.normal(0, READ_NOISE_E, (20, h, w)))
    assert np.isfinite(dark).all()


def _spectral_chain(illuminant: str, raw: dict, *, photons=2000.0, noise=False):
    scene = dict(
        mean_photons=photons,
        spectral="recover",
        recovery="mallett2019",
        illuminant=illuminant,
        band_range_nm=[400, 700, 10],
    )
    pd = dict(
        cfa="RGBW",
        qe_curves="camera",
        camera="Nikon 5100 (NPL)",
        qe=0.6,
        full_well_e=1e5,
        **({} if noise else NOISELESS),
    )
    return [
        (SceneStage, scene),
        (PhotodetectorStage, pd),
        (ADCStage, {"bits": 16}),
        (RawStage, raw),
    ]


def _run(stages, images, first: int = 0):
    """Set up and run [(class, params)] on images numbered from ``first``; (output, info)."""
    info = SignalInfo(Unit.IMAGE, images.shape[1:], images.dtype, {"encoding": "linear16"})
    x, batch = images, Batch(np.arange(first, first + len(images)))
    for i, (cls, params) in enumerate(stages):
        stage = cls(cls.Params(**params), seed=1, index=i)
        info = stage.setup(info)
        x = stage.process(x, batch)
    return x, info


@pytest.mark.parametrize("demosaic", ["bilinear", "rgbw_fusion"])
def test_with_white_balance_a_grey_gives_the_same_level_under_d65_and_a(demosaic):
    """Auto gain measures the balanced colour pixels, so a flat grey comes out at the
    target under both lights (before: W in the mean gave .093 under D65, .070 under A)."""
    grey = np.full((2, 16, 16, 3), 0.5, np.float32)
    raw = {"demosaic": demosaic, "auto_gain": True, "white_balance": "illuminant"}
    means = [
        _run(_spectral_chain(ill, raw), grey)[0].mean(dtype=np.float64) for ill in ("D65", "A")
    ]
    np.testing.assert_allclose(means, 0.18, rtol=2e-3)  # 16-bit codes, a ratio of codes


def test_fusion_is_invariant_to_batch_size_and_threads(monkeypatch):
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 3 * 16 * 16)
    images = np.random.default_rng(2).uniform(0, 1, (9, 16, 16, 3)).astype(np.float32)
    raw = {"demosaic": "rgbw_fusion", "auto_gain": True, "white_balance": "illuminant"}
    stages = _spectral_chain("A", raw, photons=50.0, noise=True)
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        for size in (1, 4, 9):
            parts = [_run(stages, images[lo : lo + size], lo)[0] for lo in range(0, 9, size)]
            runs.append(np.concatenate(parts))
    for out in runs[1:]:
        assert np.array_equal(out, runs[0])


@pytest.mark.parametrize(
    ("cfa", "raw", "key"),
    [
        ("RGGB", {"demosaic": "rgbw_fusion"}, "demosaic"),
        ("RGBW", {"demosaic": "rgbw_fusion", "white_balance": "gray_world"}, "white_balance"),
    ],
)
def test_fusion_refuses_a_cfa_without_w_and_per_image_white_balance(cfa, raw, key):
    stages = [(PhotodetectorStage, {"cfa": cfa}), (ADCStage, {"bits": 10}), (RawStage, raw)]
    info = SignalInfo(Unit.PHOTONS, (8, 8, 3), np.float32, {"exposure_s": 0.01})
    with pytest.raises(StageError) as err:
        for i, (cls, params) in enumerate(stages):
            info = cls(cls.Params(**params), index=i).setup(info)
    assert err.value.key == key and "\n" not in str(err.value)


def test_fusion_refuses_a_chain_that_gives_no_electron_scale_for_its_guard():
    """The guard is in electrons: without the ADC's system gain or the full well the
    raw stage cannot convert it, and says so in one line naming rgbw_guard_e."""
    import dataclasses

    info = SignalInfo(Unit.PHOTONS, (8, 8, 3), np.float32, {"exposure_s": 0.01})
    info = PhotodetectorStage(PhotodetectorStage.Params(cfa="RGBW"), index=0).setup(info)
    info = ADCStage(ADCStage.Params(bits=10), index=1).setup(info)
    scale_free = {
        k: v for k, v in info.attrs.items() if k not in ("system_gain_dn_per_e", "full_well_e")
    }
    info = dataclasses.replace(info, attrs=scale_free)
    raw = RawStage(RawStage.Params(demosaic="rgbw_fusion"), index=2)
    with pytest.raises(StageError) as err:
        raw.setup(info)
    assert err.value.key == "rgbw_guard_e" and "\n" not in str(err.value)
    assert "system gain" in str(err.value)
