"""The spectral signal through scene, optics and photodetector: the acceptance checks of
issue 17 items 1–3, against the RGB chain and against direct numerical integrals."""

from __future__ import annotations

import colour
import numpy as np
import pytest
import scipy.stats

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors import psf, spectral
from sensors.optics import OpticsStage
from sensors.photodetector import PhotodetectorStage
from sensors.scene import SceneStage

RGB_NM = (610.0, 550.0, 465.0)  # the RGB scene's R, G, B wavelengths
NOISELESS = dict(
    shot_noise=False, read_noise_e=0.0, dark_current_e_per_s=0.0, prnu_pct=0.0, dsnu_e=0.0
)


def run_chain(images, stages, image_index=None):
    """Set up and run stages [(class, params)] on images; the outputs and infos of each."""
    info = SignalInfo(Unit.IMAGE, images.shape[1:], images.dtype, {"encoding": "linear16"})
    batch = Batch(np.arange(len(images)) if image_index is None else np.asarray(image_index))
    x, outs, infos = images, [], []
    for index, (cls, params) in enumerate(stages):
        stage = cls(cls.Params(**params), seed=3, index=index)
        info = stage.setup(info)
        x = stage.process(x, batch)
        assert x.shape == (len(images), *info.shape) and x.dtype == info.dtype
        outs.append(x)
        infos.append(info)
    return outs, infos


def grey_images(n=4, size=12, seed=0):
    """Grey (flat-spectrum) 16-bit images: a random level per pixel, R = G = B."""
    level = np.random.default_rng(seed).integers(0, 65536, (n, size, size, 1), dtype=np.uint16)
    return np.repeat(level, 3, axis=-1)


# -- item 1: the scene -------------------------------------------------------------------
@pytest.mark.parametrize("level", [{"mean_photons": 1500.0}, {"photons_at_white": 800.0}])
@pytest.mark.parametrize("cfa", ["RGGB", "RGBW", "stacked"])
def test_flat_spectrum_through_delta_qe_reproduces_the_rgb_chain(level, cfa):
    """Issue 17's check: a flat spectrum through ideal (delta) QE curves at the three RGB
    wavelengths gives the RGB chain's photons and electrons within 1e-6.

    "Flat" means flat in photons (``flat_photons``): CIE E is flat in *power*, so its
    photon spectrum rises ∝ λ (test_illuminant_e_photons_rise_with_wavelength); the RGB
    scene's white has the same photons in R, G and B."""
    images = grey_images()
    optics = (OpticsStage, {"psf": "gaussian", "sigma_px": 0.8})
    rgb_pd = (PhotodetectorStage, {"cfa": cfa, "qe": (0.5, 0.6, 0.4), "qe_w": 0.7, **NOISELESS})
    (rgb_photons, _, rgb_e), _ = run_chain(images, [(SceneStage, level), optics, rgb_pd])
    scene = {**level, "spectral": "recover", "illuminant": "flat_photons", "bands_nm": RGB_NM[::-1]}
    delta = {"filter_centre_nm": RGB_NM, "filter_fwhm_nm": (1e-3,) * 3}
    spec_pd = (PhotodetectorStage, {**rgb_pd[1], **delta})
    (spec_photons, _, spec_e), infos = run_chain(images, [(SceneStage, scene), optics, spec_pd])
    assert infos[0].attrs["spectral"] is True and infos[0].shape[-1] == 3
    assert "spectral" not in infos[2].attrs  # the electrons are per photosite colour
    np.testing.assert_allclose(spec_photons[..., ::-1], rgb_photons, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(spec_e, rgb_e, rtol=1e-6, atol=1e-9)


def test_illuminant_e_photons_rise_with_wavelength():
    """Equal energy per nm means photons ∝ λ (a photon carries h·c/λ)."""
    images = np.full((1, 2, 2, 3), 65535, dtype=np.uint16)
    (photons,), infos = run_chain(
        images,
        [(SceneStage, {"photons_at_white": 100.0, "spectral": "recover", "illuminant": "E"})],
    )
    bands = np.asarray(infos[0].attr("wavelength_nm"))
    assert bands.tolist() == spectral.band_grid(400.0, 700.0, 10.0).tolist()
    basis_sum = colour.recovery.MSDS_BASIS_FUNCTIONS_sRGB_MALLETT2019[bands].sum(axis=1)
    expected = 300.0 * bands / bands.sum() * basis_sum  # white: 3 channels' photons in all
    np.testing.assert_allclose(photons[0, 0, 0], expected, rtol=1e-6)


def test_spectral_mean_photons_fixes_the_mean_of_band_sums_over_three():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 65536, (3, 8, 8, 3), dtype=np.uint16)
    params = {"mean_photons": 2000.0, "spectral": "recover", "recovery": "smits1999"}
    (photons,), _ = run_chain(images, [(SceneStage, params)])
    np.testing.assert_allclose(photons.sum(axis=-1).mean(axis=(1, 2)) / 3, 2000.0, rtol=1e-5)


