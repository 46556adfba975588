"""Optics stage: PSFs against diffraction theory, scipy.ndimage, and photon conservation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.ndimage
import scipy.special
import scipy.stats
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.optics import (
    OpticsStage,
    apply_psf,
    convolve_nearest,
    gaussian_blur,
    load_kernel,
    relative_illumination,
)
from sensors.psf import (
    airy_encircled_energy,
    airy_energy_radius_px,
    airy_psf,
    airy_taps,
    defocus_psf,
    gaussian_kernel1d,
    gaussian_psf,
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


def disk_otf(f: np.ndarray, radius_px: float) -> np.ndarray:
    """Transfer function of a uniform disk of radius R: 2·J1(2πRf)/(2πRf)."""
    x = 2 * np.pi * radius_px * f
    safe = np.where(x == 0, 1.0, x)
    return np.where(x == 0, 1.0, 2 * scipy.special.j1(safe) / safe)


def aliased_mtf(otf, f: np.ndarray, orders: int) -> np.ndarray:
    """Σ_k H(f + k)·sinc(f + k): the transfer along fx (fy = 0) of a pixel-integrated PSF
    sampled on the pixel grid (the fy aliases vanish there: sinc(n) = 0 for n ≠ 0)."""
    g = f[None, :] + np.arange(-orders, orders + 1)[:, None]
    return (otf(np.abs(g)) * np.sinc(g)).sum(axis=0)


N_MTF = 100
F_MTF = np.arange(10, 51) / N_MTF  # 0.10 … 0.50 cycles/px


def stage_mtf(attrs: dict | None = None, **params) -> np.ndarray:
    """The transfer at F_MTF of the kernel the stage applies: the DFT of its response to an
    impulse under periodic borders (the kernel folded onto the N × N period)."""
    impulse = np.zeros((1, N_MTF, N_MTF, 3))
    impulse[0, 0, 0] = 1.0
    response = run_optics(impulse, attrs, edge="wrap", **params)[0, ..., 1]
    assert response.sum() == pytest.approx(1.0, abs=1e-12)
    return np.fft.fft2(response)[0, 10:51].real


def airy_intensity(lambda_n_px: float):
    """The Airy PSF normalised to unit volume: π/(4 (λN)²)·[2 J1(x)/x]², x = π r/(λN)."""

    def intensity(y, x):
        r = math.hypot(x, y)
        if r == 0:
            return math.pi / (4 * lambda_n_px**2)
        v = math.pi * r / lambda_n_px
        return math.pi / (4 * lambda_n_px**2) * (2 * scipy.special.j1(v) / v) ** 2

    return intensity


# -- Airy -------------------------------------------------------------------------------


@pytest.mark.parametrize(("f_number", "wavelength_nm"), [(4.0, 550.0), (2.0, 450.0), (8.0, 650.0)])
def test_airy_mtf_is_the_aliased_diffraction_otf_times_pixel_sinc(f_number, wavelength_nm):
    # Issue 10's reference case is f/4, 550 nm, 1 µm pixels (λN = 2.2 px).
    lambda_n_px = wavelength_nm * 1e-3 * f_number / 1.0
    attrs = {"wavelength_nm": (wavelength_nm,) * 3, "f_number": f_number, "pixel_pitch_um": 1.0}
    mtf = stage_mtf(attrs, psf="airy")
    expected = aliased_mtf(lambda g: diffraction_mtf(g * lambda_n_px), F_MTF, orders=5)
    np.testing.assert_allclose(mtf, expected, atol=0.005)


def test_airy_pixel_taps_equal_integral_of_intensity_over_pixel():
    # Independent numerical integration (scipy dblquad) of the unit-volume Airy PSF.
    lambda_n_px = 1.5
    intensity = airy_intensity(lambda_n_px)
    taps = airy_taps(lambda_n_px, 6)
    for i, j in [(0, 0), (0, 1), (1, 1), (0, 3), (2, 5)]:
        expected = scipy.integrate.dblquad(
            intensity, j - 0.5, j + 0.5, i - 0.5, i + 0.5, epsabs=1e-12
        )[0]
        assert taps[6 + i, 6 + j] == pytest.approx(expected, abs=1e-7)


def test_airy_encircled_energy_is_the_integral_of_the_intensity():
    lambda_n_px = 2.0
    intensity = airy_intensity(lambda_n_px)
    for r in (1.0, 2.44, 7.5):
        ring = scipy.integrate.quad(lambda t: 2 * math.pi * t * intensity(0, t), 0, r, limit=200)
        assert airy_encircled_energy(r, lambda_n_px) == pytest.approx(ring[0], abs=1e-8)


def test_airy_kernel_keeps_99_9_percent_of_the_energy():
    # f/4, 550 nm, 1 µm pixels: the radius is set by encircled energy, not a ring count.
    lambda_n_px = 2.2
    radius = airy_energy_radius_px(lambda_n_px)
    assert airy_encircled_energy(radius, lambda_n_px) >= 0.999
    assert airy_encircled_energy(radius - 1, lambda_n_px) < 0.999
    kept = airy_taps(lambda_n_px, radius).sum()  # the square holds the circle and more
    assert 0.999 <= kept < 1.0
    kernel = airy_psf(f_number=4.0, wavelength_nm=550.0, pixel_pitch_um=1.0)
    assert kernel.shape == (2 * radius + 1,) * 2
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)


def test_airy_reflect_is_wrap_on_the_mirrored_image():
    rng = np.random.default_rng(11)
    planes = rng.random((2, 12, 9, 3)) * 100
    attrs = {"wavelength_nm": (610.0, 550.0, 465.0), "f_number": 4.0, "pixel_pitch_um": 1.0}
    mirrored = np.concatenate([planes, planes[:, ::-1]], axis=1)
    mirrored = np.concatenate([mirrored, mirrored[:, :, ::-1]], axis=2)
    wrap = run_optics(mirrored, attrs, psf="airy", edge="wrap")[:, :12, :9]
    reflect = run_optics(planes, attrs, psf="airy", edge="reflect")
    np.testing.assert_allclose(reflect, wrap, rtol=1e-10, atol=1e-10)
    assert np.allclose(planes.sum(axis=(1, 2)), reflect.sum(axis=(1, 2)), rtol=0.05)


@pytest.mark.parametrize("edge", ["constant", "nearest"])
def test_airy_constant_and_nearest_match_convolution_with_the_99_9_percent_kernel(edge):
    rng = np.random.default_rng(12)
    planes = rng.random((1, 10, 8, 3)) * 100
    attrs = {"wavelength_nm": (450.0,) * 3, "f_number": 2.0, "pixel_pitch_um": 1.0}
    out = run_optics(planes, attrs, psf="airy", edge=edge)
    kernel = airy_psf(f_number=2.0, wavelength_nm=450.0, pixel_pitch_um=1.0)
    ref = scipy.ndimage.convolve(planes[0, ..., 1], kernel, mode=edge)
    # both hold the PSF to ≥ 99.9 % of its energy: they agree to 0.2 % of the range
    np.testing.assert_allclose(out[0, ..., 1], ref, atol=2e-3 * 100)


def test_airy_constant_edge_applies_the_exact_taps():
    attrs = {"wavelength_nm": (550.0,) * 3, "f_number": 4.0, "pixel_pitch_um": 1.0}
    impulse = np.zeros((1, 15, 15, 3))
    impulse[0, 7, 7] = 1.0
    out = run_optics(impulse, attrs, psf="airy", edge="constant")[0, ..., 1]
    intensity = airy_intensity(2.2)
    for i, j in [(0, 0), (0, 1), (2, 3), (7, 7)]:
        expected = scipy.integrate.dblquad(
            intensity, j - 0.5, j + 0.5, i - 0.5, i + 0.5, epsabs=1e-12
        )[0]
        assert out[7 + i, 7 + j] == pytest.approx(expected, abs=1e-6)
    # the rest of the light falls outside the image: the energy within 7 px of the centre
    assert out.sum() == pytest.approx(airy_taps(2.2, 7).sum(), abs=1e-9)


def test_airy_user_truncation_is_renormalised():
    attrs = {"wavelength_nm": (550.0,) * 3, "f_number": 4.0, "pixel_pitch_um": 1.0}
    impulse = np.zeros((1, 21, 21, 3))
    impulse[0, 10, 10] = 1.0
    out = run_optics(impulse, attrs, psf="airy", psf_radius_px=3, edge="constant")
    taps = airy_taps(2.2, 3)
    np.testing.assert_allclose(out[0, 7:14, 7:14, 1], taps / taps.sum(), atol=1e-12)
    assert out[0, ..., 1].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(6, 5), (1, 4), (3, 1), (7, 7)])
def test_convolve_nearest_equals_scipy_nearest_for_a_kernel_larger_than_the_image(shape):
    # A compact even kernel (pixel-integrated Gaussian, σ 2 px, 17×17) and its line spread:
    # the half-plane and quadrant sums are then known exactly, so scipy must agree to 1e-12.
    rng = np.random.default_rng(14)
    planes = rng.random((2, *shape, 3))
    k1 = gaussian_kernel1d(2.0)
    r, m = len(k1) // 2, max(*shape, len(k1) // 2)
    taps = np.stack([np.pad(np.outer(k1, k1), m - r)] * 3)
    line = np.stack([np.pad(k1, m - r)] * 3)
    ref = scipy.ndimage.convolve(planes, np.outer(k1, k1)[None, :, :, None], mode="nearest")
    np.testing.assert_allclose(convolve_nearest(planes, taps, line), ref, rtol=1e-12, atol=1e-13)


def test_airy_nearest_keeps_a_flat_field_flat():
    attrs = {"wavelength_nm": (610.0, 550.0, 465.0), "f_number": 4.0, "pixel_pitch_um": 1.0}
    flat = np.full((1, 9, 12, 3), 100.0)
    np.testing.assert_allclose(run_optics(flat, attrs, psf="airy", edge="nearest"), flat, rtol=1e-6)


# -- defocus, Gaussian, user kernel ------------------------------------------------------


def test_defocus_taps_are_the_pixel_area_inside_the_disk():
    radius = 3.3
    psf = defocus_psf(radius)
    c = psf.shape[0] // 2

    def covered(i, j):  # area of the unit pixel centred at (i, j) inside the disk
        def chord(x):
            half = math.sqrt(max(radius**2 - x**2, 0.0))
            return max(0.0, min(i + 0.5, half) - max(i - 0.5, -half))

        return scipy.integrate.quad(chord, j - 0.5, j + 0.5, limit=200, epsabs=1e-13)[0]

    area = math.pi * radius**2
    for i, j in [(0, 0), (0, 3), (2, 2), (1, 3), (3, 1), (2, 3), (-3, 0)]:
        assert psf[c + i, c + j] == pytest.approx(covered(i, j) / area, abs=1e-10)
    assert psf.shape == (7, 7)  # pixel 4 starts at 3.5 px, beyond the 3.3 px disk
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("radius_px", [0.7, 1.0, 2.5, 4.0])
def test_defocus_mtf_is_the_aliased_disk_otf_times_pixel_sinc(radius_px):
    mtf = stage_mtf(psf="defocus", defocus_radius_px=radius_px)
    expected = aliased_mtf(lambda g: disk_otf(g, radius_px), F_MTF, orders=2000)
    np.testing.assert_allclose(mtf, expected, atol=0.005)


def test_gaussian_taps_are_the_normal_mass_over_each_pixel():
    for sigma in (0.3, 0.6, 2.0):
        k = gaussian_kernel1d(sigma)
        x = np.arange(len(k)) - len(k) // 2
        mass = scipy.stats.norm.cdf(x + 0.5, scale=sigma) - scipy.stats.norm.cdf(
            x - 0.5, scale=sigma
        )
        np.testing.assert_allclose(k, mass / mass.sum(), rtol=1e-12, atol=1e-15)
        assert mass.sum() > 1 - 1e-4  # the 4σ + ½ truncation drops < 0.01 %


@pytest.mark.parametrize("sigma_px", [0.6, 1.0, 2.0])
def test_gaussian_mtf_is_the_aliased_gaussian_otf_times_pixel_sinc(sigma_px):
    mtf = stage_mtf(psf="gaussian", sigma_px=sigma_px)
    otf = lambda g: np.exp(-2 * np.pi**2 * sigma_px**2 * g**2)  # noqa: E731
    np.testing.assert_allclose(mtf, aliased_mtf(otf, F_MTF, orders=20), atol=0.005)


def test_gaussian_mtf_at_nyquist_pixel_integrated_and_point_sampled():
    # Issue 10: at σ = 0.6 px the pixel-integrated Gaussian's MTF at Nyquist is 0.216;
    # the point-sampled one (psf: gaussian_point) gives 0.338.
    assert stage_mtf(psf="gaussian", sigma_px=0.6)[-1] == pytest.approx(0.216, abs=5e-4)
    assert stage_mtf(psf="gaussian_point", sigma_px=0.6)[-1] == pytest.approx(0.338, abs=5e-4)


def test_gaussian_psf_matches_scipy_impulse_response():
    impulse = np.zeros((31, 31))
    impulse[15, 15] = 1.0
    for sigma in (0.5, 0.7, 1.3, 3.0):
        expected = scipy.ndimage.gaussian_filter(impulse, sigma, mode="constant")
        k = gaussian_psf(sigma, pixel_integrated=False)
        r = k.shape[0] // 2
        np.testing.assert_allclose(k, expected[15 - r : 16 + r, 15 - r : 16 + r], atol=1e-15)


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_point_sampled_gaussian_blur_matches_scipy_gaussian_filter(edge, dtype):
    rng = np.random.default_rng(3)
    planes = (rng.random((3, 23, 17, 3)) * 1000).astype(dtype)
    for sigma in (0.7, 2.0):
        ours = gaussian_blur(planes, sigma, edge=edge, pixel_integrated=False)
        ref = scipy.ndimage.gaussian_filter(
            planes.astype(np.float64), (0, sigma, sigma, 0), mode=edge
        )
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1000)
        assert ours.dtype == dtype
    # And the stage's gaussian_point (σ = 0.7) is this same filter.
    np.testing.assert_allclose(
        run_optics(planes, edge=edge, psf="gaussian_point"),
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
            gaussian_blur(planes, 3.0, edge=edge, pixel_integrated=False),
            ref_g,
            rtol=1e-10,
            atol=1e-12,
        )
        ref_i = scipy.ndimage.convolve(planes, gaussian_psf(3.0)[None, :, :, None], mode=edge)
        np.testing.assert_allclose(
            gaussian_blur(planes, 3.0, edge=edge), ref_i, rtol=1e-10, atol=1e-12
        )


# -- conservation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"psf": "gaussian", "sigma_px": 1.2},
        {"psf": "defocus", "defocus_radius_px": 2.5},
        {"psf": "airy", "f_number": 4.0, "pixel_pitch_um": 1.0},
        {"psf": "airy", "f_number": 4.0, "pixel_pitch_um": 1.0, "psf_radius_px": 40},
        {"psf": "gaussian", "sigma_px": 1.2, "convolution": "fft"},
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
@example(
    kind="gaussian",
    sigma=5e-324,
    radius=0.0,
    f_number=2.0,
    wavelength=550.0,
    pitch=1.0,
    airy_radius=1,
    integrated=True,
)  # a sub-normal σ: x/σ overflows (found by hypothesis)
@given(
    kind=st.sampled_from(["gaussian", "airy", "defocus"]),
    sigma=st.floats(0.0, 5.0),
    radius=st.floats(0.0, 6.0),
    f_number=st.floats(1.0, 16.0),
    wavelength=st.floats(400.0, 700.0),
    pitch=st.floats(0.8, 6.0),
    airy_radius=st.integers(1, 60),
    integrated=st.booleans(),
)
def test_every_psf_sums_to_one_and_is_non_negative(
    kind, sigma, radius, f_number, wavelength, pitch, airy_radius, integrated
):
    if kind == "gaussian":
        psf = gaussian_psf(sigma, pixel_integrated=integrated)
    elif kind == "airy":
        psf = airy_psf(
            f_number=f_number,
            wavelength_nm=wavelength,
            pixel_pitch_um=pitch,
            radius_px=airy_radius,
        )
    else:
        psf = defocus_psf(radius)
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
    out = run_optics(planes, attrs, psf="airy")
    for c, wl in enumerate(attrs["wavelength_nm"]):
        one = run_optics(planes, {**attrs, "wavelength_nm": (wl,) * 3}, psf="airy")
        np.testing.assert_allclose(out[0, ..., c], one[0, ..., c], rtol=1e-12, atol=1e-12)
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


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"psf": "gaussian", "sigma_px": 1e6}, "sigma_px"),
        ({"psf": "gaussian_point", "sigma_px": 1e6}, "sigma_px"),
        ({"psf": "defocus", "defocus_radius_px": 1e6}, "defocus_radius_px"),
        ({"psf": "airy", "f_number": 1e6, "edge": "nearest"}, "edge"),
        ({"psf": "airy", "f_number": 1e-6}, "f_number"),
        ({"psf": "airy", "f_number": 1e3, "psf_radius_px": 512}, "psf_radius_px"),
    ],
)
def test_absurd_psf_sizes_are_refused_before_allocating(params, key):
    attrs = {"wavelength_nm": (550.0,) * 3, "pixel_pitch_um": 1.0}
    stage = OpticsStage(OpticsStage.Params(**params))
    with pytest.raises(StageError) as err:
        stage.setup(SignalInfo(Unit.PHOTONS, (8, 8, 3), np.float32, attrs))
    assert err.value.key == key


def test_a_huge_airy_spot_under_reflect_is_exact_and_cheap():
    # λN = 5.5e5 px: no kernel at all, the transfer is 1 at DC and ~0 elsewhere.
    planes = np.random.default_rng(13).random((1, 8, 8, 3))
    attrs = {"wavelength_nm": (550.0,) * 3, "pixel_pitch_um": 1.0, "f_number": 1e6}
    out = run_optics(planes, attrs, psf="airy")
    mean = np.broadcast_to(planes.mean(axis=(1, 2), keepdims=True), planes.shape)
    np.testing.assert_allclose(out, mean, atol=1e-4)
