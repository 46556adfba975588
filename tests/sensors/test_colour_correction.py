"""CCM fit on the ColorChecker and ΔE2000 (issue 17 item 4's colour accuracy, as a library)."""

from __future__ import annotations

import colour
import numpy as np
import pytest

from sensors import colour_correction as cc
from sensors import spectral

BANDS = spectral.band_grid(400.0, 700.0, 10.0)


def test_fit_ccm_recovers_a_known_matrix():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 3))
    rgb = rng.random((24, 3))
    np.testing.assert_allclose(cc.fit_ccm(rgb, rgb @ truth.T), truth, atol=1e-12)


def test_fit_ccm_is_the_least_squares_solution():
    """The residual is orthogonal to the camera responses (the normal equations)."""
    rng = np.random.default_rng(1)
    rgb, xyz = rng.random((24, 3)), rng.random((24, 3))
    residual = rgb @ cc.fit_ccm(rgb, xyz).T - xyz
    np.testing.assert_allclose(rgb.T @ residual, 0.0, atol=1e-12)


def test_delta_e2000_against_sharma_wu_dalal_test_data():
    """Pairs 1, 7 and 17 of Sharma, Wu & Dalal (2005), Table 1, given to our function as XYZ."""
    white = colour.xy_to_XYZ(colour.CCS_ILLUMINANTS["CIE 1931 2 Degree Standard Observer"]["D65"])
    pairs = [
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ]
    white_xy = colour.XYZ_to_xy(white)
    a = colour.Lab_to_XYZ([p[0] for p in pairs], white_xy)
    b = colour.Lab_to_XYZ([p[1] for p in pairs], white_xy)
    np.testing.assert_allclose(cc.delta_e2000(a, b, white), [p[2] for p in pairs], atol=1e-4)


def test_nikon_5100_under_d65_has_mean_delta_e2000_below_3():
    """Issue 17's check: ColorChecker under D65, Nikon 5100 sensitivities, fitted CCM, no
    noise: mean ΔE2000 1.26, max 3.13 (BabelColor Average, 400–700 nm in 10 nm bands)."""
    curves = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.6, camera="Nikon 5100 (NPL)")
    fit = cc.fit_chart(curves, BANDS, illuminant="D65")
    assert fit.delta_e.shape == (24,) and fit.patches[0] == "dark skin"
    assert fit.mean_delta_e < 3.0
    assert fit.mean_delta_e == pytest.approx(1.263, abs=0.01)
    assert fit.max_delta_e == pytest.approx(3.13, abs=0.02)


@pytest.mark.parametrize("illuminant", ["D65", "A"])
def test_a_luther_camera_is_colorimetric(illuminant):
    """QE = CIE colour-matching functions / λ (photons → energy) meets the Luther
    condition: after the CCM only the 10 nm band sum's error against ASTM E308 is left."""
    cmfs = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"][BANDS].T / BANDS
    fit = cc.fit_chart(cmfs, BANDS, illuminant=illuminant)
    assert fit.mean_delta_e < 0.05 and fit.max_delta_e < 0.2


def test_gaussian_filters_are_worse_than_the_nikon():
    nikon = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.6, camera="Nikon 5100 (NPL)")
    gauss = spectral.qe_curves("gaussian", BANDS, qe=0.6, qe_w=0.6)
    assert cc.fit_chart(gauss, BANDS).mean_delta_e > cc.fit_chart(nikon, BANDS).mean_delta_e
