"""Raw stage: normalisation, white balance, demosaicing against independent implementations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # it imports from scipy.ndimage.filters (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from colour_demosaicing import (
        demosaicing_CFA_Bayer_bilinear,
        demosaicing_CFA_Bayer_Malvar2004,
    )
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.colour import linear_to_srgb
from sensors.raw import (
    BAYER_TILES,
    RawStage,
    channel_map,
    demosaic_bilinear,
    demosaic_malvar2004,
    demosaic_opencv,
    normalise_dn,
)

PHASES = sorted(BAYER_TILES)
RGBW_TILE = (("R", "G"), ("B", "W"))
METHODS = ["bilinear", "malvar", "opencv_ea", "opencv_vng"]


def mosaic_of(planes: np.ndarray, cfa_tile) -> np.ndarray:
    """Sample (..., H, W, 3) planes through a CFA (W pixels: the mean of R, G, B)."""
    h, w = planes.shape[-3:-1]
    cmap = channel_map(cfa_tile, h, w)
    with_w = np.concatenate([planes, planes.mean(axis=-1, keepdims=True)], axis=-1)
    index = np.broadcast_to(cmap[..., None].astype(np.intp), (*with_w.shape[:-1], 1))
    return np.take_along_axis(with_w, index, axis=-1)[..., 0]


def run_raw(dn: np.ndarray, attrs: dict, **params) -> tuple[np.ndarray, SignalInfo]:
    stage = RawStage(RawStage.Params(**params))
    info = stage.setup(SignalInfo(Unit.DN, dn.shape[1:], dn.dtype, attrs))
    out = stage.process(dn, Batch(np.arange(len(dn))))
    assert out.shape == (len(dn), *info.shape) and out.dtype == np.float32
    return out, info


def adc_attrs(pattern: str, bits: int = 10, black: float = 64.0) -> dict:
    return {
        "cfa": pattern,
        "cfa_tile": BAYER_TILES.get(pattern, RGBW_TILE),
        "bits": bits,
        "black_level_dn": black,
        "white_level_dn": float(2**bits - 1),
    }


# -- normalisation and white balance ----------------------------------------------------


def test_normalise_maps_black_to_0_and_white_to_1():
    dn = np.array([64, 543.5, 1023, 60], dtype=np.float64)
    np.testing.assert_allclose(
        normalise_dn(dn, black_level_dn=64, white_level_dn=1023, dtype=np.float64),
        [0.0, 0.5, 1.0, -4 / 959],
    )


def test_stage_reads_levels_from_attrs_and_params_override_them():
    dn = np.full((1, 4, 4), 543.5, dtype=np.float32)
    out, info = run_raw(dn, adc_attrs("RGGB"))
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)
    assert info.attrs["black_level_dn"] == 64.0
    out, _ = run_raw(dn, adc_attrs("RGGB"), black_level_dn=0.0, white_level_dn=1087.0)
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)
    # No white level from the ADC: 2**bits − 1.
    attrs = {k: v for k, v in adc_attrs("RGGB").items() if k != "white_level_dn"}
    out, _ = run_raw(np.full((1, 2, 2), 1023.0, dtype=np.float32), attrs)
    np.testing.assert_allclose(out, 1.0)


def test_level_errors_name_the_key():
    stage = RawStage(RawStage.Params(white_level_dn=10.0))
    with pytest.raises(StageError) as err:
        stage.setup(SignalInfo(Unit.DN, (4, 4), np.uint16, adc_attrs("RGGB", black=64.0)))
    assert err.value.key == "white_level_dn"
    attrs = {"cfa": "RGGB", "cfa_tile": BAYER_TILES["RGGB"]}
    with pytest.raises(StageError) as err:
        RawStage().setup(SignalInfo(Unit.DN, (4, 4), np.uint16, attrs))
    assert err.value.key == "white_level_dn"


@pytest.mark.parametrize("pattern", PHASES)
def test_white_balance_gains_per_channel(pattern):
    grey = np.full((8, 8, 3), 0.25)
    dn = (mosaic_of(grey, BAYER_TILES[pattern]) * 959 + 64)[None]
    out, _ = run_raw(dn, adc_attrs(pattern), wb_gains=(2.0, 1.0, 1.5))
    np.testing.assert_allclose(out[0], np.broadcast_to([0.5, 0.25, 0.375], (8, 8, 3)), rtol=1e-6)


# -- demosaicing: flat fields, ramps, independent references -----------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", PHASES)
def test_flat_colour_field_is_exact_everywhere(method, pattern):
    # Values on the 8-bit grid so that OpenCV's quantisation (VNG: 8-bit) is exact too.
    # Every method reproduces a flat field on every pixel, borders included (mirrored
    # borders keep the CFA phase; OpenCV's own border handling does as well).
    colour = np.array([200.0, 120.0, 40.0]) / 255.0
    dn = mosaic_of(np.broadcast_to(colour, (2, 14, 18, 3)), BAYER_TILES[pattern])
    out, _ = run_raw(dn * 1023.0, adc_attrs(pattern, black=0.0), demosaic=method)
    np.testing.assert_allclose(out, np.broadcast_to(colour, out.shape), atol=1e-6)


def test_flat_colour_field_rgbw_bilinear():
    colour = np.array([0.6, 0.3, 0.1])
    dn = mosaic_of(np.broadcast_to(colour, (1, 10, 12, 3)), RGBW_TILE)
    out, _ = run_raw(dn * 1023.0, adc_attrs("RGBW", black=0.0))
    np.testing.assert_allclose(out[0], np.broadcast_to(colour, (10, 12, 3)), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    tile_letters=st.permutations(["R", "G", "B", "G"]) | st.permutations(["R", "G", "B", "W"]),
    colour=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
)
def test_bilinear_flat_field_property(tile_letters, colour, h, w):
    tile = (tuple(tile_letters[:2]), tuple(tile_letters[2:]))
    planes = np.broadcast_to(np.array(colour), (h, w, 3))
    out = demosaic_bilinear(mosaic_of(planes, tile), tile)
    np.testing.assert_allclose(out, planes, atol=1e-12)


@pytest.mark.parametrize("tile", [*BAYER_TILES.values(), RGBW_TILE], ids=[*PHASES, "RGBW"])
def test_bilinear_linear_ramp_exact_in_interior(tile):
    y, x = np.mgrid[0:16, 0:20].astype(np.float64)
    planes = np.stack([0.01 * x + 0.02 * y + 0.1, 0.03 * x - 0.01 * y + 0.5, -0.02 * x + 0.3], -1)
    out = demosaic_bilinear(mosaic_of(planes, tile), tile)
    # Interior: one pixel from the border, where every interpolated value has neighbours
    # on both sides. At the border the mirrored neighbour replaces the missing one.
    np.testing.assert_allclose(out[1:-1, 1:-1], planes[1:-1, 1:-1], atol=1e-12)


@pytest.mark.parametrize("pattern", PHASES)
def test_bilinear_matches_colour_demosaicing(pattern):
    mosaic = np.random.default_rng(11).random((3, 16, 22))
    ours = demosaic_bilinear(mosaic, BAYER_TILES[pattern])
    for i in range(3):
        # colour-demosaicing uses scipy's "reflect" border: compare the interior directly,
        # and the whole image after mirror-padding its input by 2 (which keeps the phase).
        ref = demosaicing_CFA_Bayer_bilinear(mosaic[i], pattern)
        np.testing.assert_allclose(ours[i, 1:-1, 1:-1], ref[1:-1, 1:-1], atol=1e-12)
        ref_full = demosaicing_CFA_Bayer_bilinear(np.pad(mosaic[i], 2, mode="reflect"), pattern)
        np.testing.assert_allclose(ours[i], ref_full[2:-2, 2:-2], atol=1e-12)


@pytest.mark.parametrize("pattern", PHASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_malvar_matches_colour_demosaicing(pattern, dtype):
    mosaic = np.random.default_rng(12).random((2, 18, 24)).astype(dtype)
    ours = demosaic_malvar2004(mosaic, pattern)
    atol = 1e-12 if dtype == np.float64 else 2e-6
    for i in range(2):
        ref = demosaicing_CFA_Bayer_Malvar2004(mosaic[i].astype(np.float64), pattern)
        np.testing.assert_allclose(ours[i, 2:-2, 2:-2], ref[2:-2, 2:-2], atol=atol)
        padded = np.pad(mosaic[i].astype(np.float64), 2, mode="reflect")
        ref_full = demosaicing_CFA_Bayer_Malvar2004(padded, pattern)[2:-2, 2:-2]
        np.testing.assert_allclose(ours[i], ref_full, atol=atol)


@pytest.mark.parametrize("method", ["ea", "vng"])
@pytest.mark.parametrize("pattern", PHASES)
def test_opencv_bayer_phase_naming(method, pattern):
    # A colour distinct per channel, on a mosaic of each phase: if a phase were named
    # wrongly, R and B (or G) would swap. A soft horizontal ramp makes the image non-flat.
    _, x = np.mgrid[0:12, 0:16]
    planes = np.stack([0.8 + 0 * x, 0.45 + 0.002 * x, 0.1 + 0 * x], -1) * 255 // 1 / 255
    out = demosaic_opencv(mosaic_of(planes, BAYER_TILES[pattern]), pattern, method=method)
    np.testing.assert_allclose(out[3:-3, 3:-3].mean(axis=(0, 1)), [0.8, 0.46, 0.1], atol=0.02)
    np.testing.assert_allclose(out[6, 8], planes[6, 8], atol=2 / 255)


def test_opencv_vng_quantises_to_8_bits_and_ea_to_16():
    mosaic = np.full((6, 6), 0.3001)
    assert demosaic_opencv(mosaic, "RGGB", method="vng")[3, 3, 0] == pytest.approx(
        round(0.3001 * 255) / 255, abs=1e-7
    )
    assert demosaic_opencv(mosaic, "RGGB", method="ea")[3, 3, 0] == pytest.approx(
        round(0.3001 * 65535) / 65535, abs=1e-7
    )


def test_malvar_on_rgbw_is_an_error():
    stage = RawStage(RawStage.Params(demosaic="malvar"))
    with pytest.raises(StageError) as err:
        stage.setup(SignalInfo(Unit.DN, (8, 8), np.uint16, adc_attrs("RGBW")))
    assert err.value.key == "demosaic"


def test_mosaic_without_cfa_is_an_error():
    with pytest.raises(StageError, match="cfa_tile"):
        RawStage().setup(SignalInfo(Unit.DN, (8, 8), np.uint16, {"bits": 10}))


# -- other layouts and outputs ----------------------------------------------------------


def test_stacked_sensor_planes_are_normalised_and_balanced():
    dn = np.random.default_rng(13).integers(64, 1024, size=(2, 5, 6, 3)).astype(np.uint16)
    attrs = {"cfa": "stacked", "bits": 10, "black_level_dn": 64.0, "white_level_dn": 1023.0}
    out, info = run_raw(dn, attrs, wb_gains=(1.0, 2.0, 0.5))
    np.testing.assert_allclose(out, (dn - 64.0) / 959.0 * [1.0, 2.0, 0.5], rtol=1e-6)
    assert info.shape == (5, 6, 3)
    with pytest.raises(StageError) as err:
        RawStage(RawStage.Params(output="mosaic")).setup(
            SignalInfo(Unit.DN, (5, 6, 3), np.uint16, attrs)
        )
    assert err.value.key == "output"


@pytest.mark.parametrize(("mono_output", "channels"), [("replicate", 3), ("single", 1)])
def test_mono_sensor(mono_output, channels):
    dn = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) + 64
    attrs = {"cfa": "mono", "cfa_tile": (("W",),), "black_level_dn": 64.0, "white_level_dn": 104.0}
    out, info = run_raw(dn, attrs, mono_output=mono_output)
    assert info.shape == (4, 5, channels)
    expected = (dn - 64.0) / 40.0
    for c in range(channels):
        np.testing.assert_allclose(out[..., c], expected, rtol=1e-6)


def test_output_mosaic_passes_the_normalised_mosaic():
    dn = np.random.default_rng(14).integers(0, 1024, size=(2, 6, 8)).astype(np.uint16)
    out, info = run_raw(dn, adc_attrs("GRBG"), output="mosaic", wb_gains=(2.0, 1.0, 1.0))
    assert info.shape == (6, 8, 1)
    gain = np.where(channel_map(BAYER_TILES["GRBG"], 6, 8) == 0, 2.0, 1.0)
    np.testing.assert_allclose(out[..., 0], (dn - 64.0) / 959.0 * gain, rtol=1e-5, atol=1e-7)


def test_clip_and_encode():
    dn = np.array([[[0.0, 543.5], [1023.0, 1500.0]]], dtype=np.float32)
    attrs = {"cfa": "mono", "black_level_dn": 64.0, "white_level_dn": 1023.0}
    lin, _ = run_raw(dn, attrs, mono_output="single")
    assert lin.min() < 0 and lin.max() > 1  # not clipped by default
    clipped, _ = run_raw(dn, attrs, mono_output="single", clip=True)
    np.testing.assert_allclose(clipped[0, :, :, 0], [[0.0, 0.5], [1.0, 1.0]], rtol=1e-6)
    srgb, _ = run_raw(dn, attrs, mono_output="single", clip=True, encode="srgb")
    expected = np.where(
        clipped <= 0.0031308, clipped * 12.92, 1.055 * np.abs(clipped) ** (1 / 2.4) - 0.055
    )
    np.testing.assert_allclose(srgb, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(srgb, linear_to_srgb(clipped), rtol=1e-6)
    gamma, _ = run_raw(dn, attrs, mono_output="single", clip=True, encode="gamma", gamma=2.0)
    np.testing.assert_allclose(gamma, np.sqrt(clipped), rtol=1e-6)


def test_integer_dn_input_and_batch_independence():
    rng = np.random.default_rng(15)
    dn = rng.integers(64, 1024, size=(4, 10, 12)).astype(np.uint16)
    for method in METHODS:
        whole, _ = run_raw(dn, adc_attrs("BGGR"), demosaic=method)
        parts = [run_raw(dn[i : i + 1], adc_attrs("BGGR"), demosaic=method)[0] for i in range(4)]
        np.testing.assert_array_equal(whole, np.concatenate(parts))


# -- the contract with the photodetector and ADC stages -----------------------------------


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG", "RGBW", "mono", "stacked"])
def test_raw_takes_what_photodetector_and_adc_give(cfa):
    # A noiseless flat field through photodetector → 16-bit ADC → raw comes back as
    # QE · photons / full well per channel (floor quantisation: at most 1 LSB low).
    from sensors.adc import ADCStage
    from sensors.photodetector import PhotodetectorStage

    photons = np.array([3000.0, 5000.0, 2000.0], dtype=np.float32)
    noiseless = dict(
        read_noise_e=0.0, dark_current_e_per_s=0.0, prnu_pct=0.0, dsnu_e=0.0, shot_noise=False
    )
    stages = [
        PhotodetectorStage(PhotodetectorStage.Params(cfa=cfa, qe=0.5, **noiseless)),
        ADCStage(ADCStage.Params(bits=16)),
        RawStage(RawStage.Params(mono_output="single")),
    ]
    info = SignalInfo(Unit.PHOTONS, (12, 16, 3), np.float32)
    for stage in stages:
        info = stage.setup(info)
    x = np.broadcast_to(photons, (2, 12, 16, 3)).copy()
    for stage in stages:
        x = stage.process(x, Batch(np.arange(2)))
    assert x.shape == (2, *info.shape) and x.dtype == info.dtype
    full_well = 10_000.0
    if cfa == "mono":  # a panchromatic pixel (QE 0.6 default) sees all three channels
        expected = np.array([0.6 * photons.sum() / full_well])
    else:
        expected = 0.5 * photons / full_well
    lsb = 1.0 / (info.attrs["white_level_dn"] - info.attrs["black_level_dn"])
    np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), atol=1.5 * lsb)


def test_auto_gain_scales_each_image_mean_to_the_target_and_respects_the_cap():
    from sensors.raw import auto_gain

    rng = np.random.default_rng(0)
    y = rng.uniform(0, 1, (3, 8, 8)).astype(np.float32)
    y[1] *= 0.01  # a dim image
    y[2] *= 1e-6  # nearly black: the cap applies
    g = auto_gain(y, 0.18, 256.0)
    assert g.shape == (3, 1, 1) and g.dtype == np.float32
    means = (y * g).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(means[:2], 0.18, rtol=1e-6)
    assert g[2, 0, 0] == np.float32(256.0)
    # through the stage: the same quantised codes, scaled — quantisation stays visible
    stage = RawStage(RawStage.Params(auto_gain=True), index=0)
    info = SignalInfo(
        Unit.DN,
        (4, 4),
        np.uint16,
        {"bits": 10, "black_level_dn": 64, "white_level_dn": 1023, "cfa": "mono"},
    )
    stage.setup(info)
    dn = np.full((1, 4, 4), 64, np.uint16)
    dn[0, :2] = 66  # two codes above black
    out = stage.process(dn, Batch(np.arange(1)))
    assert out.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(out.mean(), 0.18, rtol=1e-6)
    assert len(np.unique(out)) == 2  # still two levels


@pytest.mark.parametrize("curve", ["log", "sqrt"])
def test_companded_codes_are_linearised_to_within_a_code(curve):
    """A log or sqrt ADC's codes are not proportional to light: the raw stage undoes the
    curve (sensors.adc.dequantize), so the CNN sees linear light whatever the ADC."""
    from sensors.adc import ADCStage

    adc = ADCStage(ADCStage.Params(bits=8, curve=curve))
    info = adc.setup(
        SignalInfo(Unit.ELECTRONS, (16, 16), np.float32, {"cfa": "mono", "full_well_e": 10000.0})
    )
    raw = RawStage(RawStage.Params())
    assert raw.setup(info).attrs["linearized"] is True
    electrons = np.linspace(0, 10000, 256, dtype=np.float32).reshape(1, 16, 16)
    codes = adc.process(electrons, Batch(np.arange(1)))
    out = raw.process(codes, Batch(np.arange(1)))[0, ..., 0]
    truth = electrons[0] / 10000
    # the error is at most the width of the code each value fell in, in normalised units
    step = np.diff(np.unique(out)).max()
    assert np.abs(out - truth).max() <= step
    # off: the codes are normalised as if linear — far from the light for a log curve
    raw_off = RawStage(RawStage.Params(linearize="off"))
    raw_off.setup(info)
    off = raw_off.process(codes, Batch(np.arange(1)))[0, ..., 0]
    assert np.abs(off - truth).max() > 0.1


# -- black level: the ADC's pedestal and the raw stage agree ------------------------------
def _sensor_chain(bits: int, curve: str, rounding: str, shape=(128, 128)):
    """Default photodetector (mono) → ADC → raw, set up; the table curve is the linear
    curve's (thresholds (k - 1/2) / 2**bits), as a table."""
    from sensors.adc import ADCStage, default_black_level
    from sensors.photodetector import PhotodetectorStage

    pd = PhotodetectorStage(PhotodetectorStage.Params(cfa="mono"), seed=1, index=2)
    extra = {}
    if curve == "table":
        n = (1 << bits) - default_black_level(bits) - 1
        extra["thresholds"] = ((np.arange(1, n + 1) - 0.5) / (1 << bits)).tolist()
    adc = ADCStage(ADCStage.Params(bits=bits, curve=curve, rounding=rounding, **extra), index=3)
    raw = RawStage(RawStage.Params(), index=4)
    info = pd.setup(SignalInfo(Unit.PHOTONS, (*shape, 3), np.float32))
    info = raw.setup(adc.setup(info))
    return pd, adc, raw, info


