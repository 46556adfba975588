"""``characterize`` on a spectral chain (issue 17 item 5): flat spectra through the
photodetector, and the colour figures (ΔE2000 after the CCM, the CCM's noise gain, the
Vora–Trussell μ-factor), against analytic cases, scipy and Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from conftest import ROOT

from pipeline.characterize import characterize_config, characterize_stages
from pipeline.cli.characterize import summary
from pipeline.errors import UserError
from sensors import spectra, spectral
from sensors.adc import ADCStage
from sensors.colour_accuracy import colour_accuracy, luminance_accuracy
from sensors.colour_correction import ccm_noise_gain, chart_xyz, vora_trussell_mu
from sensors.photodetector import PhotodetectorStage

BANDS = spectral.band_grid(400.0, 700.0, 10.0)
NIKON = "Nikon 5100 (NPL)"


# -- the figures -----------------------------------------------------------------------------
def test_noise_gain_of_the_identity_is_one_and_of_a_mixing_row_is_its_norm_over_its_sum():
    np.testing.assert_array_equal(ccm_noise_gain(np.eye(3)), 1.0)
    np.testing.assert_array_equal(ccm_noise_gain(np.diag([2.0, 0.5, 3.0])), 1.0)  # scale only
    m = np.array([[2.0, -1.0, 0.0], [-0.5, 2.0, -0.5], [0.0, -1.0, 3.0]])
    np.testing.assert_allclose(ccm_noise_gain(m), [np.sqrt(5), np.sqrt(4.5), np.sqrt(10) / 2])


def test_noise_gain_is_the_snr_loss_of_a_noisy_grey():
    """Monte Carlo: grey (s, s, s) with independent N(0, σ²) per channel, through M."""
    m = np.array([[1.8, -0.6, -0.2], [-0.3, 1.5, -0.2], [0.1, -0.7, 1.6]])
    rng = np.random.default_rng(0)
    s, sigma = 1.0, 0.05
    rgb = s + sigma * rng.standard_normal((200_000, 3))
    out = rgb @ m.T
    snr_in = s / sigma
    snr_out = out.mean(axis=0) / out.std(axis=0)
    np.testing.assert_allclose(snr_in / snr_out, ccm_noise_gain(m), rtol=0.01)


def test_mu_of_the_observer_and_of_its_linear_combinations_is_one():
    cmfs = spectra.colour_matching_functions(BANDS)
    mix = np.array([[0.5, 1.0, -0.1], [-0.2, 1.0, 0.0], [0.0, 0.1, 0.8]])
    light = spectra.illuminant_photons("A", BANDS)
    assert vora_trussell_mu(cmfs, cmfs) == pytest.approx(1.0, abs=1e-12)
    assert vora_trussell_mu(mix @ cmfs, cmfs, light) == pytest.approx(1.0, abs=1e-12)


def test_mu_is_the_mean_squared_cosine_of_scipys_principal_angles():
    cmfs = spectra.colour_matching_functions(BANDS)
    qe = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.9, camera=NIKON)[:3]
    angles = scipy.linalg.subspace_angles(qe.T, cmfs.T)
    assert vora_trussell_mu(qe, cmfs) == pytest.approx(np.mean(np.cos(angles) ** 2), rel=1e-12)
    # analytic: curves that see none of the observer's span give 0
    basis, _ = np.linalg.qr(np.column_stack([cmfs.T, np.eye(len(BANDS))[:, :3]]))
    assert vora_trussell_mu(basis[:, 3:6].T, cmfs) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("illuminant", ["D65", "A"])
def test_a_sensor_with_the_observers_curves_is_colorimetric(illuminant):
    """QE = CMF/λ (per photon) meets the Luther condition: μ = 1, and ΔE2000 only the
    10 nm band sum's error against colour's ASTM E308 integration."""
    qe = spectra.colour_matching_functions(BANDS) / BANDS
    sheet = colour_accuracy(qe, BANDS, illuminant=illuminant)
    assert sheet["vora_trussell_mu"] == pytest.approx(1.0, abs=1e-12)
    assert sheet["delta_e2000_mean"] < 0.05 and sheet["delta_e2000_max"] < 0.2
    assert len(sheet["delta_e2000"]) == 24


def test_nikon_figures_under_d65():
    qe = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.9, camera=NIKON)
    sheet = colour_accuracy(qe, BANDS, illuminant="D65")
    assert sheet["delta_e2000_mean"] < 3.0
    assert 0.8 < sheet["vora_trussell_mu"] < 1.0
    assert all(g > 1.0 for g in sheet["ccm_noise_gain"])  # a real CCM costs SNR


def test_flat_photons_falls_back_to_d65():
    qe = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.9, camera=NIKON)
    assert colour_accuracy(qe, BANDS, illuminant="flat_photons")["illuminant"] == "D65"


@pytest.mark.parametrize("illuminant", ["D65", "A"])
def test_a_mono_sensor_with_the_luminance_curve_gives_true_lightness(illuminant):
    """QE = ȳ/λ: the grey output has each patch's L* (up to the band sum), so its ΔE2000
    is the floor: colour's CIEDE2000 between the patch and (L*, 0, 0)."""
    import colour

    qe_y = spectra.colour_matching_functions(BANDS)[1] / BANDS
    sheet = luminance_accuracy(7.0 * qe_y, BANDS, illuminant=illuminant)
    assert sheet["delta_l_max"] < 0.1
    assert sheet["delta_e2000_mean"] == pytest.approx(sheet["delta_e2000_floor_mean"], abs=0.05)
    xyz, white = chart_xyz(illuminant)
    lab = colour.XYZ_to_Lab(xyz / white[1], colour.XYZ_to_xy(white / white[1]))
    grey = lab * [1.0, 0.0, 0.0]
    floor = colour.delta_E(lab, grey, method="CIE 2000")
    assert sheet["delta_e2000_floor_mean"] == pytest.approx(floor.mean(), rel=1e-9)
    assert sheet["delta_e2000_floor_max"] == pytest.approx(floor.max(), rel=1e-9)


