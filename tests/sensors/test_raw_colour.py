"""The raw stage's white balance and colour correction (issue 17 item 4), against
colour-science's own functions and analytic cases."""

from __future__ import annotations

import colour
import numpy as np
import pytest

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors import spectra, spectral, white_balance
from sensors.adc import ADCStage
from sensors.colour_correction import (
    chart_xyz,
    delta_e2000,
    fit_chart,
    srgb_ccm,
    xyz_to_linear_srgb,
)
from sensors.photodetector import PhotodetectorStage
from sensors.raw import RawStage
from sensors.scene import SceneStage

BANDS = spectral.band_grid(400.0, 700.0, 10.0)
NOISELESS = dict(
    shot_noise=False, read_noise_e=0.0, dark_current_e_per_s=0.0, prnu_pct=0.0, dsnu_e=0.0
)
SRGB = colour.RGB_COLOURSPACES["sRGB"]
NIKON = "Nikon 5100 (NPL)"


def run(stages, images, index=None):
    """Set up and run [(class, params)] on images; (last output, last info)."""
    info = SignalInfo(Unit.IMAGE, images.shape[1:], images.dtype, {"encoding": "linear16"})
    batch = Batch(np.arange(len(images)) if index is None else np.asarray(index))
    x = images
    for i, (cls, params) in enumerate(stages):
        stage = cls(cls.Params(**params), seed=1, index=i)
        info = stage.setup(info)
        x = stage.process(x, batch)
    return x, info


def chart_chain(raw: dict, illuminant: str = "D65", cfa: str = "RGGB"):
    """A noiseless ColorChecker under ``illuminant`` on the Nikon 5100, 16-bit ADC."""
    scene = {
        "photons_at_white": 5000.0,
        "spectral": "colorchecker",
        "chart_patch_px": 6,
        "illuminant": illuminant,
    }
    pd = {"cfa": cfa, "qe_curves": "camera", "qe": 0.6, "full_well_e": 1e6, **NOISELESS}
    return [
        (SceneStage, scene),
        (PhotodetectorStage, pd),
        (ADCStage, {"bits": 16}),
        (RawStage, raw),
    ]


def patch_means(planes: np.ndarray) -> np.ndarray:
    """(24, 3) centre means of a 6-px-patch chart image (H, W, 3), reading order."""
    return np.stack(
        [
            planes[6 * r + 2 : 6 * r + 4, 6 * c + 2 : 6 * c + 4].reshape(-1, 3).mean(axis=0)
            for r in range(4)
            for c in range(6)
        ]
    )


# -- white balance gains -------------------------------------------------------------------
@pytest.mark.parametrize("illuminant", ["D65", "A", "FL2"])
def test_illuminant_gains_are_colours_white_balance_multipliers(illuminant):
    qe = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.9, camera=NIKON)[:3]
    light = spectra.illuminant_photons(illuminant, BANDS)
    sensitivities = colour.characterisation.RGB_CameraSensitivities(
        qe.T, BANDS, labels=("red", "green", "blue")
    )
    reference = colour.characterisation.white_balance_multipliers(
        sensitivities, colour.SpectralDistribution(light, BANDS)
    )
    # colour scales its multipliers so the smallest is 1; ours have G = 1
    gains = white_balance.illuminant_gains(qe, light)
    np.testing.assert_allclose(gains, reference / reference[1], rtol=1e-12)


def test_gray_world_makes_each_images_flat_colour_grey():
    """Two flat colour fields in one batch: each gets its own gains, G = 1."""
    colours = np.array([[0.2, 0.4, 0.1], [0.3, 0.15, 0.6]])
    planes = np.broadcast_to(colours[:, None, None, :], (2, 4, 4, 3))
    gains = white_balance.gray_world_gains(planes)
    np.testing.assert_allclose(gains, colours[:, 1:2] / colours)
    cmap = np.array([[0, 1], [1, 2]])  # an RGGB mosaic of the same fields
    mosaic = colours[:, cmap]
    np.testing.assert_allclose(white_balance.gray_world_gains(mosaic, cmap), gains)


def test_white_patch_at_percentile_100_is_max_rgb():
    rng = np.random.default_rng(0)
    planes = rng.uniform(0.0, 1.0, (3, 8, 8, 3))
    gains = white_balance.white_patch_gains(planes, percentile=100.0)
    peak = planes.max(axis=(1, 2))
    np.testing.assert_allclose(gains, peak[:, 1:2] / peak)


# -- the raw stage -------------------------------------------------------------------------
def test_illuminant_white_balance_makes_the_grey_patches_neutral():
    """Under tungsten (A) the unbalanced greys are far from neutral (B/G ≈ 0.4); balanced,
    the three lightest greys are neutral within the chart's own 3 % non-flatness."""
    images = np.zeros((1, 4, 4, 3))
    plain, _ = run(chart_chain({}, "A"), images)
    out, info = run(chart_chain({"white_balance": "illuminant"}, "A"), images)
    greys_before = patch_means(plain[0])[18:21]
    greys = patch_means(out[0])[18:21]
    assert (np.abs(greys_before / greys_before[:, 1:2] - 1.0) > 0.1).any()
    np.testing.assert_allclose(greys / greys[:, 1:2], 1.0, rtol=3e-2)
    assert info.attr("white_balance") == "illuminant" and info.attr("wb_gains")[1] == 1.0