def test_colorchecker_chart_is_colours_reflectance_times_the_white():
    params = {"photons_at_white": 1000.0, "spectral": "colorchecker", "chart_patch_px": 3}
    (photons,), infos = run_chain(np.zeros((2, 5, 5, 3), np.uint16), [(SceneStage, params)])
    assert infos[0].shape == (12, 18, 31) and infos[0].attr("illuminant") == "D65"
    bands = np.asarray(infos[0].attr("wavelength_nm"))
    d65 = colour.SDS_ILLUMINANTS["D65"][bands] * bands
    white = 3000.0 * d65 / d65.sum()
    chart = colour.SDS_COLOURCHECKERS["BabelColor Average"]
    for row, col, name in ((0, 0, "dark skin"), (3, 0, "white 9.5 (.05 D)"), (2, 4, "magenta")):
        patch = photons[1, 3 * row : 3 * row + 3, 3 * col : 3 * col + 3]
        np.testing.assert_allclose(
            patch, np.broadcast_to(chart[name][bands] * white, patch.shape), rtol=1e-6
        )


# -- item 3: the photodetector against direct integrals ----------------------------------
def test_electrons_equal_a_fine_trapezoid_integral_of_illuminant_reflectance_and_qe():
    """Independent reference: e = 3P ∫ S(λ)λ R(λ) QE(λ) dλ / ∫ S(λ)λ dλ by np.trapezoid on a
    0.25 nm grid with colour's own interpolation, against the chain's sum over 1 nm bands
    (the rectangle rule over [399.5, 700.5] nm: agreement to O(Δλ²))."""
    level = 1000.0
    scene = {
        "photons_at_white": level,
        "spectral": "colorchecker",
        "chart_patch_px": 1,
        "illuminant": "A",
        "band_range_nm": (400.0, 700.0, 1.0),
    }
    pd = {"cfa": "stacked", "qe": 0.6, "qe_curves": "camera", **NOISELESS}
    (_, electrons), _ = run_chain(
        np.zeros((1, 4, 4, 3), np.uint16), [(SceneStage, scene), (PhotodetectorStage, pd)]
    )
    fine = colour.SpectralShape(399.5, 700.5, 0.25)
    lam = fine.wavelengths
    light = colour.SDS_ILLUMINANTS["A"].copy().align(fine).values * lam
    chart = colour.SDS_COLOURCHECKERS["BabelColor Average"]
    nikon = colour.MSDS_CAMERA_SENSITIVITIES["Nikon 5100 (NPL)"].copy().align(fine).values
    peak = colour.MSDS_CAMERA_SENSITIVITIES["Nikon 5100 (NPL)"][np.arange(400.0, 701.0)].max()
    qe = 0.6 * np.maximum(nikon, 0.0) / peak
    for index, name in ((1, "light skin"), (14, "red"), (17, "cyan")):
        refl = chart[name].copy().align(fine).values
        expected = [
            3 * level * np.trapezoid(light * refl * qe[:, c], lam) / np.trapezoid(light, lam)
            for c in range(3)
        ]
        np.testing.assert_allclose(electrons[0, index // 6, index % 6], expected, rtol=2e-4)


def test_electrons_equal_colours_spectral_arithmetic_on_the_band_grid():
    """The same sum on the 10 nm grid, written with colour's SpectralDistribution algebra."""
    scene = {"photons_at_white": 500.0, "spectral": "colorchecker", "chart_patch_px": 1}
    scene["band_range_nm"] = (400.0, 680.0, 10.0)  # the Sigma data end at 680 nm
    pd = {"cfa": "stacked", "qe_curves": "camera", "camera": "Sigma SDMerill (NPL)", **NOISELESS}
    pd["qe"] = (0.5, 0.6, 0.7)
    (_, electrons), _ = run_chain(
        np.zeros((1, 4, 4, 3), np.uint16), [(SceneStage, scene), (PhotodetectorStage, pd)]
    )
    shape = colour.SpectralShape(400, 680, 10)
    d65 = colour.SDS_ILLUMINANTS["D65"].copy().align(shape)
    photons = d65 * colour.SpectralDistribution(shape.wavelengths, shape.wavelengths)
    sigma = colour.MSDS_CAMERA_SENSITIVITIES["Sigma SDMerill (NPL)"].copy().align(shape)
    scale = np.array([0.5, 0.6, 0.7]) / np.maximum(sigma.values, 0).max()
    patch = colour.SDS_COLOURCHECKERS["BabelColor Average"]["orange"].copy().align(shape)
    for c, label in enumerate(sigma.labels):
        product = photons * patch * sigma.signals[label]
        expected = 1500.0 * scale[c] * product.values.sum() / photons.values.sum()
        assert electrons[0, 1, 0, c] == pytest.approx(expected, rel=1e-6)  # float32 photons


def test_shot_noise_is_poisson_on_the_integrated_electrons():
    """A flat grey field: the mosaic's electrons are Poisson(Σ_b QE·p_b) (chi-square test)."""
    images = np.full((8, 32, 32, 3), 30000, dtype=np.uint16)
    scene = {"photons_at_white": 20.0, "spectral": "recover", "illuminant": "D65"}
    noisy = {"cfa": "mono", "qe_w": 0.5, "read_noise_e": 0.0, "dark_current_e_per_s": 0.0}
    noisy |= {"prnu_pct": 0.0, "dsnu_e": 0.0}
    (photons, electrons), _ = run_chain(images, [(SceneStage, scene), (PhotodetectorStage, noisy)])
    lam = 0.5 * photons[0, 0, 0].astype(np.float64).sum()  # W: flat QE over the bands
    counts = np.bincount(electrons.astype(np.int64).ravel())
    k = np.arange(len(counts))
    expected = scipy.stats.poisson.pmf(k, lam) * electrons.size
    keep = expected > 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expect = np.append(expected[keep], electrons.size - expected[keep].sum())
    assert scipy.stats.chisquare(observed, expect).pvalue > 1e-3


def test_spectral_chain_is_the_same_for_any_batch_split():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 65536, (6, 10, 10, 3), dtype=np.uint16)
    stages = [
        (SceneStage, {"mean_photons": 300.0, "spectral": "recover"}),
        (OpticsStage, {"psf": "gaussian", "sigma_px": 0.6}),
        (PhotodetectorStage, {"qe_curves": "camera", "ir_cut_nm": 660.0}),
    ]
    (_, _, whole), _ = run_chain(images, stages)
    (_, _, part), _ = run_chain(images[4:], stages, image_index=[4, 5])
    np.testing.assert_array_equal(part, whole[4:])


# -- item 2: optics per wavelength -------------------------------------------------------
def _impulse_through_optics(bands, optics):
    """A one-pixel spot in every band through the optics; (B, H, W) responses."""
    spot = np.zeros((1, 33, 33, len(bands)), np.float32)
    spot[0, 16, 16] = 1.0
    stage = OpticsStage(OpticsStage.Params(**optics))
    info = SignalInfo(
        Unit.PHOTONS, spot.shape[1:], np.float32, {"wavelength_nm": bands, "spectral": True}
    )
    stage.setup(info)
    return np.moveaxis(stage.process(spot, Batch(np.arange(1)))[0], -1, 0)


def test_airy_psf_follows_each_bands_wavelength():
    bands = (420.0, 550.0, 690.0)
    optics = {"psf": "airy", "f_number": 8.0, "pixel_pitch_um": 1.5, "edge": "wrap"}
    responses = _impulse_through_optics(bands, optics)
    for band, response in zip(bands, responses, strict=True):
        transfer = psf.airy_transfer(
            np.fft.fftfreq(33), np.fft.rfftfreq(33), band * 1e-3 * 8.0 / 1.5
        )
        measured = np.fft.rfft2(np.fft.ifftshift(response.astype(np.float64)))
        np.testing.assert_allclose(measured.real, transfer, atol=1e-5)


def test_gaussian_psf_is_the_same_in_every_band():
    responses = _impulse_through_optics((450.0, 550.0, 650.0, 700.0), {"sigma_px": 0.9})
    for response in responses[1:]:
        np.testing.assert_array_equal(response, responses[0])


def test_chromatic_defocus_gives_each_band_its_disk():
    bands = (450.0, 550.0, 650.0)
    optics = {"psf": "defocus", "defocus_radius_px": 1.0, "chromatic_defocus_px_per_nm": 0.02}
    responses = _impulse_through_optics(bands, optics)
    for band, response in zip(bands, responses, strict=True):
        radius = abs(1.0 + 0.02 * (band - 550.0))  # 3.0, 1.0, 1.0 px
        disk = psf.defocus_psf(radius)
        r = disk.shape[0] // 2
        np.testing.assert_allclose(response[16 - r : 17 + r, 16 - r : 17 + r], disk, atol=1e-7)
        assert response.sum() == pytest.approx(1.0, abs=1e-6)


def test_lux_mode_sends_the_camera_equations_photons_over_all_bands():
    """RGB: the channels share the camera equation's photons; spectral: the bands do."""
    white = np.full((1, 2, 2, 3), 65535, dtype=np.uint16)
    lux = {"illuminance_lux": 200.0, "exposure_s": 0.01, "f_number": 2.8, "pixel_pitch_um": 3.0}
    (rgb,), _ = run_chain(white, [(SceneStage, lux)])
    (bands,), _ = run_chain(white, [(SceneStage, {**lux, "spectral": "recover"})])
    total = rgb[0, 0, 0].astype(np.float64).sum()
    assert bands[0, 0, 0].astype(np.float64).sum() == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize(
    ("stage", "params", "key", "fragment"),
    [
        (SceneStage, {"illuminant": "D66"}, "illuminant", "did you mean 'D65'"),
        (SceneStage, {"illuminant": "FL2", "band_range_nm": (360, 700, 10)}, "illuminant", "380"),
        (SceneStage, {"band_range_nm": (700, 400, 10)}, "band_range_nm", "start <= stop"),
        (SceneStage, {"bands_nm": ()}, "bands_nm", "1 to 1000 wavelengths"),
        (SceneStage, {"bands_nm": (500, 450)}, "bands_nm", "strictly increasing"),
        (SceneStage, {"band_fractions": (0.5, 0.25, 0.25)}, "band_fractions", "illuminant"),
        (SceneStage, {"spectral": "colorchecker", "chart": "ISO"}, "chart", "ColorChecker"),
        (SceneStage, {"spectral": "cube"}, "cube_path", "needs cube_path"),
        (PhotodetectorStage, {"qe_curves": "camera", "camera": "Canon"}, "camera", "unknown"),
        (PhotodetectorStage, {"qe_curves": "csv"}, "qe_csv_path", "needs a file"),
    ],
)
def test_spectral_parameter_errors_name_the_key(stage, params, key, fragment):
    scene = {"spectral": "recover"}
    stages = (
        [(SceneStage, {**scene, **params})]
        if stage is SceneStage
        else [
            (SceneStage, scene),
            (stage, params),
        ]
    )
    with pytest.raises(StageError) as err:
        run_chain(grey_images(1, 4), stages)
    assert err.value.key == key and fragment in str(err.value), str(err.value)


def test_spectral_photons_need_one_band_per_wavelength():
    info = SignalInfo(
        Unit.PHOTONS, (4, 4, 3), np.float32, {"spectral": True, "wavelength_nm": (500.0, 600.0)}
    )
    with pytest.raises(StageError, match="one band per wavelength"):
        PhotodetectorStage().setup(info)


@pytest.mark.parametrize(
    ("stage", "key", "value"),
    [
        (SceneStage, "illuminant", "A"),
        (SceneStage, "band_range_nm", (400.0, 700.0, 5.0)),
        (PhotodetectorStage, "qe_curves", "camera"),
        (PhotodetectorStage, "ir_cut_nm", 650.0),
    ],
)
def test_spectral_parameters_on_an_rgb_chain_are_refused_not_ignored(stage, key, value):
    stages = [(SceneStage, {}), (PhotodetectorStage, {})]
    stages[0 if stage is SceneStage else 1] = (stage, {key: value})
    with pytest.raises(StageError, match="only read") as err:
        run_chain(grey_images(1, 4), stages)
    assert err.value.key == key
