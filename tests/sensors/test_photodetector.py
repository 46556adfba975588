"""The photodetector: CFA sampling, the EMVA 1288 linear model, fixed pattern, determinism.

Statistical checks state their sample size and a tolerance derived from it: the mean of
n independent values has std σ/sqrt(n); a sample variance of n values has std
σ²·sqrt(2/(n-1)) (Gaussian values; near-Gaussian here: Poisson of mean ≥ 100 or read
noise ≥ 1.6 DN). Bounds are 5 sigma, and every seed is fixed, so these do not flake.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.adc import ADCStage
from sensors.photodetector import (
    CFA_TILES,
    PhotodetectorStage,
    channel_map,
    expected_electrons,
    shot_noise,
)

NOISELESS = {
    "read_noise_e": 0.0,
    "dark_current_e_per_s": 0.0,
    "prnu_pct": 0.0,
    "dsnu_e": 0.0,
    "shot_noise": False,
    "output_dtype": "float64",
}


def _photons_info(h, w, **attrs):
    return SignalInfo(Unit.PHOTONS, (h, w, 3), np.float32, attrs)


def _run(stage, photons, image_index=None):
    n = len(photons)
    index = np.arange(n) if image_index is None else np.asarray(image_index)
    return stage.process(photons, Batch(index))


def _distinct_photons(n, h, w):
    """R = 100, G = 1000, B = 10000 photons everywhere."""
    photons = np.empty((n, h, w, 3), np.float32)
    photons[..., 0], photons[..., 1], photons[..., 2] = 100.0, 1000.0, 10_000.0
    return photons


# -- CFA sampling ----------------------------------------------------------------------
# The 2×2 tiles as a photographer reads them (top-left, top-right / bottom-left, bottom-right),
# written out here independently of the module's table.
BAYER = {
    "RGGB": [["R", "G"], ["G", "B"]],
    "BGGR": [["B", "G"], ["G", "R"]],
    "GRBG": [["G", "R"], ["B", "G"]],
    "GBRG": [["G", "B"], ["R", "G"]],
}


@pytest.mark.parametrize("cfa", sorted(BAYER))
def test_bayer_phases_put_each_channel_at_its_pixel(cfa):
    qe = (0.5, 0.6, 0.7)
    stage = PhotodetectorStage(PhotodetectorStage.Params(cfa=cfa, qe=qe, **NOISELESS))
    info = stage.setup(_photons_info(6, 8))
    assert info.shape == (6, 8) and info.attrs["cfa"] == cfa
    assert [list(r) for r in info.attrs["cfa_tile"]] == BAYER[cfa]
    out = _run(stage, _distinct_photons(2, 6, 8))
    value = {"R": 0.5 * 100, "G": 0.6 * 1000, "B": 0.7 * 10_000}
    for y in range(6):
        for x in range(8):
            assert out[1, y, x] == pytest.approx(value[BAYER[cfa][y % 2][x % 2]])


def test_rgbw_tile_and_w_collects_all_channels():
    stage = PhotodetectorStage(
        PhotodetectorStage.Params(cfa="RGBW", qe=(0.5, 0.6, 0.7), qe_w=0.8, **NOISELESS)
    )
    info = stage.setup(_photons_info(8, 8))
    out = _run(stage, _distinct_photons(1, 8, 8))[0]
    tile = [["W", "G", "W", "R"], ["G", "W", "R", "W"], ["W", "B", "W", "G"], ["B", "W", "G", "W"]]
    assert [list(r) for r in info.attrs["cfa_tile"]] == tile
    value = {"R": 50.0, "G": 600.0, "B": 7000.0, "W": 0.8 * (100 + 1000 + 10_000)}
    expected = np.array([[value[tile[y % 4][x % 4]] for x in range(8)] for y in range(8)])
    assert np.allclose(out, expected)
    letters = channel_map("RGBW", (4, 4))
    assert np.mean(letters == "W") == 0.5  # W on half the pixels
    assert (np.sum(letters == "G"), np.sum(letters == "R"), np.sum(letters == "B")) == (4, 2, 2)


def test_mono_sums_channels_and_stacked_keeps_them():
    mono = PhotodetectorStage(PhotodetectorStage.Params(cfa="mono", qe_w=0.5, **NOISELESS))
    info = mono.setup(_photons_info(3, 5))
    assert info.attrs["cfa_tile"] == (("W",),)
    assert np.allclose(_run(mono, _distinct_photons(1, 3, 5)), 0.5 * 11_100)
    stacked = PhotodetectorStage(
        PhotodetectorStage.Params(cfa="stacked", qe=(0.5, 0.6, 0.7), **NOISELESS)
    )
    info = stacked.setup(_photons_info(3, 5, cfa_tile=(("R",),)))
    assert info.shape == (3, 5, 3) and "cfa_tile" not in info.attrs
    out = _run(stacked, _distinct_photons(2, 3, 5))
    assert out.shape == (2, 3, 5, 3)
    assert np.allclose(out[..., 0], 50.0) and np.allclose(out[..., 1], 600.0)
    assert np.allclose(out[..., 2], 7000.0)


def test_channel_map_cuts_the_tile_at_odd_sizes():
    m = channel_map("GRBG", (3, 3))
    assert m.tolist() == [["G", "R", "G"], ["B", "G", "B"], ["G", "R", "G"]]
    assert set(CFA_TILES) == {"RGGB", "BGGR", "GRBG", "GBRG", "RGBW", "mono"}


def test_expected_electrons_function_matches_the_stage_without_noise():
    photons = np.random.default_rng(0).uniform(0, 500, (2, 4, 6, 3))
    mean = expected_electrons(
        photons, "BGGR", qe=(0.3, 0.4, 0.5), dark_current_e_per_s=100.0, exposure_s=0.5
    )
    stage = PhotodetectorStage(
        PhotodetectorStage.Params(
            cfa="BGGR",
            qe=(0.3, 0.4, 0.5),
            exposure_s=0.5,
            **{**NOISELESS, "dark_current_e_per_s": 100.0},
        )
    )
    stage.setup(SignalInfo(Unit.PHOTONS, (4, 6, 3), np.float64))
    assert np.allclose(_run(stage, photons), mean)
    assert mean[0, 0, 0] == pytest.approx(0.5 * photons[0, 0, 0, 2] + 50.0)  # B pixel + dark


# -- the EMVA 1288 linear model through photodetector + ADC -----------------------------
QE, K, FW, READ, DARK, T, PRNU, DSNU = 0.55, 0.4, 8000.0, 4.0, 100.0, 0.02, 1.0, 2.0
BITS, BLACK, SIZE = 12, 256, 128


def _sensor(seed=0, **changes):
    pd = dict(
        cfa="mono",
        qe_w=QE,
        full_well_e=FW,
        read_noise_e=READ,
        dark_current_e_per_s=DARK,
        exposure_s=T,
        prnu_pct=PRNU,
        dsnu_e=DSNU,
    ) | changes.pop("pd", {})
    adc = dict(bits=BITS, system_gain_dn_per_e=K, black_level_dn=BLACK) | changes.pop("adc", {})
    photodetector = PhotodetectorStage(PhotodetectorStage.Params(**pd), seed=seed, index=0)
    converter = ADCStage(ADCStage.Params(**adc), seed=seed, index=1)
    info = photodetector.setup(_photons_info(SIZE, SIZE))
    converter.setup(info)
    return photodetector, converter


def _pair(stages, mu_p_per_channel, first_index):
    """Two frames of a flat field (each channel mu_p/3 so a mono pixel sees mu_p photons)."""
    pd, adc = stages
    photons = np.full((2, SIZE, SIZE, 3), mu_p_per_channel / 3.0, np.float64)
    batch = Batch(np.array([first_index, first_index + 1]))
    return adc.process(pd.process(photons, batch), batch).astype(np.float64)


def test_emva_linear_model_mean_variance_and_snr():
    stages = _sensor()
    n = SIZE * SIZE  # pixels per frame: 16384
    sigma_d2 = READ**2 + DARK * T  # temporal dark noise in e-²: read + dark shot noise
    mu_d = DARK * T
    dark = _pair(stages, 0.0, 0)
    mu_y_dark = dark.mean()
    levels = np.linspace(0, 0.9 * FW / QE, 12)  # 12 exposure levels, below saturation
    for i, mu_p in enumerate(levels):
        y_a, y_b = _pair(stages, mu_p, 2 + 2 * i)
        mu_y = (y_a.mean() + y_b.mean()) / 2
        var_y = np.var(y_a - y_b) / 2
        signal_e = QE * mu_p
        # EMVA: mu_y = K (mu_d + eta mu_p) (+ black level - 1/2 DN: floor rounding's mean)
        expected_mu = BLACK - 0.5 + K * (mu_d + signal_e)
        # EMVA: sigma_y² = K² sigma_d² + sigma_q² + K (mu_y - mu_y.dark), sigma_q² = 1/12
        expected_var = K**2 * sigma_d2 + 1 / 12 + K**2 * signal_e
        # tolerance of the mean: temporal noise over 2n values + the patterns' sample means
        spatial_var = K**2 * (DSNU**2 + (PRNU / 100 * signal_e) ** 2)
        tol_mu = 5 * np.sqrt(expected_var / (2 * n) + spatial_var / n)
        assert mu_y == pytest.approx(expected_mu, abs=tol_mu), f"level {i}"
        tol_var = 5 * expected_var * np.sqrt(2 / (n - 1))
        assert var_y == pytest.approx(expected_var, abs=tol_var), f"level {i}"
        assert K * signal_e == pytest.approx(mu_y - mu_y_dark, abs=2 * tol_mu)
        if signal_e > 0:
            # EMVA SNR = eta mu_p / sqrt(sigma_d² + sigma_q²/K² + eta mu_p)
            snr_model = signal_e / np.sqrt(sigma_d2 + (1 / 12) / K**2 + signal_e)
            snr = (mu_y - mu_y_dark) / np.sqrt(var_y)
            # relative error: half the variance's (5 sigma) plus the mean's
            rel = 0.5 * tol_var / expected_var + 2 * tol_mu / (K * signal_e)
            assert snr == pytest.approx(snr_model, rel=rel), f"level {i}"


def test_full_well_clips_charge_and_read_noise_remains():
    stages = _sensor()
    n = SIZE * SIZE
    y_a, y_b = _pair(stages, 3 * FW / QE, 100)  # 3x saturation: every pixel at full well
    var = np.var(y_a - y_b) / 2
    expected_var = K**2 * READ**2 + 1 / 12  # shot noise, dark noise, DSNU clipped away
    assert var == pytest.approx(expected_var, abs=5 * expected_var * np.sqrt(2 / (n - 1)))
    mean = (y_a.mean() + y_b.mean()) / 2
    assert mean == pytest.approx(BLACK - 0.5 + K * FW, abs=5 * np.sqrt(expected_var / (2 * n)))
    # electrons never exceed the full well before read noise
    pd = PhotodetectorStage(PhotodetectorStage.Params(full_well_e=FW, read_noise_e=0.0))
    pd.setup(_photons_info(16, 16))
    e = _run(pd, np.full((2, 16, 16, 3), 1e6, np.float32))
    assert e.max() == FW and e.min() == FW


def test_adc_clips_at_the_top_code_before_the_full_well():
    stages = _sensor(adc={"analog_gain": 4.0})  # K·4 · FW + 256 ≫ 4095
    y_a, _ = _pair(stages, 2 * FW / QE, 200)
    assert y_a.max() == 4095 and y_a.min() == 4095


# -- fixed pattern ---------------------------------------------------------------------
def _pattern_stage(sensor_seed, seed=0, cfa="RGGB", **changes):
    params = {**NOISELESS, "prnu_pct": 2.0, "dsnu_e": 3.0, "qe": 0.5, **changes}
    stage = PhotodetectorStage(
        PhotodetectorStage.Params(cfa=cfa, **params), seed=seed, sensor_seed=sensor_seed
    )
    stage.setup(_photons_info(SIZE, SIZE))
    return stage


def test_prnu_and_dsnu_spatial_variance_match_the_configured_values():
    # Without temporal noise the output is 0.5·mu_p·g(x) + o(x); over n = 16384 pixels the
    # sample variance of a pattern has relative std sqrt(2/(n-1)) = 1.1 %.
    n = SIZE * SIZE
    stage = _pattern_stage(7)
    dark = _run(stage, np.zeros((1, SIZE, SIZE, 3), np.float32))[0]
    assert np.var(dark) == pytest.approx(3.0**2, rel=5 * np.sqrt(2 / (n - 1)))
    assert abs(dark.mean()) < 5 * 3.0 / np.sqrt(n)
    signal = 0.5 * 10_000.0  # half the full well
    flat = _run(stage, np.full((1, SIZE, SIZE, 3), 10_000.0, np.float32))[0]
    prnu = flat - dark  # the offset pattern cancels
    assert np.std(prnu) / signal * 100 == pytest.approx(2.0, rel=5 * np.sqrt(1 / (2 * (n - 1))))
    # stacked: the pattern has one value per pixel and layer
    stacked = _pattern_stage(7, cfa="stacked")
    out = _run(stacked, np.full((1, SIZE, SIZE, 3), 10_000.0, np.float32))[0]
    assert np.std(out - signal, axis=(0, 1)) == pytest.approx(
        [np.sqrt((0.02 * signal) ** 2 + 9.0)] * 3, rel=5 * np.sqrt(1 / (2 * (n - 1)))
    )


def test_same_sensor_seed_same_pattern_on_every_image_and_split():
    photons = np.full((6, SIZE, SIZE, 3), 5000.0, np.float32)
    whole = _run(_pattern_stage(3), photons)
    assert all(np.array_equal(whole[0], whole[i]) for i in range(6))  # every image
    other = _pattern_stage(3)
    split = np.concatenate(
        [_run(other, photons[:2], [0, 1]), _run(other, photons[2:], [2, 3, 4, 5])]
    )
    assert np.array_equal(whole, split)  # every batch split
    # the run seed does not change the sensor; the sensor seed does
    assert np.array_equal(whole, _run(_pattern_stage(3, seed=99), photons))
    different = _run(_pattern_stage(4), photons)
    assert not np.array_equal(whole, different)
    assert np.corrcoef(whole[0].ravel(), different[0].ravel())[0, 1] < 0.05


def test_sensor_seed_defaults_to_the_run_seed():
    photons = np.full((1, SIZE, SIZE, 3), 5000.0, np.float32)
    a = PhotodetectorStage(PhotodetectorStage.Params(**{**NOISELESS, "prnu_pct": 1.0}), seed=5)
    b = PhotodetectorStage(
        PhotodetectorStage.Params(**{**NOISELESS, "prnu_pct": 1.0}), seed=6, sensor_seed=5
    )
    a.setup(_photons_info(SIZE, SIZE))
    b.setup(_photons_info(SIZE, SIZE))
    assert np.array_equal(_run(a, photons), _run(b, photons))


# -- determinism and noise draws -------------------------------------------------------
@pytest.mark.parametrize("cfa", ["RGGB", "RGBW", "stacked"])
def test_output_is_identical_for_batch_size_one_and_all(cfa):
    photons = np.random.default_rng(1).uniform(0, 3e4, (5, 16, 12, 3)).astype(np.float32)
    index = np.array([10, 11, 12, 13, 14])
    stage = PhotodetectorStage(
        PhotodetectorStage.Params(cfa=cfa, poisson_gaussian_above=1e4), seed=2
    )
    stage.setup(_photons_info(16, 12))
    whole = stage.process(photons, Batch(index))
    one_by_one = np.concatenate(
        [stage.process(photons[i : i + 1], Batch(index[i : i + 1])) for i in range(5)]
    )
    assert np.array_equal(whole, one_by_one)
    again = stage.process(photons[::-1], Batch(index[::-1]))[::-1]  # order does not matter
    assert np.array_equal(whole, again)


def test_shot_noise_is_poisson_below_and_gaussian_above_the_threshold():
    n = 200_000
    rng = np.random.default_rng(3)
    low = shot_noise(np.full(n, 30.0), rng, poisson_gaussian_above=1e4)
    assert np.array_equal(low, np.round(low))  # integer counts: Poisson
    high = shot_noise(np.full(n, 2e4), rng, poisson_gaussian_above=1e4)
    assert not np.array_equal(high, np.round(high))  # continuous: Gaussian approximation
    exact = shot_noise(np.full(n, 2e4), rng, poisson_gaussian_above=None)
    assert np.array_equal(exact, np.round(exact))
    for lam, x in ((30.0, low), (2e4, high), (2e4, exact)):
        assert x.mean() == pytest.approx(lam, abs=5 * np.sqrt(lam / n))
        assert x.var() == pytest.approx(lam, abs=5 * lam * np.sqrt(2 / (n - 1)))
    mixed = shot_noise(np.array([5.0, 5e4] * 1000), rng, poisson_gaussian_above=1e4)
    assert np.array_equal(mixed[::2], np.round(mixed[::2]))


# -- attrs and errors ------------------------------------------------------------------
def test_exposure_from_scene_then_param_then_default():
    p = PhotodetectorStage.Params
    # no scene before it: the photodetector's own value
    assert PhotodetectorStage(p(exposure_s=0.5)).setup(_photons_info(2, 2)).attrs[
        "exposure_s"
    ] == pytest.approx(0.5)
    # both set and equal: one value
    agreed = PhotodetectorStage(p(exposure_s=0.1)).setup(_photons_info(2, 2, exposure_s=0.1))
    assert agreed.attrs["exposure_s"] == 0.1
    with pytest.raises(
        StageError, match=r"0\.5 s disagrees with the scene's exposure_s 0\.1 s"
    ) as err:
        PhotodetectorStage(p(exposure_s=0.5)).setup(_photons_info(2, 2, exposure_s=0.1))
    assert err.value.key == "exposure_s"
    info = PhotodetectorStage().setup(_photons_info(2, 2, exposure_s=0.1, f_number=2.8))
    assert info.attrs["exposure_s"] == 0.1 and info.attrs["f_number"] == 2.8
    assert info.attrs["full_well_e"] == 10_000.0
    assert PhotodetectorStage().setup(_photons_info(2, 2)).attrs["exposure_s"] == 0.01


def test_bad_input_raises_stage_errors():
    with pytest.raises(StageError, match="photons"):
        PhotodetectorStage().setup(SignalInfo(Unit.ELECTRONS, (4, 4, 3), np.float32))
    with pytest.raises(StageError, match="H, W, 3"):
        PhotodetectorStage().setup(SignalInfo(Unit.PHOTONS, (4, 4), np.float32))
    stage = PhotodetectorStage()
    stage.setup(_photons_info(2, 2))
    photons = np.ones((1, 2, 2, 3), np.float32)
    photons[0, 1, 1, 2] = np.nan
    with pytest.raises(StageError, match="NaN"):
        stage.process(photons, Batch(np.arange(1)))
    with pytest.raises(ValueError):
        PhotodetectorStage.Params(qe=1.5)
    with pytest.raises(ValueError):
        PhotodetectorStage.Params(cfa="RGBG")


def test_negative_photons_count_as_darkness():
    stage = PhotodetectorStage(PhotodetectorStage.Params(**NOISELESS))
    stage.setup(_photons_info(2, 2))
    assert np.all(_run(stage, -np.ones((1, 2, 2, 3), np.float32)) == 0.0)
