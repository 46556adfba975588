"""sensors.spectral (band grids, QE curves, integration) and sensors.spectra (colour's data),
each checked against its defining equation or against colour-science's own functions."""

from __future__ import annotations

import math

import colour
import numpy as np
import pytest

from sensors import spectra, spectral

BANDS = spectral.band_grid(400.0, 700.0, 10.0)


def test_default_band_grid_is_400_to_700_in_10_nm():
    assert BANDS.tolist() == [400.0 + 10.0 * i for i in range(31)]
    assert spectral.band_grid(*spectral.DEFAULT_BAND_RANGE_NM).tolist() == BANDS.tolist()
    assert spectral.band_grid(500.0, 500.0, 5.0).tolist() == [500.0]


@pytest.mark.parametrize(
    "bad", [(0.0, 700.0, 10.0), (700.0, 400.0, 10.0), (400.0, 700.0, 0.0), (1.0, 5000.0, 1.0)]
)
def test_bad_band_grids_are_refused(bad):
    with pytest.raises(ValueError):
        spectral.band_grid(*bad)


@pytest.mark.parametrize("bad", [[], [500.0, 500.0], [600.0, 500.0], [-1.0, 500.0], [np.nan]])
def test_bad_explicit_bands_are_refused(bad):
    with pytest.raises(ValueError):
        spectral.check_bands(bad)


def test_gaussian_filter_is_half_its_peak_at_half_the_fwhm():
    centre, fwhm, peak = 550.0, 80.0, 0.7
    bands = np.array([centre - fwhm / 2, centre, centre + fwhm / 2, centre + 3 * fwhm])
    curve = spectral.gaussian_filters([centre], [fwhm], peak, bands)[0]
    np.testing.assert_allclose(curve[:3], [peak / 2, peak, peak / 2], rtol=1e-12)
    # 3 FWHM = 7.06 σ out: exp(-σ²·7.06²/2)
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    np.testing.assert_allclose(curve[3], peak * math.exp(-0.5 * (3 * fwhm / sigma) ** 2))


def test_ir_cut_logistic_edge_passes_90_and_10_percent_across_its_width():
    cut, edge = 650.0, 20.0
    t = spectral.ir_cut_transmission([cut - edge / 2, cut, cut + edge / 2, 400.0], cut, edge)
    np.testing.assert_allclose(t[:3], [0.9, 0.5, 0.1], rtol=1e-12)
    assert t[3] == pytest.approx(1.0, abs=1e-12)
    step = spectral.ir_cut_transmission([640.0, 650.0, 660.0], cut, 0.0)
    assert step.tolist() == [1.0, 0.5, 0.0]