def test_a_flat_mono_sensor_errs_in_lightness_and_any_scale_gives_the_same_figures():
    """A flat QE sees blue and red light that ȳ weighs little: L* errs; the fitted scale
    absorbs the QE's height."""
    flat = luminance_accuracy(np.full(BANDS.size, 0.6), BANDS, illuminant="D65")
    other = luminance_accuracy(np.full(BANDS.size, 0.06), BANDS, illuminant="D65")
    assert 1.0 < flat["delta_l_mean"] < 10.0
    assert flat["delta_e2000_mean"] > flat["delta_e2000_floor_mean"]
    for key in ("delta_l_mean", "delta_l_max", "delta_e2000_mean", "delta_e2000_max"):
        assert other[key] == pytest.approx(flat[key], rel=1e-6), key
    assert other["luminance_scale"] == pytest.approx(10 * flat["luminance_scale"], rel=1e-9)
    assert len(flat["delta_l"]) == len(flat["delta_e2000"]) == 24


# -- characterize on a spectral chain --------------------------------------------------------
def test_flat_spectra_give_each_channel_its_band_averaged_qe():
    """η of a channel under a flat photon spectrum is the mean of its QE curve."""
    pd = PhotodetectorStage(
        PhotodetectorStage.Params(
            cfa="RGGB", qe_curves="camera", camera=NIKON, qe=0.6, read_noise_e=3.0
        ),
        seed=2,
        index=0,
    )
    adc = ADCStage(ADCStage.Params(bits=12, system_gain_dn_per_e=0.3), seed=2, index=1)
    attrs = {"spectral": True, "wavelength_nm": tuple(BANDS), "illuminant": "D65"}
    sheet = characterize_stages(pd, adc, size=128, levels=12, input_attrs=attrs)
    curves = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.9, camera=NIKON)
    for i, colour in enumerate("RGB"):
        qe_pct = sheet["channels"][colour]["quantum_efficiency_pct"]
        assert qe_pct / 100 == pytest.approx(curves[i].mean(), rel=0.03), colour
    assert sheet["colour"]["illuminant"] == "D65"
    assert "flat photon spectrum" in sheet["method"]["illumination"]


def test_characterize_the_spectral_config_reports_colour(tmp_path):
    """configs/spectral.yaml stopped with '3 channels for 31 wavelengths' before."""
    folder, sheet = characterize_config(
        ROOT / "configs" / "spectral.yaml", out=tmp_path / "sheet", size=32, levels=10
    )
    colour = sheet["colour"]
    assert colour["illuminant"] == "D65" and colour["delta_e2000_mean"] < 3.0
    assert "dE2000 after CCM" in summary(sheet, folder)
    _, under_a = characterize_config(
        ROOT / "configs" / "spectral.yaml",
        out=tmp_path / "sheet-a",
        size=32,
        levels=10,
        colour_illuminant="A",
    )
    assert under_a["colour"]["illuminant"] == "A"
    with pytest.raises(UserError, match="colour figures") as err:
        characterize_config(
            ROOT / "configs" / "spectral.yaml",
            out=tmp_path / "sheet-bad",
            size=32,
            levels=10,
            colour_illuminant="D99",
        )
    assert err.value.key == "colour_illuminant"


def test_characterize_a_mono_spectral_sensor_reports_its_grey_output(tmp_path):
    folder, sheet = characterize_config(
        ROOT / "configs" / "spectral.yaml",
        ["sensor.photodetector.cfa=mono"],
        out=tmp_path / "sheet",
        size=32,
        levels=10,
    )
    assert "colour" not in sheet
    expected = luminance_accuracy(np.full(BANDS.size, 0.6), BANDS, illuminant="D65")
    assert sheet["luminance"]["delta_l_mean"] == pytest.approx(expected["delta_l_mean"])
    assert "grey output dE2000" in summary(sheet, folder)


def test_the_shipped_observer_qe_is_colours_cmfs_per_photon():
    """data/qe/cie1931_2deg_per_photon.csv (docs/colour.md) is x̄/λ, ȳ/λ, z̄/λ at peak 0.6."""
    curves = spectral.read_qe_csv(ROOT / "data" / "qe" / "cie1931_2deg_per_photon.csv", BANDS)
    per_photon = spectra.colour_matching_functions(np.arange(380.0, 781.0, 5.0))
    per_photon /= np.arange(380.0, 781.0, 5.0)
    expected = 0.6 * spectra.colour_matching_functions(BANDS) / BANDS / per_photon.max()
    np.testing.assert_allclose(curves[:3], expected, atol=1e-8)