def _through(chain, photons: np.ndarray) -> np.ndarray:
    pd, adc, raw, _ = chain
    batch = Batch(np.arange(len(photons)))
    return raw.process(adc.process(pd.process(photons, batch), batch), batch)[..., 0]


@pytest.mark.parametrize("bits", [4, 8, 12])
@pytest.mark.parametrize(
    ("curve", "rounding"),
    [(c, r) for c in ("linear", "log", "sqrt") for r in ("floor", "nearest")]
    + [("table", "floor")],
)
def test_a_dark_frame_reads_zero_after_the_raw_stage(bits, curve, rounding):
    # Default photodetector (read noise 2 e-, dark current 5 e-/s for 10 ms, DSNU 0.5 e-),
    # no light. The raw output is signal / full well; in LSB of the ADC (full well /
    # (2**bits - 1 - black) electrons per LSB at the default gain) it must be 0 ± 0.1.
    chain = _sensor_chain(bits, curve, rounding)
    adc_info = chain[1].setup(chain[0].setup(SignalInfo(Unit.PHOTONS, (128, 128, 3), np.float32)))
    black = adc_info.attrs["black_level_dn"]
    lsb_per_full_well = (1 << bits) - 1 - black
    out = _through(chain, np.zeros((4, 128, 128, 3), np.float32))
    assert out.mean(dtype=np.float64) * lsb_per_full_well == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("bits", [8, 12])
def test_signal_minus_dark_is_unbiased_after_the_raw_stage(bits):
    # (at 8 and 12 bits the shot noise, 55 e-, dithers the codes: 1 LSB = 42 or 2.6 e-; at
    # 4 bits, 714 e-/LSB, it does not, and every pixel gets the nearest code)
    # 3000 e- (30 % of the full well; a mono pixel collects QE_W (R + G + B) electrons):
    # light - dark reads 0.3 of the full well within its statistical error
    chain = _sensor_chain(bits, "linear", "floor")
    photons = np.full((4, 128, 128, 3), 1000.0 / chain[0].params.qe_w, np.float32)
    light = _through(chain, photons).mean(dtype=np.float64)
    dark = _through(chain, np.zeros_like(photons)).mean(dtype=np.float64)
    # shot noise sd sqrt(3000) e- over 65536 pixels, plus the codes' uniform error
    lsb = 10_000.0 / ((1 << bits) - 1 - (1 << bits) // 16)
    sd_e = np.sqrt(3000 + 4 + lsb**2 / 12) / np.sqrt(photons[..., 0].size)
    assert (light - dark) * 10_000.0 == pytest.approx(3000.0, abs=5 * sd_e)