def test_integrate_bands_is_the_sum_of_qe_times_photons():
    rng = np.random.default_rng(1)
    photons = rng.random((2, 3, 4, 31)).astype(np.float32) * 100
    curves = rng.random((4, 31))
    got = spectral.integrate_bands(photons, curves)
    assert got.shape == (2, 3, 4, 4) and got.dtype == np.float64
    expected = (photons.astype(np.float64)[..., None, :] * curves).sum(axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # each pixel's sum does not depend on how many images share the batch
    np.testing.assert_array_equal(spectral.integrate_bands(photons[1:], curves), got[1:])


def test_qe_curves_camera_keeps_colours_ratios_and_peaks_at_qe():
    curves = spectral.qe_curves("camera", BANDS, qe=0.5, qe_w=0.4, camera="Nikon 5100 (NPL)")
    nikon = colour.MSDS_CAMERA_SENSITIVITIES["Nikon 5100 (NPL)"]
    ref = np.maximum(np.asarray(nikon[BANDS]).T, 0.0)
    np.testing.assert_allclose(curves[:3], 0.5 * ref / ref.max(), rtol=1e-12)
    assert curves[:3].max() == pytest.approx(0.5)
    np.testing.assert_array_equal(curves[3], np.full(31, 0.4))  # W: flat, unfiltered


def test_qe_curves_ir_cut_multiplies_every_channel():
    plain = spectral.qe_curves("gaussian", BANDS, qe=0.6, qe_w=0.6)
    cut = spectral.qe_curves("gaussian", BANDS, qe=0.6, qe_w=0.6, ir_cut_nm=650.0)
    np.testing.assert_allclose(cut, plain * spectral.ir_cut_transmission(BANDS, 650.0, 20.0))


def test_qe_csv_is_interpolated_linearly_and_w_is_optional(tmp_path):
    path = tmp_path / "qe.csv"
    path.write_text("wavelength_nm,B,G,R,W\n400,0.5,0.1,0.0,0.9\n700,0.1,0.3,0.6,0.5\n")
    curves = spectral.read_qe_csv(path, [400.0, 550.0, 700.0])
    np.testing.assert_allclose(curves[0], [0.0, 0.3, 0.6])  # R
    np.testing.assert_allclose(curves[2], [0.5, 0.3, 0.1])  # B
    np.testing.assert_allclose(curves[3], [0.9, 0.7, 0.5])  # W
    path.write_text("wavelength_nm,R,G,B\n400,0.5,0.1,0.0\n700,0.1,0.3,0.6\n")
    got = spectral.qe_curves("csv", [400.0, 700.0], qe=0.6, qe_w=0.25, csv_path=path)
    np.testing.assert_allclose(got[3], [0.25, 0.25])  # no W column: the flat qe_w


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("wavelength_nm,R,G\n400,1,1\n", "header"),
        ("wavelength_nm,R,G,B,X\n400,1,1,1,1\n", "header"),
        ("wavelength_nm,R,G,B\n400,0.1,0.2\n", "line 2: 3 values for 4 columns"),
        ("wavelength_nm,R,G,B\n400,0.1,abc,0.3\n", "line 2"),
        ("wavelength_nm,R,G,B\n400,0.1,0.2,0.3\n390,0.1,0.2,0.3\n", "strictly increasing"),
        ("wavelength_nm,R,G,B\n400,0.1,nan,0.3\n700,0.1,0.2,0.3\n", "column G"),
        ("wavelength_nm,R,G,B\n400,1.5,0.2,0.3\n700,0.1,0.2,0.3\n", "column R"),
        ("wavelength_nm,R,G,B\n450,0.1,0.2,0.3\n700,0.1,0.2,0.3\n", "covers 450"),
    ],
)
def test_bad_qe_csv_names_file_and_problem(tmp_path, text, fragment):
    path = tmp_path / "qe.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        spectral.read_qe_csv(path, BANDS)
    assert str(path) in str(err.value) and fragment in str(err.value)


# -- sensors.spectra: colour-science's data and functions --------------------------------
def test_illuminant_photons_are_colours_power_times_wavelength():
    for name in ("D65", "A", "FL2", "E"):
        sd = colour.SDS_ILLUMINANTS[name].copy().align(colour.SpectralShape(400, 700, 10))
        np.testing.assert_allclose(
            spectra.illuminant_photons(name, BANDS), sd.values * BANDS, rtol=1e-12
        )
    np.testing.assert_array_equal(spectra.illuminant_photons("flat_photons", BANDS), 1.0)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean 'D65'"):
        spectra.illuminant_photons("D66", BANDS)
    with pytest.raises(ValueError, match="camera"):
        spectra.camera_sensitivities("Nikon 5200", BANDS)


def test_bands_outside_the_data_are_refused():
    with pytest.raises(ValueError, match="380 to 780 nm"):
        spectra.illuminant_photons("FL2", spectral.band_grid(350.0, 700.0, 10.0))


def test_colourchecker_is_colours_24_patches_in_order():
    refl, names = spectra.colourchecker_reflectances("BabelColor Average", BANDS)
    chart = colour.SDS_COLOURCHECKERS["BabelColor Average"]
    assert refl.shape == (24, 31) and names == tuple(chart)
    np.testing.assert_allclose(refl[0], chart["dark skin"][BANDS], rtol=1e-12)
    assert names[18] == "white 9.5 (.05 D)"


@pytest.mark.parametrize(
    ("method", "function"),
    [
        ("mallett2019", colour.recovery.RGB_to_sd_Mallett2019),
        ("smits1999", colour.recovery.RGB_to_sd_Smits1999),
    ],
)
def test_recovery_per_pixel_equals_colours_function(method, function):
    rng = np.random.default_rng(7)
    rgb = np.concatenate(
        [
            rng.random((60, 3)),
            [[0.2, 0.2, 0.2], [0.5, 0.5, 0.1], [0.1, 0.5, 0.5], [0.3, 0.1, 0.3], [0, 0, 0]],
        ]
    )
    rgb = np.concatenate([rgb, rgb[:, [2, 0, 1]], rgb[:, [1, 2, 0]]])  # every ordering sector
    recover = spectra.recovery(method, BANDS)
    got = recover(rgb.reshape(5, -1, 3)).reshape(-1, 31)
    expected = np.stack([function(c)[BANDS] for c in rgb])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert recover(rgb.astype(np.float32)).dtype == np.float32