def test_a_given_ccm_is_a_matrix_product_after_demosaicing():
    images = np.zeros((1, 4, 4, 3))
    plain, _ = run(chart_chain({}), images)
    m = ((1.6, -0.4, -0.2), (-0.3, 1.5, -0.2), (0.0, -0.5, 1.5))
    out, info = run(chart_chain({"ccm": m}), images)
    np.testing.assert_allclose(out, plain @ np.asarray(m).T, rtol=1e-5, atol=1e-7)
    identity, _ = run(chart_chain({"ccm": tuple(map(tuple, np.eye(3)))}), images)
    np.testing.assert_array_equal(identity, plain)
    np.testing.assert_allclose(info.attr("ccm"), m, rtol=1e-7)


@pytest.mark.parametrize("illuminant", ["D65", "A"])
def test_fitted_ccm_renders_the_chart_in_srgb(illuminant):
    """Issue 17: Nikon 5100, fitted CCM, no noise: mean ΔE2000 < 3 under D65 (the chain's
    output against the patches' true colours in linear sRGB, compared as XYZ)."""
    raw = {"white_balance": "illuminant", "ccm": "fit"}
    out, _ = run(chart_chain(raw, illuminant), np.zeros((1, 4, 4, 3)))
    rgb = patch_means(out[0])
    xyz, white = chart_xyz(illuminant)
    truth = xyz_to_linear_srgb(xyz, white)
    rgb *= truth[18, 1] / rgb[18, 1]  # the exposure: the white patch's G
    to_xyz = np.asarray(SRGB.matrix_RGB_to_XYZ).T
    error = delta_e2000(rgb @ to_xyz, truth @ to_xyz, np.ones(3) @ to_xyz)
    assert error.mean() < (3.0 if illuminant == "D65" else 4.0)


def test_srgb_ccm_is_the_xyz_ccm_adapted_and_balanced():
    """Least squares is linear in its targets: the sRGB CCM is XYZ→sRGB · Bradford · M ·
    diag(1/g) of fit_chart's M (colour's Bradford matrix), up to the white's scale."""
    qe = spectral.qe_curves("camera", BANDS, qe=0.6, qe_w=0.9, camera=NIKON)[:3]
    light = spectra.illuminant_photons("A", BANDS)
    gains = white_balance.illuminant_gains(qe, light)
    m_xyz = fit_chart(qe, BANDS, illuminant="A").ccm
    _, white = chart_xyz("A")
    d65 = colour.xy_to_XYZ(SRGB.whitepoint) * white[1]
    cat = colour.adaptation.matrix_chromatic_adaptation_VonKries(white, d65, "Bradford")
    scale = spectral.integrate_bands(light, qe)[1]
    expected = SRGB.matrix_XYZ_to_RGB @ cat @ m_xyz @ np.diag(scale / gains)
    got = srgb_ccm(qe, BANDS, illuminant="A", wb_gains=gains)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_xyz_to_linear_srgb_is_colours_xyz_to_srgb():
    xyz, white = chart_xyz("A")
    reference = colour.XYZ_to_sRGB(
        xyz / white[1],
        illuminant=colour.XYZ_to_xy(white),
        chromatic_adaptation_transform="Bradford",
        apply_cctf_encoding=False,
    )
    np.testing.assert_allclose(xyz_to_linear_srgb(xyz, white), reference, atol=2e-4)


@pytest.mark.parametrize("method", ["gray_world", "white_patch"])
def test_per_image_white_balance_is_the_same_for_any_batch_split(method):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 65536, (4, 8, 8, 3), dtype=np.uint16)
    stages = [
        (SceneStage, {"mean_photons": 800.0}),
        (PhotodetectorStage, {"cfa": "RGGB"}),
        (ADCStage, {"bits": 10}),
        (RawStage, {"white_balance": method, "auto_gain": True}),
    ]
    whole, _ = run(stages, images)
    parts = [run(stages, images[i : i + 1], index=[i])[0] for i in range(4)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


@pytest.mark.parametrize(
    ("stages", "raw", "key"),
    [
        ("rgb", {"white_balance": "illuminant"}, "white_balance"),
        ("rgb", {"ccm": "fit"}, "ccm"),
        ("rgb", {"white_balance": "gray_world", "wb_gains": (2.0, 1.0, 1.0)}, "wb_gains"),
        ("rgb", {"ccm": tuple(map(tuple, np.eye(3))), "output": "mosaic"}, "ccm"),
        ("mono", {"white_balance": "gray_world"}, "white_balance"),
        ("spectral", {"ccm": "fit", "illuminant": "flat_photons"}, "ccm"),
        ("spectral", {"white_balance": "illuminant", "illuminant": "D99"}, "illuminant"),
    ],
)
def test_colour_settings_that_cannot_apply_are_refused_naming_the_key(stages, raw, key):
    if stages == "spectral":
        chain = chart_chain(raw)
    else:
        cfa = "mono" if stages == "mono" else "RGGB"
        chain = [
            (SceneStage, {"mean_photons": 500.0}),
            (PhotodetectorStage, {"cfa": cfa}),
            (ADCStage, {"bits": 10}),
            (RawStage, raw),
        ]
    with pytest.raises(StageError) as err:
        run(chain, np.zeros((1, 4, 4, 3), np.uint16))
    assert err.value.key == key
