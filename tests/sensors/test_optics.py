"""Optics stage: PSFs against diffraction theory, scipy.ndimage, and photon conservation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.ndimage
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.optics import (
    OpticsStage,
    airy_psf,
    apply_psf,
    defocus_psf,
    gaussian_blur,
    gaussian_psf,
    load_kernel,
    relative_illumination,
)

EDGES = ["reflect", "constant", "wrap", "nearest"]


def run_optics(planes: np.ndarray, attrs: dict | None = None, **params) -> np.ndarray:
    stage = OpticsStage(OpticsStage.Params(**params))
    info = stage.setup(SignalInfo(Unit.PHOTONS, planes.shape[1:], planes.dtype, attrs or {}))
    out = stage.process(planes, Batch(np.arange(len(planes))))
    assert out.shape == (len(planes), *info.shape) and out.dtype == info.dtype
    return out


def diffraction_mtf(nu: np.ndarray) -> np.ndarray:
    """MTF of an aberration-free circular pupil (Goodman, eq. 6-32), ν = f / f_c."""
    nu = np.clip(nu, 0.0, 1.0)
    return (2.0 / np.pi) * (np.arccos(nu) - nu * np.sqrt(1.0 - nu**2))


# -- Airy -------------------------------------------------------------------------------


def test_airy_first_dark_ring_at_1_22_lambda_n():
    # λN = 0.5 µm · 8 = 4 µm = 80 px at 0.05 µm pitch: the first zero is at 97.6 px.
    psf = airy_psf(
        f_number=8.0, wavelength_nm=500.0, pixel_pitch_um=0.05, radius_px=130, supersample=1
    )
    centre = psf.shape[0] // 2
    profile = psf[centre, centre:]
    # First local minimum of the radial profile.
    first_min = next(i for i in range(1, len(profile) - 1) if profile[i] <= profile[i + 1])
    assert abs(first_min - 1.22 * 80.0) <= 1.0
    # Dark: the first bright ring peaks at 1.75 % of the centre; the sampled zero at 1e-4.
    assert profile[first_min] < 1e-4 * profile[0]


def test_airy_mtf_matches_diffraction_formula():
    # λN = 4 px, point-sampled: cutoff f_c = 1/(λN) = 0.25 cycles/px, below Nyquist, so
    # the DFT of the sampled PSF is the continuous OTF (no aliasing), up to truncation.
    lambda_n_px = 4.0
    psf = airy_psf(
        f_number=4.0, wavelength_nm=500.0, pixel_pitch_um=0.5, radius_px=200, supersample=1
    )
    assert math.isclose(0.5e-3 * 4.0 / 0.5e-3, lambda_n_px)
    n = psf.shape[0]
    otf = np.fft.fft2(np.fft.ifftshift(psf))
    freqs = np.fft.fftfreq(n)
    mtf = np.abs(otf[0, :])
    positive = freqs >= 0
    nu = freqs[positive] * lambda_n_px
    # Tolerance 0.01: the kernel is truncated at 200 px (≈ 0.3 % of the energy beyond).
    np.testing.assert_allclose(mtf[positive], diffraction_mtf(nu), atol=0.01)
    assert np.all(mtf[positive][nu > 1.02] < 0.01)


def test_airy_pixel_integration_multiplies_mtf_by_pixel_aperture():
    # Integrating over the pixel multiplies the MTF by the pixel aperture's transfer; with
    # S midpoint samples per pixel that is sin(π f) / (S sin(π f / S)). λN = 2.5 px keeps
    # f_c = 0.4 below Nyquist, so nothing aliases.
    lambda_n_px, s = 2.5, 4
    psf = airy_psf(
        f_number=5.0, wavelength_nm=500.0, pixel_pitch_um=1.0, radius_px=150, supersample=s
    )
    n = psf.shape[0]
    f = np.fft.fftfreq(n)
    mtf = np.abs(np.fft.fft2(np.fft.ifftshift(psf))[0, :])
    aperture = np.ones_like(f)
    nz = f != 0
    aperture[nz] = np.sin(np.pi * f[nz]) / (s * np.sin(np.pi * f[nz] / s))
    expected = diffraction_mtf(np.abs(f) * lambda_n_px) * np.abs(aperture)
    np.testing.assert_allclose(mtf, expected, atol=0.01)


def test_airy_pixel_taps_equal_integral_of_intensity_over_pixel():
    # Independent numerical integration (scipy dblquad) of [2 J1(x)/x]² over two pixels.
    lambda_n_px = 1.5

    def intensity(y, x):
        r = math.hypot(x, y)
        if r == 0:
            return 1.0
        v = math.pi * r / lambda_n_px
        return (2 * scipy.special.j1(v) / v) ** 2

    def pixel_integral(i, j):
        return scipy.integrate.dblquad(intensity, j - 0.5, j + 0.5, i - 0.5, i + 0.5, epsabs=1e-10)[
            0
        ]

    psf = airy_psf(
        f_number=3.0, wavelength_nm=500.0, pixel_pitch_um=1.0, radius_px=6, supersample=32
    )
    c = psf.shape[0] // 2
    expected_ratio = pixel_integral(1, 0) / pixel_integral(0, 0)
    assert psf[c, c + 1] / psf[c, c] == pytest.approx(expected_ratio, rel=2e-3)
    expected_diag = pixel_integral(1, 1) / pixel_integral(0, 0)
    assert psf[c + 1, c + 1] / psf[c, c] == pytest.approx(expected_diag, rel=2e-3)


# -- defocus, Gaussian, user kernel ------------------------------------------------------


def test_defocus_taps_are_the_pixel_area_inside_the_disk():
    radius = 3.3
    psf = defocus_psf(radius, supersample=64)
    c = psf.shape[0] // 2

    def covered(i, j):  # area of the unit pixel centred at (i, j) inside the disk
        def chord(x):
            half = math.sqrt(max(radius**2 - x**2, 0.0))
            return max(0.0, min(i + 0.5, half) - max(i - 0.5, -half))

        return scipy.integrate.quad(chord, j - 0.5, j + 0.5, limit=200)[0]

    scale = psf[c, c] / covered(0, 0)  # the centre pixel is fully inside
    for i, j in [(0, 3), (2, 2), (1, 3), (3, 1), (2, 3)]:
        assert psf[c + i, c + j] / scale == pytest.approx(covered(i, j), abs=0.01)
    assert psf.shape == (7, 7)  # pixel 4 starts at 3.5 px, beyond the 3.3 px disk
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)


def test_gaussian_psf_matches_scipy_impulse_response():
    impulse = np.zeros((31, 31))
    impulse[15, 15] = 1.0
    for sigma in (0.5, 0.7, 1.3, 3.0):
        expected = scipy.ndimage.gaussian_filter(impulse, sigma, mode="constant")
        k = gaussian_psf(sigma)
        r = k.shape[0] // 2
        np.testing.assert_allclose(k, expected[15 - r : 16 + r, 15 - r : 16 + r], atol=1e-15)


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_blur_matches_scipy_gaussian_filter(edge, dtype):
    rng = np.random.default_rng(3)
    planes = (rng.random((3, 23, 17, 3)) * 1000).astype(dtype)
    for sigma in (0.7, 2.0):
        ours = gaussian_blur(planes, sigma, edge=edge)
        ref = scipy.ndimage.gaussian_filter(
            planes.astype(np.float64), (0, sigma, sigma, 0), mode=edge
        )
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1000)
        assert ours.dtype == dtype
    # And the stage's default (gaussian, σ = 0.7, reflect) is this same filter.
    np.testing.assert_allclose(
        run_optics(planes, edge=edge),
        scipy.ndimage.gaussian_filter(planes.astype(np.float64), (0, 0.7, 0.7, 0), mode=edge),
        rtol=1e-5 if dtype == np.float32 else 1e-12,
        atol=1e-2 if dtype == np.float32 else 1e-9,
    )


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_apply_psf_equals_scipy_convolve(edge, method):
    # An asymmetric kernel catches a convolution/correlation mix-up.
    rng = np.random.default_rng(4)
    planes = rng.random((2, 20, 26, 3))
    kernel = rng.random((5, 7))
    kernel /= kernel.sum()
    ours = apply_psf(planes, kernel, edge=edge, method=method)
    ref = scipy.ndimage.convolve(planes, kernel[None, :, :, None], mode=edge)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_fft_path_equals_direct_path_per_channel_float32():
    rng = np.random.default_rng(5)
    planes = (rng.random((2, 40, 36, 3)) * 500).astype(np.float32)
    kernels = rng.random((3, 15, 15))
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    direct = apply_psf(planes, kernels, edge="reflect", method="direct")
    fft = apply_psf(planes, kernels, edge="reflect", method="fft")
    np.testing.assert_allclose(fft, direct, rtol=1e-4, atol=1e-3)
    for c in range(3):
        ref = scipy.ndimage.convolve(
            planes[..., c].astype(np.float64), kernels[c][None], mode="reflect"
        )
        np.testing.assert_allclose(direct[..., c], ref, rtol=1e-4, atol=1e-3)


def test_kernel_larger_than_image_falls_back_to_padded_fft():
    rng = np.random.default_rng(6)
    planes = rng.random((1, 6, 5, 3))
    kernel = gaussian_psf(3.0)  # 25×25
    for edge in EDGES:
        ref = scipy.ndimage.convolve(planes, kernel[None, :, :, None], mode=edge)
        np.testing.assert_allclose(
            apply_psf(planes, kernel, edge=edge), ref, rtol=1e-10, atol=1e-12
        )
        ref_g = scipy.ndimage.gaussian_filter(planes, (0, 3.0, 3.0, 0), mode=edge)
        np.testing.assert_allclose(
            gaussian_blur(planes, 3.0, edge=edge), ref_g, rtol=1e-10, atol=1e-12
        )


# -- conservation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"psf": "gaussian", "sigma_px": 1.2},
        {"psf": "defocus", "defocus_radius_px": 2.5},
        {"psf": "airy", "f_number": 4.0, "pixel_pitch_um": 1.0},
        {"psf": "airy", "f_number": 4.0, "pixel_pitch_um": 1.0, "convolution": "fft"},
    ],
)
def test_wrap_mode_conserves_photons_exactly(params):
    rng = np.random.default_rng(7)
    planes = rng.random((2, 32, 40, 3)) * 1000
    out = run_optics(planes, {"wavelength_nm": (610.0, 550.0, 465.0)}, edge="wrap", **params)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), planes.sum(axis=(1, 2)), rtol=1e-12)


@pytest.mark.parametrize("edge", ["reflect", "constant", "nearest"])
def test_photons_conserved_away_from_edges(edge):
    planes = np.zeros((1, 40, 40, 3))
    planes[0, 15:25, 12:28] = np.random.default_rng(8).random((10, 16, 3)) * 100
    out = run_optics(planes, psf="defocus", defocus_radius_px=3.0, edge=edge)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), planes.sum(axis=(1, 2)), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["gaussian", "airy", "defocus"]),
    sigma=st.floats(0.0, 5.0),
    radius=st.floats(0.0, 6.0),
    f_number=st.floats(1.0, 16.0),
    wavelength=st.floats(400.0, 700.0),
    pitch=st.floats(0.8, 6.0),
    supersample=st.integers(1, 8),
)
def test_every_psf_sums_to_one_and_is_non_negative(
    kind, sigma, radius, f_number, wavelength, pitch, supersample
):
    if kind == "gaussian":
        psf = gaussian_psf(sigma)
    elif kind == "airy":
        psf = airy_psf(
            f_number=f_number,
            wavelength_nm=wavelength,
            pixel_pitch_um=pitch,
            supersample=supersample,
        )
    else:
        psf = defocus_psf(radius, supersample=supersample)
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert psf.min() >= 0
    assert psf.shape[0] % 2 == 1 and psf.shape == psf.shape[::-1]
    # Centred: the centroid is the middle tap.
    idx = np.arange(psf.shape[0]) - psf.shape[0] // 2
    assert abs((psf.sum(axis=1) * idx).sum()) < 1e-9


# -- per channel, vignetting, stage ------------------------------------------------------


def test_airy_is_per_channel_from_scene_attrs():
    planes = np.zeros((1, 41, 41, 3))
    planes[0, 20, 20] = 1000.0
    attrs = {"f_number": 8.0, "pixel_pitch_um": 1.0, "wavelength_nm": (650.0, 550.0, 450.0)}
    out = run_optics(planes, attrs, psf="airy", edge="constant")
    for c, wl in enumerate(attrs["wavelength_nm"]):
        kernel = airy_psf(f_number=8.0, wavelength_nm=wl, pixel_pitch_um=1.0, radius_px=28)
        ref = scipy.ndimage.convolve(planes[0, ..., c], kernel, mode="constant")
        np.testing.assert_allclose(out[0, ..., c], ref, atol=1e-9)
    # Longer wavelength, wider blur: less energy stays in the centre pixel.
    assert out[0, 20, 20, 0] < out[0, 20, 20, 1] < out[0, 20, 20, 2]


def test_airy_without_f_number_is_an_error():
    stage = OpticsStage(OpticsStage.Params(psf="airy", pixel_pitch_um=1.0))
    with pytest.raises(StageError) as err:
        stage.setup(SignalInfo(Unit.PHOTONS, (8, 8, 3), np.float32, {"wavelength_nm": (1, 2, 3)}))
    assert err.value.key == "f_number"


def test_relative_illumination_is_cos4_of_field_angle():
    ri = relative_illumination(101, 61, corner_field_deg=30.0)
    assert ri[50, 30] == pytest.approx(1.0)
    for corner in [(0, 0), (0, 60), (100, 0), (100, 60)]:
        assert ri[corner] == pytest.approx(math.cos(math.radians(30.0)) ** 4, rel=1e-12)
    # Half-way to the corner along the diagonal: tan θ = tan(30°)/2.
    theta = math.atan(math.tan(math.radians(30.0)) / 2)
    assert ri[25, 15] == pytest.approx(math.cos(theta) ** 4, rel=1e-12)


def test_stage_vignetting_multiplies_after_blur():
    planes = np.full((1, 21, 31, 3), 100.0)
    out = run_optics(planes, psf="gaussian", sigma_px=1.0, vignetting_corner_deg=20.0)
    expected = 100.0 * relative_illumination(21, 31, corner_field_deg=20.0)
    np.testing.assert_allclose(out[0, ..., 1], expected, rtol=1e-12)


def test_user_kernel_file(tmp_path):
    rng = np.random.default_rng(9)
    kernel = rng.random((3, 5)) * 7
    path = tmp_path / "psf.npy"
    np.save(path, kernel)
    planes = rng.random((2, 12, 14, 3))
    out = run_optics(planes, psf="kernel", kernel_path=str(path), edge="nearest")
    ref = scipy.ndimage.convolve(planes, (kernel / kernel.sum())[None, :, :, None], mode="nearest")
    np.testing.assert_allclose(out, ref, rtol=1e-10)


def test_even_user_kernel_keeps_its_centre(tmp_path):
    delta = np.zeros((4, 4))
    delta[2, 2] = 1.0  # centre index (h // 2, w // 2): an even kernel must act as identity
    path = tmp_path / "delta.npy"
    np.save(path, delta)
    planes = np.random.default_rng(10).random((1, 9, 9, 3))
    np.testing.assert_allclose(run_optics(planes, psf="kernel", kernel_path=str(path)), planes)


def test_per_channel_user_kernel(tmp_path):
    kernel = np.zeros((3, 3, 3))
    kernel[1, 1, 0] = 1.0
    kernel[:, :, 1] = 1.0
    kernel[1, :, 2] = 2.0
    np.save(tmp_path / "k.npy", kernel)
    loaded = load_kernel(tmp_path / "k.npy", channels=3)
    assert loaded.shape == (3, 3, 3)
    np.testing.assert_allclose(loaded.sum(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(loaded[1], np.full((3, 3), 1 / 9))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("text", "cannot read"),
        (np.zeros(5), "must be"),
        (np.array([[1.0, np.nan, 1.0]]), "NaN"),
        (np.array([[1.0, -0.5, 1.0]]), "negative"),
        (np.zeros((3, 3)), "sums to 0"),
        (np.ones((3, 3, 2)), "channels"),
    ],
)
def test_bad_user_kernel_is_a_stage_error(tmp_path, content, message):
    path = tmp_path / "psf.npy"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        np.save(path, content)
    stage = OpticsStage(OpticsStage.Params(psf="kernel", kernel_path=str(path)))
    with pytest.raises(StageError, match=message) as err:
        stage.setup(SignalInfo(Unit.PHOTONS, (8, 8, 3), np.float32))
    assert err.value.key == "kernel_path"


def test_mosaic_input_is_refused():
    stage = OpticsStage()
    with pytest.raises(StageError, match="before"):
        stage.setup(SignalInfo(Unit.PHOTONS, (8, 8), np.float32))
